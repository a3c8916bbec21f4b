"""GAN-Control on TransGAN: the contrastive loss on hand-computed pairs, the latent split and the
pairing, the attribute networks, the plumbing through G for every preset, checkpoint/resume with
the attribute networks, a short run whose control beats chance, fit-control and generate --set."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from _toy_models import ToyD, ToyG
from test_models import TINY
from transgan_fast.cli import main
from transgan_fast.models import PRESETS, build
from transgan_fast.train import Trainer, resolve_config
from transgan_fast.train import checkpoint as ck
from transgan_fast.train.control import (AttributeNet, ControlLayout, contrastive_loss,
                                         pair_latents, parse_control, train_attribute_net)
from transgan_fast.train.control_demo import measure_class, measure_control, measure_disentanglement
from transgan_fast.train.control_fit import (fit_control, load_encoders, parse_set,
                                             save_encoders, set_latents)
from transgan_fast.train.data import SHAPE_ATTRIBUTES, ShapesSource

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_contrastive_loss_hand_computed():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [0.1, 0.0], [1.0, 1.2]])
    same = torch.tensor([True, False, True])
    # pair 0 shared: max(0, 5 - 1) = 4; pair 1 apart: max(0, 0.5 - 0.1) = 0.4; pair 2: d=0.2 < 1
    loss = contrastive_loss(a, b, same, pos_margin=1.0, neg_margin=0.5)
    assert loss.item() == pytest.approx((4.0 + 0.4 + 0.0) / 3, abs=1e-5)
    # far apart and not shared: no loss; identical and not shared: the whole margin
    assert contrastive_loss(a[:1], b[:1], torch.tensor([False]), 0.0, 2.0).item() == 0.0
    assert contrastive_loss(a[:1], a[:1], torch.tensor([False]), 0.0, 2.0).item() == \
        pytest.approx(2.0, abs=1e-5)


def test_contrastive_loss_gradient_direction():
    a = torch.tensor([[0.0]])
    b = torch.tensor([[0.3]], requires_grad=True)
    contrastive_loss(a, b, torch.tensor([True]), 0.0, 1.0).backward()
    assert b.grad.item() > 0  # shared: descending moves b towards a
    b.grad = None
    contrastive_loss(a, b, torch.tensor([False]), 0.0, 1.0).backward()
    assert b.grad.item() < 0  # not shared: descending moves b away


def test_layout_split():
    lay = ControlLayout(["colour", "size"], 3, 10)
    z = torch.arange(20.0).view(2, 10)
    parts = lay.split(z)
    assert parts["colour"].tolist() == [[0, 1, 2], [10, 11, 12]]
    assert parts["size"].tolist() == [[3, 4, 5], [13, 14, 15]]
    assert parts["free"].tolist() == [[6, 7, 8, 9], [16, 17, 18, 19]]
    with pytest.raises(ValueError, match="free latent"):
        ControlLayout(["a", "b"], 5, 10)
    with pytest.raises(ValueError, match="distinct"):
        ControlLayout(["a", "a"], 1, 10)
    with pytest.raises(ValueError, match="unknown attribute 'age'"):
        lay.slice("age")


def test_pair_latents_shares_exactly_the_drawn_subspaces():
    lay = ControlLayout(["a", "b", "c"], 2, 9)
    z = torch.randn(40, 9)
    z2, same = pair_latents(z, lay, torch.Generator().manual_seed(0))
    assert same.shape == (20, 3) and 0 < same.float().mean() < 1
    assert torch.equal(z2[0::2], z[0::2])  # first of each pair untouched
    for j, n in enumerate(lay.names):
        s = lay.slice(n)
        for i in range(20):
            want = z[2 * i, s] if same[i, j] else z[2 * i + 1, s]
            assert torch.equal(z2[2 * i + 1, s], want)
    # the free sub-space is shared with probability 1/2 as well (not reported: it has no loss), so
    # some pairs differ only in controlled sub-spaces and a loss sees what each one alone does
    free = lay.slice("free")
    shared_free = torch.tensor([torch.equal(z2[2 * i + 1, free], z[2 * i, free])
                                for i in range(20)])
    assert all(shared_free[i] or torch.equal(z2[2 * i + 1, free], z[2 * i + 1, free])
               for i in range(20))
    assert 0 < shared_free.float().mean() < 1
    with pytest.raises(ValueError, match="even"):
        pair_latents(z[:3], lay, None)


def test_parse_control():
    assert parse_control("colour, size,age=my.mod:make") == [
        ("colour", None), ("size", None), ("age", "my.mod:make")]
    for bad in ("", "free", "a=nocolon", "1x"):
        with pytest.raises(ValueError):
            parse_control(bad)
    with pytest.raises(ValueError, match="control_neg_margin"):
        resolve_config(control="size", control_pos_margin=0.5, control_neg_margin=0.1)


def test_shapes_attributes_match_the_images():
    src = ShapesSource(256, 16, seed=3)
    assert set(src.attributes) == set(SHAPE_ATTRIBUTES)
    assert torch.equal(src.attributes["kind"], src.labels)
    img = src.images.float() / 255
    corner = img[:, :, :2, :2].mean((1, 2, 3))  # the first rows: background only (mostly)
    bg = src.attributes["background"]
    assert torch.corrcoef(torch.stack([corner, bg]))[0, 1] > 0.8
    for k in ("size", "position", "background"):
        v = src.attributes[k]
        assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1


def test_attribute_net_class_scores_are_linear_corners():
    """A class attribute's embedding is least-squares class scores: near the one-hot corner of the
    image's class, and not a softmax (which saturates: the push-apart loss gets no gradient)."""
    src = ShapesSource(512, 8, seed=0)
    net, acc = train_attribute_net(src, "colour", steps=150)
    assert acc > 0.9
    x = src.get_many(list(range(64))).float() / 127.5 - 1
    with torch.no_grad():
        emb = net(x)
    corner = F.one_hot(src.attributes["colour"][:64], 3).float()
    assert emb.shape == (64, 3) and (emb - corner).abs().mean() < 0.25
    assert not torch.allclose(emb.sum(1), torch.ones(64))  # scores, not probabilities
    # two images of one confident class still get a gradient pushing them apart
    a = x[:1].clone().requires_grad_(True)
    b = x[:1].clone() + 0.01 * torch.randn_like(x[:1])
    contrastive_loss(net(a), net(b), torch.tensor([False]), 0.0, 0.5).backward()
    assert a.grad.abs().sum() > 1e-3


