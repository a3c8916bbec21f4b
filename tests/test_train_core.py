"""Trainer core: DiffAugment ops, loss math, EMA rule, config resolution, the step itself."""
import math

import pytest
import torch

from _toy_models import ToyD, ToyG
from transgan_fast.train import augment as A
from transgan_fast.train import (DiffAugment, EMA, Trainer, discriminator_loss, ema_beta,
                                 generator_loss, gradient_penalty, resolve_config)
from transgan_fast.train.data import ShapesSource

ALL_OPS = [f for fs in A.AUGMENTS.values() for f in fs]
GEOMETRIC = [A.translation, A.cutout, A.erase_ratio, A.stl_erase_ratio]


@pytest.mark.parametrize("fn", ALL_OPS, ids=lambda f: f.__name__)
def test_augment_ops_differentiable_and_shape_keeping(fn):
    x = (torch.rand(5, 3, 12, 10) * 2 - 1).double().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    y = fn(x, g)
    assert y.shape == x.shape and y.dtype == x.dtype
    # gradcheck with a fixed draw: reseed the generator before every evaluation
    def f(t):
        return fn(t, torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("fn", GEOMETRIC, ids=lambda f: f.__name__)
def test_geometric_ops_keep_value_range(fn):
    x = torch.rand(16, 3, 16, 16) * 1.6 - 0.8
    for seed in range(5):
        y = fn(x, torch.Generator().manual_seed(seed))
        vals = set(y.unique().tolist()) - {0.0}
        assert vals <= set(x.unique().tolist()), "geometric ops only move or zero pixels"
        assert y.min() >= min(x.min(), 0) and y.max() <= max(x.max(), 0)


def test_translation_shifts_by_at_most_20_percent():
    x = torch.zeros(64, 1, 20, 20)
    x[:, :, 10, 10] = 1.0
    y = A.translation(x, torch.Generator().manual_seed(0))
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 20 - 10, pos % 20 - 10
    assert dy.abs().max() <= 4 and dx.abs().max() <= 4 and (dy != 0).any() and (dx != 0).any()


def _hit(fn, x, seed0=0):
    """The first draw (from seed0 on) in which `fn` erased something: (seed, erased mask (B, H, W))."""
    for s in range(seed0, seed0 + 200):
        y = fn(x, torch.Generator().manual_seed(s))
        if (y == 0).any():
            return s, y[:, 0] == 0
    raise AssertionError(f"{fn.__name__} erased nothing in 200 draws")


def _extent(mask):
    """Per sample: first and one-past-last erased row and column (B,) each; and the mask is a box."""
    rows, cols = mask.any(2), mask.any(1)                                   # (B, H), (B, W)
    r0, r1 = rows.float().argmax(1), rows.shape[1] - rows.flip(1).float().argmax(1)
    c0, c1 = cols.float().argmax(1), cols.shape[1] - cols.flip(1).float().argmax(1)
    assert torch.equal(mask.sum((1, 2)), (r1 - r0) * (c1 - c0))  # a filled rectangle
    return r0, r1, c0, c1


def test_cutout_probability():
    x = torch.ones(4, 3, 16, 16)
    hits = sum(bool((A.cutout(x, torch.Generator().manual_seed(s)) == 0).any()) for s in range(200))
    assert 40 <= hits <= 80  # p = 0.3 per batch


def test_cutout_centre_uniform_over_image_and_clipped():
    """The released rand_cutout: an 8x8 square at 16x16 whose centre is uniform over 0..16 in each
    axis (17 values: the side is even) and which is clipped at the border."""
    B, S, h = 8192, 16, 8
    _, mask = _hit(A.cutout, torch.ones(B, 3, S, S))
    r0, r1, c0, c1 = _extent(mask)
    cy = torch.where(r0 > 0, r0 + h // 2, r1 - h // 2)                      # recover the centre
    cx = torch.where(c0 > 0, c0 + h // 2, c1 - h // 2)
    assert torch.equal(r1 - r0, (cy + h // 2).clamp(max=S) - (cy - h // 2).clamp(min=0))
    counts = torch.bincount(cy, minlength=17).float()
    assert counts.shape == (17,) and (counts - B / 17).abs().max() < 5 * (B / 17) ** 0.5
    assert torch.bincount(cx, minlength=17).min() > 0
    # Corners are erased when both centres are within 4 of them: (5/17)^2 = 0.087 of samples
    # (a square kept fully inside would give (1/9)^2 = 0.012).
    corner = mask[:, 0, 0].float().mean().item()
    assert abs(corner - (5 / 17) ** 2) < 0.02
    assert (mask.sum((1, 2)) == 16).any() and (mask.sum((1, 2)) <= 64).all()


@pytest.mark.parametrize("fn,S,lo,hi", [(A.erase_ratio, 40, 8, 28), (A.stl_erase_ratio, 48, 20, 44)],
                         ids=["erase_ratio", "stl_erase_ratio"])
def test_erase_ratio_sizes_once_per_batch(fn, S, lo, hi):
    """Released rand_erase_ratio / rand_stl_erase_ratio: one size per batch in [lo, hi] pixels,
    each sample's centre anywhere, clipped at the border."""
    sizes = set()
    seed = 0
    for _ in range(12):
        seed, mask = _hit(fn, torch.ones(256, 1, S, S), seed)
        seed += 1
        r0, r1, c0, c1 = _extent(mask)
        inner_r = (r0 > 0) & (r1 < S)
        inner_c = (c0 > 0) & (c1 < S)
        hs, ws = (r1 - r0)[inner_r].unique(), (c1 - c0)[inner_c].unique()
        assert hs.numel() == 1 and ws.numel() == 1  # one size for the whole batch
        assert lo <= hs.item() <= hi and lo <= ws.item() <= hi
        assert ((r1 - r0) <= hs).all() and (~inner_r).any()  # clipped ones are smaller
        sizes.add(hs.item())
    assert len(sizes) > 3


def test_color_ops_bounded_and_hue_keeps_luma_and_norm():
    x = torch.rand(32, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    assert (A.brightness(x, g) - x).abs().max() <= 0.5 + 1e-6
    y = A.hue(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y.sum(1), x.sum(1), atol=1e-5, rtol=0)  # rotation about (1,1,1)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-5, rtol=0)
    f = A.filter4(torch.ones(4, 3, 8, 8), torch.Generator().manual_seed(0))
    assert f.min() > 0  # a constant image only has the low band, scaled by a positive gain


def test_diffaugment_policy_and_errors():
    with pytest.raises(ValueError, match="unknown policy"):
        DiffAugment("translation,blur")
    aug = DiffAugment("translation,cutout,color", torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 8, 8)
    assert aug(x).shape == x.shape
    assert not DiffAugment("")


class Linear1(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w, so the penalty has a closed form."""
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, augment=None):
        if augment is not None:
            x = augment(x)
        return (x * self.w).flatten(1).sum(1)


def test_wgangp_eps_matches_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4, dtype=torch.float64) * 0.3
    D = Linear1(w)
    real, fake = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    alpha = torch.rand(6, dtype=torch.float64)
    loss, stats = discriminator_loss("wgangp-eps", D, real, fake, alpha=alpha)
    dr, df = (real * w).flatten(1).sum(1), (fake * w).flatten(1).sum(1)
    expect = -dr.mean() + df.mean() + 10 * (w.norm() - 1) ** 2 + 1e-3 * dr.mean() ** 2
    assert abs(loss.item() - expect.item()) < 1e-10
    assert abs(stats["D/gp"] - ((w.norm() - 1) ** 2).item()) < 1e-10
    # gradient w.r.t. w, including the penalty's double backward
    loss.backward()
    w2 = w.clone().requires_grad_(True)
    e2 = -(real * w2).flatten(1).sum(1).mean() + (fake * w2).flatten(1).sum(1).mean() \
        + 10 * (w2.norm() - 1) ** 2 + 1e-3 * (real * w2).flatten(1).sum(1).mean() ** 2
    e2.backward()
    torch.testing.assert_close(D.w.grad, w2.grad, atol=1e-10, rtol=0)


def test_gradient_penalty_uses_unaugmented_interpolate():
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    D = Linear1(w)
    real, fake = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.zeros(4, 3, 4, 4, dtype=torch.float64)
    gp = gradient_penalty(D, real, fake, torch.rand(4, dtype=torch.float64), augment=lambda x: 2 * x)
    assert abs(gp.item() - (2 * w.norm() - 1).item() ** 2) < 1e-9  # d(2x·w)/dx = 2w
    with pytest.raises(ValueError, match="alpha"):
        gradient_penalty(D, real, fake, torch.rand(3))


def test_r1_penalty_is_half_gamma_squared_input_gradient_of_unaugmented_reals():
    torch.manual_seed(1)
    w = torch.randn(3, 4, 4, dtype=torch.float64) * 0.3
    D = Linear1(w)
    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    double = lambda x: 2 * x  # noqa: E731  d(2x·w)/dx = 2w, so R1 = 4|w|^2 for every image
    base, _ = discriminator_loss("ns", D, real, fake, augment=double)
    loss, stats = discriminator_loss("ns", D, real, fake, augment=double, r1_gamma=0.5)
    assert abs(stats["D/r1"] - 4 * w.norm().item() ** 2) < 1e-9
    assert abs(loss.item() - base.item() - 0.25 * stats["D/r1"]) < 1e-9
    # D's gradient gets the penalty's (through the double backward): d/dw (0.25 * 4|w|^2) = 2w
    loss.backward()
    with_r1, D.w.grad = D.w.grad.clone(), None
    base.backward()
    torch.testing.assert_close(with_r1 - D.w.grad, 2 * w, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="r1_gamma must be >= 0; got -1"):
        discriminator_loss("ns", D, real, fake, r1_gamma=-1.0)
    with pytest.raises(ValueError, match="r1_gamma must be >= 0; got -0.1"):
        resolve_config(r1_gamma=-0.1)


def test_hinge_ns_and_generator_losses():
    D = Linear1(torch.ones(1, 1, 1, dtype=torch.float64))
    real = torch.tensor([2.0, 0.5], dtype=torch.float64).view(2, 1, 1, 1)
    fake = torch.tensor([-2.0, 0.0], dtype=torch.float64).view(2, 1, 1, 1)
    l, _ = discriminator_loss("hinge", D, real, fake)
    assert abs(l.item() - ((0 + 0.5) / 2 + (0 + 1) / 2)) < 1e-12
    l, _ = discriminator_loss("ns", D, real, fake)
    sp = torch.nn.functional.softplus
    e = sp(-real.flatten()).mean() + sp(fake.flatten()).mean()
    assert abs(l.item() - e.item()) < 1e-12
    d = torch.tensor([1.0, -3.0])
    assert generator_loss("wgangp-eps", d).item() == 1.0
    assert abs(generator_loss("ns", d).item() - sp(-d).mean().item()) < 1e-7
    with pytest.raises(ValueError, match="kind"):
        generator_loss("lsgan", d)


def test_ema_beta_rule_and_update():
    # half-life: after ema_nimg images the weight of the old value is 1/2
    b = ema_beta(64, 1e9, ema_kimg=10, rampup=None)
    assert abs(b ** (10_000 / 64) - 0.5) < 1e-9
    assert ema_beta(64, 10_000, ema_kimg=500, rampup=0.1) == 0.5 ** (64 / 1000)  # ramp-up
    assert ema_beta(64, 1, beta=0.995) == 0.995
    with pytest.raises(ValueError, match="beta"):
        ema_beta(1, 1, beta=1.5)
    src = torch.nn.Linear(2, 2)
    ema = EMA(src, beta=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        src.weight.add_(1.0)
    ema.update(src, 1, 1)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * src.weight)
    assert ema.module.weight.device == src.weight.device


def test_run_length_defaults_are_the_released_launchers():
    """--max_iter 500000 G iterations = max_iter x n_critic loader iterations of -dis_bs images."""
    for preset, n_critic, dis_bs in (("cifar10", 4, 64), ("stl10", 5, 32), ("church256", 4, 16),
                                     ("celebahq256", 4, 16)):
        c = resolve_config(preset=preset)
        assert c.kimg == 500_000 * n_critic * dis_bs / 1000 and c.n_critic == n_critic
        assert c.batch == dis_bs * c.accum_d  # one D step = accum_d loader iterations
    assert resolve_config(preset="cifar10", kimg=5.0).kimg == 5.0


def test_config_resolution():
    c = resolve_config(preset="stl10")
    assert (c.resolution, c.batch, c.g_batch, c.n_critic) == (48, 32, 64, 5)
    assert c.diffaug == "translation,stl_erase_ratio,color" and c.ema_rampup == 0.05
    c = resolve_config(preset="church256", batch=8)
    assert c.g_batch == 16 and c.accum_d == 4 and c.ema_beta == 0.995
    with pytest.raises(ValueError, match="accum_d"):
        resolve_config(batch=6, accum_d=4)
    with pytest.raises(ValueError, match="loss"):
        resolve_config(loss="lsgan")


def _trainer(**kw):
    # float32 unless asked: `auto` picks bfloat16 autocast on CPUs with native bfloat16, and these
    # tests compare runs whose batches are split differently at float32 tolerances
    cfg = resolve_config(batch=4, resolution=8, shapes_n=32, **{"precision": "fp32", **kw})
    return Trainer(cfg, ToyG(), ToyD(), ShapesSource(32, 8))


def test_n_critic_and_batches():
    t = _trainer(n_critic=3, g_batch=6)
    calls = []
    orig = t.G.forward
    t.G.forward = lambda z: (calls.append((t.step_idx, z.shape[0])), orig(z))[1]
    for _ in range(7):
        t.step()
    g_steps = sorted({s for s, n in calls if n == 6})
    assert g_steps == [0, 3, 6]
    assert t.images_seen == 28


def test_ema_beta_counts_the_d_batch():
    """Released rule: beta = 0.5^(D batch of one iteration / min(ema_kimg, rampup x images))."""
    for accum in (1, 2):
        t = _trainer(n_critic=3, g_batch=6, accum_d=accum, ema_kimg=0.01, ema_rampup=0.5)
        for _ in range(4):
            s = t.step()
        assert s["G/ema_beta"] == 0.5 ** ((4 // accum) / min(10.0, 0.5 * 12))


def test_accumulation_matches_full_batch():
    """accum_d=2 / accum_g=2 give the same update as one full batch (no drift: it is per-microbatch)."""
    outs = []
    for acc in (1, 2):
        torch.manual_seed(0)
        t = _trainer(accum_d=acc, accum_g=acc, drift=0.0, diffaug="", n_critic=1)
        for _ in range(2):
            t.step()
        outs.append([p.detach().clone() for p in list(t.G.parameters()) + list(t.D.parameters())])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_locality_and_sr_hooks():
    t = _trainer(locality=True, sr_weight=50.0)
    for _ in range(3):
        s = t.step()
    assert t.G.progress == pytest.approx(2 * 4 / 32) and t.ema.module.progress == t.G.progress
    assert "G/sr" not in s  # G steps only every n_critic=4
    s0 = _trainer(sr_weight=50.0).step()
    assert s0["G/sr"] > 0


def test_trainer_step_adds_r1_when_asked():
    torch.manual_seed(0)  # the toy models initialise from the global RNG
    plain = _trainer(loss="ns").step()
    torch.manual_seed(0)
    with_r1 = _trainer(loss="ns", r1_gamma=1.0).step()
    assert "D/r1" not in plain and with_r1["D/r1"] > 0
    # same weights, same batch: the losses differ by exactly the penalty's term
    assert abs(with_r1["D/loss"] - plain["D/loss"] - 0.5 * with_r1["D/r1"]) < 1e-5


def test_lazy_r1_runs_every_kth_step_with_k_times_the_weight():
    torch.manual_seed(0)
    plain = _trainer(loss="ns").step()
    torch.manual_seed(0)
    t = _trainer(loss="ns", r1_gamma=1.0, r1_every=3)
    stats = [t.step() for _ in range(4)]
    assert [("D/r1" in s) for s in stats] == [True, False, False, True]
    # step 0: same weights and batch as `plain`, the penalty weighted 3 x gamma / 2
    assert abs(stats[0]["D/loss"] - plain["D/loss"] - 1.5 * stats[0]["D/r1"]) < 1e-5
    with pytest.raises(ValueError, match="r1_every must be >= 1; got 0"):
        resolve_config(r1_every=0)


def test_lr_decay_is_linear_to_zero_over_the_run_and_survives_resume():
    """The official --lr_decay: lr x (1 - images seen / run length) at every step, both networks."""
    t = _trainer(lr_g=4e-4, lr_d=2e-4, lr_decay=True, kimg=0.016, n_critic=1)  # 4 steps of 4
    seen = []
    for _ in range(3):
        t.step()
        seen.append((t.opt_g.param_groups[0]["lr"], t.opt_d.param_groups[0]["lr"]))
    assert seen == [(pytest.approx(4e-4 * f), pytest.approx(2e-4 * f)) for f in (1, 0.75, 0.5)]
    state = t.state_dict()
    resumed = _trainer(lr_g=4e-4, lr_d=2e-4, lr_decay=True, kimg=0.016, n_critic=1)
    resumed.load_state_dict(state)
    resumed.step()
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.25)
    flat = _trainer(lr_g=4e-4, kimg=0.016)
    for _ in range(3):
        flat.step()
    assert flat.opt_g.param_groups[0]["lr"] == 4e-4
    late = _trainer(lr_g=4e-4, lr_decay=True, lr_decay_start=0.5, kimg=0.016, n_critic=1)
    rates = []
    for _ in range(4):
        late.step()
        rates.append(late.opt_g.param_groups[0]["lr"])
    assert rates == [4e-4, 4e-4, 4e-4, pytest.approx(2e-4)]  # flat to half-way, then to 0
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"lr_decay_start must be in \[0, 1\)"):
            resolve_config(lr_decay_start=bad)
