"""Class-conditional TransGAN: plumbing of the labels through G and D for every preset, the
projection term, labels from every data source, the trainer (losses and penalty see the labels,
bit-exact resume), `generate --class`, and unconditional models left exactly as they were."""
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from test_models import PARAMS, TINY
from test_train_runs import tiny_cfg, weights
from transgan_fast.cli import main
from transgan_fast.models import PRESETS, build
from transgan_fast.train import Trainer, resolve_config
from transgan_fast.train import checkpoint as ck
from transgan_fast.train.data import (ImageFileSource, ShapesSource, load_cifar10, load_stl10,
                                      open_source)
from transgan_fast.train.losses import discriminator_loss
from transgan_fast.train.runner import build_models, run_training

K = 3


def nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_conditions_g_and_d(preset):
    torch.manual_seed(0)
    G, D = build(preset, num_classes=K, class_dim=8, **TINY[preset])
    S = G.cfg.img_size
    z = torch.randn(2, G.latent_dim)
    y0, y1 = torch.tensor([0, 1]), torch.tensor([2, 2])
    with torch.no_grad():  # non-zero modulation, so the per-stage path is exercised too
        for m in G.class_mod.values():
            m.weight.normal_(0, 0.1)
    a, b = G(z, y0), G(z, y1)
    assert a.shape == (2, 3, S, S) and not torch.allclose(a, b), "same image for another class"
    d0, d1 = D(a.detach(), y=y0), D(b, y=y1)
    assert d0.shape == (2, 1) and not torch.allclose(d0, D(a.detach(), y=y1))
    # every conditional parameter is used: the loss reaches each of them
    (a.square().mean() + d1.sum()).backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        if "class_" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{preset}: {name} unused"
    assert set(G.class_mod) == {str(i) for i, d in enumerate(G.cfg.g_depths) if d}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_unconditional_presets_unchanged(preset):
    G, D = build(preset, device="meta")
    assert (nparams(G), nparams(D)) == PARAMS[preset]  # the pins of test_models
    Gc, Dc = build(preset, device="meta", num_classes=10)
    for net, cnet, extra in ((G, Gc, {"class_embed.weight"}), (D, Dc, {"class_embed.weight"})):
        keys, ckeys = net.state_dict(), cnet.state_dict()
        assert not any("class_" in k for k in keys)
        new = set(ckeys) - set(keys)
        assert set(keys) <= set(ckeys) and extra <= new
        assert all(k.startswith(("class_embed.", "class_mod.")) for k in new)
        for k, v in keys.items():
            if k != "stem.weight":  # the stem also takes the class embedding
                assert ckeys[k].shape == v.shape, k
    assert Gc.stem.weight.shape[1] == G.latent_dim + Gc.cfg.class_dim