def test_attribute_net_learns_background():
    net, mae = train_attribute_net(ShapesSource(512, 8, seed=0), "background", steps=100)
    assert mae < 0.15  # a constant guess of 0.5 has MAE ~0.25
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 1)
    with pytest.raises(ValueError, match="no attribute 'age'"):
        train_attribute_net(ShapesSource(64, 8), "age")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_contrastive_loss_reaches_g(preset):
    torch.manual_seed(0)
    G, D = build(preset, **TINY[preset])
    lay = ControlLayout(["a"], 4, G.latent_dim)
    z, same = pair_latents(torch.randn(4, G.latent_dim), lay, torch.Generator().manual_seed(1))
    img = G(z)
    net = AttributeNet(["x", "y"], width=4).requires_grad_(False)
    emb = net(img)
    loss = contrastive_loss(emb[0::2], emb[1::2], ~same[:, 0], 0.0, 10.0)  # all pushed apart
    loss.backward()
    assert loss.item() > 0 and D(img.detach()).shape[0] == 4
    grads = [p.grad for p in G.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    z2 = z.clone()
    z2[:, lay.slice("a")] += 1.0  # the sub-space is part of G's input
    assert not torch.allclose(G(z2), img)


def _trainer(steps_kw=None, **kw):
    opts = dict(preset="cifar10", resolution=8, batch=8, g_batch=8, kimg=1.0, n_critic=1,
                metrics="", control="background", control_dim=4, control_net_steps=100,
                control_weight=5.0, lr_g=2e-3, diffaug="")
    opts.update(kw)
    cfg = resolve_config(**opts)
    torch.manual_seed(cfg.seed)
    return Trainer(cfg, ToyG(16, 8), ToyD(8), ShapesSource(512, 8, seed=0))


def test_checkpoint_resume_with_control():
    a = _trainer()
    for _ in range(3):
        a.step()
    state = copy.deepcopy(a.state_dict())  # a's state_dict holds its live tensors
    assert set(state["control"]) == {"background"}
    for _ in range(2):
        a.step()
    b = _trainer(control_net_steps=1)  # other weights: the checkpoint's must replace them
    b.load_state_dict(state)
    for n, p in a.control.nets["background"].state_dict().items():
        assert torch.equal(p, b.control.nets["background"].state_dict()[n])
    for _ in range(2):
        b.step()
    for n, p in a.G.state_dict().items():
        assert torch.equal(p, b.G.state_dict()[n]), n
    assert a.last_stats["C/background"] == b.last_stats["C/background"]
    plain = {k: v for k, v in state.items() if k != "control"}
    with pytest.raises(ValueError, match="no attribute networks"):
        _trainer().load_state_dict(plain)


def test_short_run_control_beats_chance(tmp_path):
    t = _trainer()
    for _ in range(120):  # one shape per image covers much of an 8x8 background: 60 were too few
        t.step()
    G, nets, lay = t.G.eval(), t.control.nets, t.control.layout
    encs = fit_control(G, nets, lay, n=512, steps=200)
    res = measure_control(G, lay, encs, nets, n=256)["background"]
    assert res["metric"] == "mean_abs_error"
    assert res["set"] < 0.8 * res["random"], res  # requested values recovered, unlike chance
    dis = measure_disentanglement(G, lay, nets, n=64)
    assert dis["background"]["background"] > 0.05
    path = str(tmp_path / "control.pt")
    save_encoders(path, lay, encs)
    lay2, encs2 = load_encoders(path)
    z = torch.randn(3, 16)
    v = parse_set("background=0.8", nets, lay)
    assert torch.equal(set_latents(z, lay, encs, v), set_latents(z, lay2, encs2, v))
    with pytest.raises(ValueError, match="controlled attribute"):
        parse_set("size=0.1", nets, lay)


def test_parse_set_classes():
    lay = ControlLayout(["colour", "size"], 2, 8)
    nets = {"colour": AttributeNet(SHAPE_ATTRIBUTES["colour"]), "size": AttributeNet()}
    v = parse_set("colour=yellow,size=0.7", nets, lay)
    assert v["colour"].tolist() == [0, 0, 1] and v["size"].tolist() == pytest.approx([0.7])
    assert parse_set("colour=1", nets, lay)["colour"].tolist() == [0, 1, 0]
    for bad in ("colour=blue", "size=big", "colour"):
        with pytest.raises(ValueError, match="--set"):
            parse_set(bad, nets, lay)


# A tiny 16x16 model for the CLI runs below.
_CLI_MODEL = {"latent_dim": 16, "bottom": 4, "g_channels": [16, 16, 16], "g_depths": [1, 1, 1],
              "g_upsample": ["bicubic", "bicubic"], "d_scales": [[8, 2, 2, 0], [8, 4, 4, 0]],
              "d_stages": [["global"], ["global"]]}


def _cli_train(r, tmp_path, *args, **model):
    """`train` a few steps of the tiny model with 5-step attribute networks, plus `args`."""
    return r.invoke(main, ["train", "--preset", "cifar10", "--resolution", "16", "--batch", "4",
                           "--kimg", "0.008", "--n-critic", "1", "--metrics", "", "--diffaug", "",
                           "--model-json", json.dumps({**_CLI_MODEL, **model}),
                           "--control-dim", "4", "--control-net-steps", "5", "--outdir",
                           str(tmp_path), "--no-progress", *args])


def test_cli_train_fit_control_generate_set(tmp_path):
    r = CliRunner()
    res = _cli_train(r, tmp_path, "--control", "colour,size")
    assert res.exit_code == 0, res.output
    run = os.path.join(tmp_path, sorted(os.listdir(tmp_path))[0])
    assert run.endswith("-ctrl")
    res = r.invoke(main, ["generate", "--checkpoint", run, "--set", "colour=cyan", "--seeds", "0-1",
                          "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 2 and "fit-control" in res.output  # a usage error, one line
    res = r.invoke(main, ["fit-control", "--checkpoint", run, "--n", "16", "--steps", "5"])
    assert res.exit_code == 0, res.output
    assert os.path.isfile(os.path.join(run, "control.pt"))
    res = r.invoke(main, ["generate", "--checkpoint", run, "--set", "colour=cyan,size=0.7",
                          "--seeds", "0-1", "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0 and os.path.isfile(tmp_path / "a.png"), res.output
    res = r.invoke(main, ["generate", "--checkpoint", run, "--set", "age=3", "--seeds", "0",
                          "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 1 and "controlled attribute" in res.output
    ckpt = ck.list_checkpoints(run)[-1]
    assert set(ck.load_checkpoint(ckpt)["control"]) == {"colour", "size"}


def test_every_control_option_in_help():
    r = CliRunner()
    train = r.invoke(main, ["train", "--help"]).output
    for opt in ("--control ", "--control-dim", "--control-weight", "--control-pos-margin",
                "--control-neg-margin", "--control-net-steps", "--control-start"):
        assert opt in train, opt
    gen = r.invoke(main, ["generate", "--help"]).output
    assert "--set" in gen and "--encoders" in gen
    fit = r.invoke(main, ["fit-control", "--help"]).output
    for opt in ("--checkpoint", "--out", "--n ", "--steps", "--seed", "--raw", "--backend"):
        assert opt in fit, opt
    demo = r.invoke(main, ["control-demo", "--help"]).output
    for opt in ("--outdir", "--kimg", "--baseline", "--quick", "--unconditional", "--seed",
                "--progress"):
        assert opt in demo, opt


def test_control_demo_runs_a_fixed_amount_of_work(tmp_path):
    from transgan_fast.train.control_demo import run_control_demo
    res = run_control_demo(str(tmp_path), kimg=0.05, quick=True, seed=1, baseline=False,
                           progress=False)
    assert res["kimg"] >= 0.05 and res["kimg"] < 0.05 + 0.032  # one batch of 16 past the target
    assert set(res["control"]) == {"colour", "background"}
    assert os.path.isfile(res["grid"]) and 0 <= res["class_accuracy"] <= 1
    res = run_control_demo(str(tmp_path / "u"), kimg=0.05, quick=True, seed=1, baseline=False,
                           progress=False, unconditional=True)
    assert set(res["control"]) == {"colour", "background", "size"}
    assert res["class_accuracy"] is None and "-shapes-b16-ctrl" in res["checkpoint"]
    with pytest.raises(ValueError, match="kimg must be > 0; got 0"):
        run_control_demo(str(tmp_path), kimg=0.0, quick=True)
    bad = CliRunner().invoke(main, ["control-demo", "--kimg", "-1"])
    assert bad.exit_code == 2 and "--kimg" in bad.output


def test_control_demo_uses_the_demo_recipe():
    from transgan_fast.train.control_demo import CONTROL_KIMG, control_demo_config
    from transgan_fast.train.demo import DEMO_KIMG, demo_config
    for quick in (False, True):
        ctl, base = control_demo_config(quick), control_demo_config(quick, controlled=False)
        demo = demo_config(quick)
        assert base == demo  # the baseline is the demo itself
        assert ctl.control == "colour,background" and base.control == ""
        assert ctl.control_weight == 1.0 and ctl.control_dim == 8
        same = {k: v for k, v in ctl.to_dict().items() if not k.startswith("control")}
        assert same == {k: v for k, v in demo.to_dict().items() if not k.startswith("control")}
    assert ctl.cond == "class" and CONTROL_KIMG == DEMO_KIMG == control_demo_config().kimg
    assert control_demo_config(kimg=2.0, seed=3).kimg == 2.0
    assert control_demo_config(kimg=2.0, seed=3).seed == 3
    # --unconditional: the same model and recipe without the class, on `shapes`, size controlled
    uc = control_demo_config(unconditional=True)
    ub = control_demo_config(controlled=False, unconditional=True)
    assert uc.cond == ub.cond == "none" and uc.data == ub.data == "shapes"
    assert uc.control == "colour,background,size" and ub.control == ""
    assert "class_dim" not in uc.model and uc.model == ub.model
    demo = demo_config()
    assert {k: v for k, v in demo.model.items() if k != "class_dim"} == uc.model
    for k in ("kimg", "lr_g", "lr_decay", "lr_decay_start", "batch", "g_batch", "loss", "seed"):
        assert getattr(uc, k) == getattr(ub, k) == getattr(demo, k), k


class _CondG(torch.nn.Module):
    """A class-conditional stand-in generator (8x8) that records the labels of every call."""

    def __init__(self, latent_dim: int = 16, k: int = 3):
        super().__init__()
        from types import SimpleNamespace
        self.latent_dim, self.k, self.cfg = latent_dim, k, SimpleNamespace(num_classes=k)
        self.lin = torch.nn.Linear(latent_dim + k, 3 * 8 * 8)
        self.calls = []

    def forward(self, z, y=None):
        assert y is not None and y.shape == (z.shape[0],), "a conditional G needs a label per latent"
        self.calls.append(y.clone())
        h = torch.cat([z, torch.nn.functional.one_hot(y, self.k).float()], 1)
        return self.lin(h).tanh().view(-1, 3, 8, 8)


def test_class_conditional_generator_is_measured_with_fixed_labels(tmp_path):
    """fit_control, measure_control, measure_disentanglement and control_grid give a conditional
    G a label per latent, and compare images of the same labels (only the sub-space moves)."""
    from transgan_fast.train.control_demo import control_grid
    torch.manual_seed(0)
    G, lay = _CondG(), ControlLayout(["background"], 4, 16)
    nets = {"background": AttributeNet().eval()}
    encs = fit_control(G, nets, lay, n=300, steps=2)
    seen = torch.cat(G.calls)
    assert seen.shape == (300,) and set(seen.tolist()) == {0, 1, 2}
    G.calls.clear()
    measure_control(G, lay, encs, nets, n=40, batch=16)
    per_pass = [torch.cat(G.calls[i:i + 3]) for i in (0, 3)]  # --set pass, then the unset pass
    assert len(G.calls) == 6 and torch.equal(*per_pass) and len(set(per_pass[0].tolist())) > 1
    G.calls.clear()
    measure_disentanglement(G, lay, nets, n=40, batch=64)
    assert len(G.calls) == 2 and torch.equal(G.calls[0], G.calls[1])
    G.calls.clear()
    control_grid(G, lay, encs, nets, str(tmp_path / "g.png"), cols=4)
    assert G.calls[0].tolist() == [0, 0, 0, 0] and os.path.isfile(tmp_path / "g.png")


def test_cli_class_conditional_and_controlled(tmp_path):
    """--cond class with --control: train, fit-control, generate --class K --set ..."""
    r = CliRunner()
    res = _cli_train(r, tmp_path, "--data", "shapes-centred", "--cond", "class", "--control",
                     "colour", class_dim=4)
    assert res.exit_code == 0, res.output
    run = os.path.join(tmp_path, sorted(os.listdir(tmp_path))[0])
    res = r.invoke(main, ["fit-control", "--checkpoint", run, "--n", "16", "--steps", "5"])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["generate", "--checkpoint", run, "--set", "colour=yellow", "--class", "2",
                          "--seeds", "0-1", "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0 and os.path.isfile(tmp_path / "a.png"), res.output


def test_control_start_delays_the_contrastive_losses():
    t = _trainer(kimg=0.032, control_start=0.5)  # 4 steps of 8 images; the losses from image 16
    stats = [t.step() for _ in range(4)]
    assert [("C/background" in s) for s in stats] == [False, False, True, True]
    with pytest.raises(ValueError, match=r"control_start must be in \[0, 1\); got 1.0"):
        resolve_config(control="background", control_start=1.0)


class _LabelPainter(torch.nn.Module):
    """A stand-in class-conditional G whose image level is its label (or a fixed class)."""

    def __init__(self, fixed=None):
        super().__init__()
        from types import SimpleNamespace
        self.latent_dim, self.fixed, self.cfg = 4, fixed, SimpleNamespace(num_classes=3)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, y):
        c = y if self.fixed is None else torch.full_like(y, self.fixed)
        return (c.float() - 1).view(-1, 1, 1, 1).expand(-1, 3, 4, 4) + self.w


class _LevelReader(torch.nn.Module):
    classes = ["a", "b", "c"]

    def forward(self, img):
        return F.one_hot(img.mean((1, 2, 3)).round().long() + 1, 3).float()


def test_measure_class_counts_requested_classes():
    nets = {"kind": _LevelReader()}
    assert measure_class(_LabelPainter(), nets, n=60) == 1.0
    frac = measure_class(_LabelPainter(fixed=2), nets, n=300)  # ignores the request
    assert 0.2 < frac < 0.5
    assert measure_class(ToyG(), nets, n=8) is None  # unconditional
