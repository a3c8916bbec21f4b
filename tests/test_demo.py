"""The demo's plumbing: fixed-work stop and summary fields, the shape classifier's "no clear shape"
class, and the trainer's `--precision` choice (CPU included) with float32 master weights.

No long training here: the demo runs its `--quick` model, the classifier trains for seconds.
"""
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

from transgan_fast.cli import main
from transgan_fast.train import precision as prec
from transgan_fast.train.config import resolve_config
from transgan_fast.train.data import ShapesSource
from transgan_fast.train.demo import DEMO_KIMG, QUICK_KIMG, demo_config
from transgan_fast.train.shape_classifier import (UNCLEAR, _blur, mild_perturbation, shape_accuracy,
                                                  train_classifier, unclear_images)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- precision ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx2", "avx512_bf16"}, True),
                                           ({"amx_tile", "amx_bf16"}, True)])
def test_auto_precision_on_cpu_follows_the_bf16_instructions(monkeypatch, flags, native):
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: flags)
    dtype, why = prec.choose_precision("auto", torch.device("cpu"))
    assert dtype == (torch.bfloat16 if native else None)
    assert why.startswith("auto: bfloat16" if native else "auto: float32")
    assert ("AVX512-BF16" in why or "AMX-BF16" in why) if native else "neither" in why


def test_explicit_precisions_and_bad_value():
    cpu = torch.device("cpu")
    assert prec.choose_precision("fp32", cpu)[0] is None
    assert prec.choose_precision("bf16", cpu)[0] == torch.bfloat16
    assert prec.choose_precision("fp16", cpu)[0] == torch.float16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16; got 'tf32'"):
        prec.choose_precision("tf32", cpu)
    r = CliRunner().invoke(main, ["demo", "--precision", "int8"])
    assert r.exit_code == 2 and "int8" in r.output and "Traceback" not in r.output


def test_this_machine_auto_matches_its_cpuinfo():
    """`auto` here picks bfloat16 exactly when /proc/cpuinfo lists a native bfloat16 instruction."""
    flags = prec._cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with (not Linux)")
    native = bool({"amx_bf16", "avx512_bf16"} & flags)
    assert (prec.pick_precision("auto", torch.device("cpu")) == torch.bfloat16) == native


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_cpu_training_keeps_float32_master_weights(tmp_path, precision):
    from test_train_runs import run
    from transgan_fast.train import checkpoint as ck
    result = run(tmp_path, 2, precision=precision)
    state = ck.load_checkpoint(ck.latest_checkpoint(result.run_dir))
    assert str(torch.bfloat16 if precision == "bf16" else torch.float16) in result.precision
    for net in ("G", "D", "G_ema"):
        for name, t in state[net].items():
            if t.is_floating_point():
                assert t.dtype == torch.float32, f"{net}.{name} is {t.dtype}"
    moments = [v for s in state["opt_d"]["state"].values() for k, v in s.items() if k != "step"]
    assert all(m.dtype == torch.float32 for m in moments)
    if precision == "bf16":
        assert moments  # Adam stepped
    else:  # float16 runs with loss scaling; its first steps may be skipped on overflow
        assert state["scaler_d"]["scale"] > 0
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


# ---- the shape classifier's "no clear shape" class ------------------------------------------------
@pytest.fixture(scope="module")
def small_classifier():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_classifier(ShapesSource(1024, 16, seed=3), steps=800, batch=64, unclear=True)
    finally:
        torch.set_num_threads(n)  # later modules' subprocesses compare bits at the default