def test_labels_are_checked():
    G, D = build("cifar10", num_classes=K, class_dim=8, **TINY["cifar10"])
    Gu, Du = build("cifar10", **TINY["cifar10"])
    z, x = torch.randn(2, G.latent_dim), torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        D(x, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        Du(x, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes must be 0"):
        build("cifar10", num_classes=1)


def test_projection_term_by_hand():
    _, D = build("cifar10", num_classes=2, class_dim=8, d_scales=((4, 2, 2, 0), (4, 4, 4, 0)),
                 d_stages=(("global",), ("global",)), latent_dim=8, bottom=4,
                 g_channels=(64, 16, 4), g_depths=(1, 1, 1))
    with torch.no_grad():
        D.head.weight.copy_(torch.tensor([[1.0, 2.0] + [0.0] * 6]))
        D.head.bias.fill_(0.5)
        D.class_embed.weight.copy_(torch.tensor([[1.0, 0] + [0.0] * 6, [0, -1.0] + [0.0] * 6]))
    h = torch.tensor([[3.0, 4.0] + [0.0] * 6] * 2)
    # w.h + b = 3 + 8 + 0.5 = 11.5; class 0 adds <(1, 0), (3, 4)> = 3, class 1 adds -4
    assert D._score(h, torch.tensor([0, 1])).flatten().tolist() == [14.5, 7.5]
    # in a whole forward: D(x, y) - D(x, y') = <E[y] - E[y'], h>, h the normed cls feature
    feats = []
    D.norm.register_forward_hook(lambda m, i, o: feats.append(o))
    x = torch.randn(1, 3, 16, 16)
    diff = D(x, y=torch.tensor([0])) - D(x, y=torch.tensor([1]))
    h = feats[0][0]
    assert torch.allclose(diff.flatten(), (h[0] + h[1]).view(1), atol=1e-6)


def test_losses_pass_labels_to_every_d_call():
    calls = []

    def D(x, augment=None, y=None):
        calls.append(y)
        return x.flatten(1).sum(1, keepdim=True) * (1.0 + y.view(-1, 1))

    real, fake = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    y = torch.tensor([0, 1, 2])
    for kind, n in (("wgangp-eps", 3), ("hinge", 2)):
        calls.clear()
        discriminator_loss(kind, D, real, fake, alpha=torch.full((3,), 0.5), labels=y)
        assert len(calls) == n and all(c is y for c in calls)  # real, fake (and the penalty)


def test_data_labels(tmp_path):
    s = ShapesSource(64, 16, seed=0)
    assert s.labels.shape == (64,) and set(s.labels.tolist()) == {0, 1, 2}
    assert s.class_names == ["circle", "square", "triangle"]
    # folders: one subfolder per class, sorted names
    for cls, n in (("zebra", 2), ("ant", 1)):
        os.makedirs(tmp_path / "f" / cls)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 9, 0, 0)).save(tmp_path / "f" / cls / f"{i}.png")
    f = open_source(str(tmp_path / "f"), 8, labeled=True)
    assert f.class_names == ["ant", "zebra"]
    assert [f.class_names[k] for k in f.labels] == [n.split(os.sep)[0] for n in f.names]
    Image.new("RGB", (8, 8)).save(tmp_path / "f" / "loose.png")
    assert ImageFileSource(str(tmp_path / "f"), 8).labels is None
    with pytest.raises(ValueError, match="no class labels"):
        open_source(str(tmp_path / "f"), 8, labeled=True)
    # CIFAR-10 batches and STL-10 train_y.bin (1..10)
    data = np.zeros((4, 3072), dtype=np.uint8)
    os.makedirs(tmp_path / "c")
    with open(tmp_path / "c" / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [3, 1, 4, 1]}, fh)
    assert load_cifar10(str(tmp_path / "c")).labels.tolist() == [3, 1, 4, 1]
    np.zeros((2, 3, 96, 96), dtype=np.uint8).tofile(tmp_path / "train_X.bin")
    np.zeros((5, 3, 96, 96), dtype=np.uint8).tofile(tmp_path / "unlabeled_X.bin")
    np.array([10, 1], dtype=np.uint8).tofile(tmp_path / "train_y.bin")
    stl = load_stl10(str(tmp_path), 48, labeled=True)
    assert len(stl) == 2 and stl.labels.tolist() == [9, 0]
    assert load_stl10(str(tmp_path), 48).labels is None and len(load_stl10(str(tmp_path), 48)) == 7


def test_options_are_checked():
    with pytest.raises(ValueError, match="--cond class"):
        resolve_config(num_classes=4)
    with pytest.raises(ValueError, match="cond must be one of"):
        resolve_config(cond="attr")


def cond_cfg(steps, **kw):
    return tiny_cfg(steps, cond="class", **kw)