def test_classifier_calls_blurred_and_noise_images_unclear(small_classifier):
    clf, acc = small_classifier
    assert clf.head.out_features == 4 and 0 <= acc <= 1
    x = ShapesSource(96, 16, seed=77).get_many(list(range(96))).float() / 127.5 - 1
    blurred = _blur(x, torch.full((96,), 3.0))
    noise = torch.rand(96, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for what, imgs in (("blurred", blurred), ("noise", noise)):
        m = shape_accuracy(imgs, clf)
        assert m["unclear"] >= 0.8 and m["shape_accuracy"] <= 0.1, (what, m)
    real = shape_accuracy(x, clf, threshold=0.5)
    assert real["unclear"] < 0.3 and real["shape_accuracy"] > 0.5, real  # sharp shapes are shapes


def test_classifier_keeps_shapes_a_person_still_sees(small_classifier):
    # light noise (std 0.1, ~5% of the range) and half a pixel of blur leave a shape a shape
    clf, _ = small_classifier
    x = ShapesSource(96, 16, seed=78).get_many(list(range(96))).float() / 127.5 - 1
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    for what, imgs in (("noise 0.1", noisy), ("blur 0.5 px", _blur(x, torch.full((96,), 0.5)))):
        m = shape_accuracy(imgs, clf, threshold=0.5)
        assert m["unclear"] < 0.3 and m["shape_accuracy"] > 0.5, (what, m)


def test_mild_perturbation_is_mild_and_varied():
    x = ShapesSource(64, 16, seed=6).get_many(list(range(64))).float() / 127.5 - 1
    y = mild_perturbation(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    d = (y - x).abs().mean((1, 2, 3))
    assert (d < 1e-6).sum() >= 4 and (d > 1e-3).sum() >= 32  # some untouched, most changed
    assert d.max() < 0.3  # never more than a light perturbation


def test_unclear_images_kinds_and_range():
    x = ShapesSource(40, 16, seed=5).get_many(list(range(40))).float() / 127.5 - 1
    y = ShapesSource(40, 16, seed=5).labels
    u = unclear_images(x, y, torch.Generator().manual_seed(1))
    assert u.shape == x.shape and u.min() >= -1 and u.max() <= 1
    # blurred copies (every 6th from 0) have no sharp edge left: each image's steepest step
    # between neighbouring rows (the shape's outline in the original) shrinks
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    edge = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().amax((1, 2, 3)).mean()  # noqa: E731
    assert edge(u[0::6]) < 0.5 * edge(x[0::6])
    assert tv(u[2::6]) > 2 * tv(x[2::6])  # noise
    # crisp potatoes and ovals (kinds 4 and 5): two flat colours, the image's own, a new outline
    for i in list(range(4, 40, 6)) + list(range(5, 40, 6)):
        colours = u[i].flatten(1).T.unique(dim=0)
        assert len(colours) == 2, (i, colours)
        assert (u[i] != x[i]).any(dim=0).float().mean() > 0.02, i
        assert (u[i, :, 0, 0] - x[i, :, 0, 0]).abs().max() < 0.1, i  # the border colour kept


def test_shape_accuracy_counts_only_confident_shapes():
    class Fixed(torch.nn.Module):  # logits chosen per image through its first pixel
        def forward(self, x):
            table = torch.tensor([[9., 0, 0, 0], [1., 0, 0, 0], [0., 0, 0, 9], [0., 0, 9, 0]])
            return table[x[:, 0, 0, 0].long()]
    imgs = torch.zeros(4, 3, 2, 2)
    imgs[:, 0, 0, 0] = torch.arange(4.)
    m = shape_accuracy(imgs, Fixed())
    assert m["shape_accuracy"] == 0.5 and m["unclear"] == 0.25
    assert m["frac/0"] == 0.25 and m["frac/2"] == 0.25 and m["frac/1"] == 0
    assert "kind_accuracy" not in m
    # asked for circle, circle, square, triangle: only image 0 is a confident shape of its kind
    # (image 1 is an unsure circle, image 2 unclear, image 3 a confident triangle)
    m = shape_accuracy(imgs, Fixed(), labels=torch.tensor([0, 0, 1, 1]))
    assert m["kind_accuracy"] == 0.25
    assert shape_accuracy(imgs, Fixed(), labels=torch.tensor([0, 0, 1, 2]))["kind_accuracy"] == 0.5
    with pytest.raises(ValueError, match="threshold must be in"):
        shape_accuracy(imgs, Fixed(), threshold=1.5)
    with pytest.raises(ValueError, match=r"labels must be \(4,\)"):
        shape_accuracy(imgs, Fixed(), labels=torch.tensor([0, 1]))


# ---- the demo: fixed work, summary ----------------------------------------------------------------
def test_demo_config_is_fixed_work():
    cfg = demo_config()
    assert cfg.kimg == DEMO_KIMG and demo_config(kimg=3.0).kimg == 3.0
    assert cfg.precision == "fp32"  # bfloat16 not measured faster for this model
    # the rates fall linearly to 0 over the second half of the run (a calm end, not a lottery)
    assert cfg.lr_decay and cfg.lr_decay_start == 0.5 and demo_config(kimg=3.0).lr_decay
    help_text = CliRunner().invoke(main, ["demo", "--help"]).output
    assert f"[default: {DEMO_KIMG:g};" in help_text
    assert demo_config(quick=True).kimg == QUICK_KIMG
    with pytest.raises(ValueError, match="kimg must be > 0; got -1"):
        demo_config(kimg=-1.0)


def test_demo_recipe_windows_the_16x16_stage_and_adds_r1():
    """The measured recipe: 4x4 windows at 16x16 (global attention there was most of a step),
    G batch = D batch, non-saturating loss with R1, self-modulated G, overlapping D patches."""
    from transgan_fast.train.runner import build_models
    cfg = demo_config()
    assert (cfg.loss, cfg.batch, cfg.g_batch, cfg.n_critic) == ("ns", 32, 32, 1)
    assert cfg.r1_gamma == 1.0
    # class-conditional (class = shape kind) on the centred shapes, a 16-channel class embedding
    assert cfg.cond == "class" and cfg.data == "shapes-centred"
    G, D = build_models(cfg)
    assert G.num_classes == D.cfg.num_classes == 3 and G.class_embed.weight.shape == (3, 16)
    assert G.cfg.self_modulation and D.cfg.d_scales[0] == (48, 4, 2, 1)
    last = G.stages[-1][0].attn
    assert last.hw == (16, 16) and last.window == (4, 4)
    assert [blk.attn.window for blk in G.stages[1]] == [(8, 8)]  # 8x8 stays global


def test_demo_quick_summary_and_pictures(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSGAN_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs"
    r = CliRunner().invoke(main, ["demo", "--quick", "--kimg", "0.1", "--outdir", str(out),
                                  "--no-progress", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    (run,) = os.listdir(out)
    s = json.loads((out / run / "summary.json").read_text())
    batch = demo_config(quick=True).batch
    assert s["steps"] == math.ceil(100 / batch) and s["kimg"] == round(s["steps"] * batch / 1000, 2)
    for key in ("swd_initial", "swd_final", "shape_accuracy", "kind_accuracy",
                "shape_accuracy_reals"):
        assert isinstance(s[key], float), key
    assert s["kind_accuracy"] <= s["shape_accuracy"]
    for key in ("swd_initial", "swd_final", "shape_accuracy", "kind_accuracy"):
        assert f"  {key} " in r.output, key  # the printed screen uses the summary's names
    assert 0 <= s["shape_accuracy"] <= 1 and s["swd_initial"] > 0
    assert s["precision"].startswith("torch.float32: float32 as asked")
    assert s["classifier"]["train_seconds"] > 0 and os.path.isfile(s["classifier"]["file"])
    for name in ("samples.png", "curves.png"):
        assert os.path.isfile(out / run / name)
    # The second run loads the cached classifier instead of training it again.
    r = CliRunner().invoke(main, ["demo", "--quick", "--kimg", "0.02", "--outdir", str(out),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    s2 = json.loads((out / sorted(os.listdir(out))[-1] / "summary.json").read_text())
    assert s2["classifier"]["train_seconds"] == 0 and s2["steps"] == math.ceil(20 / batch)