def test_resume_is_bit_exact_with_classes(tmp_path):
    straight = run_training(cond_cfg(4), str(tmp_path / "a"), resume=None, progress=False, echo=False)
    run_training(cond_cfg(2), str(tmp_path / "b"), resume=None, progress=False, echo=False)
    resumed = run_training(cond_cfg(4), str(tmp_path / "b"), resume="auto", progress=False,
                           echo=False)
    assert resumed.resumed_from and resumed.steps == straight.steps == 4
    a = weights(ck.latest_checkpoint(straight.run_dir))
    b = weights(ck.latest_checkpoint(resumed.run_dir))
    assert {"G.class_embed.weight", "D.class_embed.weight", "G_ema.class_embed.weight"} <= set(a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume not bit-exact"
    state = ck.load_checkpoint(ck.latest_checkpoint(straight.run_dir))
    assert state["config"]["num_classes"] == 3  # taken from the shapes data
    with pytest.raises(ValueError, match=r"num_classes \(3 -> 4\)"):
        run_training(cond_cfg(6, num_classes=4), str(tmp_path / "c"), resume=resumed.run_dir,
                     progress=False, echo=False)


def test_hinge_step_trains_the_conditional_parts():
    cfg = cond_cfg(1, loss="hinge", num_classes=3)
    t = Trainer(cfg, *build_models(cfg), ShapesSource(32, 8))
    before = {k: v.clone() for k, v in t.D.state_dict().items() if "class_" in k}
    t.step()
    assert all(not torch.equal(t.D.state_dict()[k], v) for k, v in before.items())
    assert t.sample(torch.randn(3, 8)).shape == (3, 3, 8, 8)


def run_cli(*args):
    return CliRunner().invoke(main, list(args), terminal_width=200)


def test_generate_class_options(tmp_path):
    cfg = cond_cfg(1, num_classes=3)
    t = Trainer(cfg, *build_models(cfg), ShapesSource(8, 8))
    cond = ck.save_checkpoint(str(tmp_path / "cond"), t.state_dict(), 0)
    cfg = tiny_cfg(1)
    t = Trainer(cfg, *build_models(cfg), ShapesSource(8, 8))
    plain = ck.save_checkpoint(str(tmp_path / "plain"), t.state_dict(), 0)
    for ckpt, cls, why in ((plain, "0", "unconditional"), (cond, "3", "out of range"),
                           (cond, "-1", "out of range")):
        r = run_cli("generate", "--checkpoint", ckpt, "--class", cls, "--out", str(tmp_path / "x.png"))
        assert r.exit_code != 0 and why in r.output and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1
    grid, one = str(tmp_path / "grid.png"), str(tmp_path / "one.png")
    assert run_cli("generate", "--checkpoint", cond, "--seeds", "0-3", "--out", grid).exit_code == 0
    assert run_cli("generate", "--checkpoint", cond, "--seeds", "0-3", "--class", "2",
                   "--out", one).exit_code == 0
    g, o = np.asarray(Image.open(grid)), np.asarray(Image.open(one))
    assert g.shape[:2] == (3 * 8, 4 * 8) and o.shape[:2] == (8, 4 * 8)  # 8x8 images
    # the grid has one row per class, a seed per column; --class 2 gives its row 2
    assert (g[16:24] == o).all()
    assert not (g[:8] == g[16:24]).all()


class _RealShapesG(torch.nn.Module):
    """A stand-in 'generator' returning a real shapes image of the requested class."""

    def __init__(self, source):
        super().__init__()
        self.cfg = type("Cfg", (), {"num_classes": 3})()
        self.latent_dim, self.src = 4, source
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, y):
        pools = [torch.nonzero(self.src.labels == k).flatten() for k in range(3)]
        idx = [int(pools[k][i % len(pools[k])]) for i, k in enumerate(y.tolist())]
        return self.src.get_many(idx).float() / 127.5 - 1 + self.w


def test_shape_classifier_and_class_accuracy():
    from transgan_fast.train.shape_classifier import class_accuracy, train_classifier
    clf, acc = train_classifier(ShapesSource(1024, 16, seed=1), steps=100, batch=48)
    assert acc > 0.5  # chance is 1/3; ~0.7 at 100 steps, ~0.98 at 300 (2048 images, batch 64)
    real = class_accuracy(_RealShapesG(ShapesSource(256, 16, seed=2)), clf, n_per_class=32)
    assert real["chance"] == pytest.approx(1 / 3) and real["acc"] > 0.5
    assert real["acc"] == pytest.approx(sum(real[f"acc/{k}"] for k in range(3)) / 3)
    with pytest.raises(ValueError, match="class-conditional"):
        class_accuracy(build("cifar10", **TINY["cifar10"])[0], clf)
