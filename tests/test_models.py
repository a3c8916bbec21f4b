"""TransGAN models: parameter-count pins, shapes, initialisation, and backend parity.

Parity: the same weights on backend "ref" (float64, the ground truth) and on "auto" (float32,
whatever fused kernels exist here) give outputs and gradients within docs/ops.md §4; the error of the
float32 reference run calibrates deep-model round-off (flash-attention's rule).
"""
from __future__ import annotations

import copy

import pytest
import torch

from transgan_fast.models import PRESETS, build, config
from transgan_fast.nn import set_backend
from transgan_fast.ops import LocalitySchedule

# Exact counts. cifar10, stl10, church256 and celebahq256 equal the released models' (VITA-Group/
# TransGAN 6b85440, built from the arguments of exps/*_train.py): the D's last block has a learned
# noise scale (cifar10/stl10: ViT_custom_scale2_rp_noise), the 256^2 Ds have no attention noise
# (ViT_scale3_local_new_rp, Celeba256_dis) and each of celebahq256's 20 cross-attentions holds an
# unused noise scale (Celeba256_gen). celeba64/celeba128 have no released model file.
PARAMS = {
    "cifar10": (83_312_495, 10_210_400),
    "stl10": (168_466_623, 10_341_536),
    "celeba64": (133_117_863, 12_532_225),
    "celeba128": (151_512_476, 17_709_641),
    "church256": (205_291_952, 17_754_569),
    "celebahq256": (212_903_275, 13_334_593),
}
SPEC_M = {"cifar10": (83.3, 10.2), "stl10": (168.5, 10.3), "church256": (205.3, 17.8),
          "celebahq256": (212.9, 13.3)}
SIZES = {"cifar10": 32, "stl10": 48, "celeba64": 64, "celeba128": 128, "church256": 256,
         "celebahq256": 256}

# Small versions of every preset that keep its structure (stage kinds, upsampling, noise, norm,
# self-modulation, updown, locality, discriminator scales) and run in well under a second.
TINY = {
    "cifar10": dict(latent_dim=32, bottom=4, g_channels=(256, 64, 16), g_depths=(1, 1, 2),
                    d_scales=((24, 2, 2, 0), (8, 4, 4, 0)), d_stages=(("global",), ("global",))),
    "stl10": dict(latent_dim=32, bottom=3, g_channels=(256, 64, 16), g_depths=(1, 1, 1),
                  d_scales=((24, 2, 2, 0), (8, 4, 4, 0)), d_stages=(("global",), ("global",))),
    "celeba64": dict(latent_dim=32, bottom=2, g_channels=(256, 64, 16, 4), g_depths=(1, 1, 1, 2),
                     d_patch=4, d_dim=32, d_depth=2,
                     locality=LocalitySchedule((3, 5, 7, 9), (5, 10, 15), 20)),
    "celeba128": dict(latent_dim=32, bottom=2, g_channels=(256, 256, 64, 16, 4), g_depths=(1,) * 5,
                      d_scales=((24, 2, 2, 0), (8, 4, 4, 0), (8, 8, 8, 0)),
                      d_stages=(("grid16", "global"), ("global",), ("global",))),
    "church256": dict(latent_dim=32, bottom=1, g_channels=(256, 256, 256, 64, 16, 4),
                      g_depths=(1,) * 6, g_attn=("global",) * 3 + ("grid4",) * 3,
                      d_scales=((24, 4, 4, 0), (8, 8, 8, 0), (8, 16, 16, 0)),
                      d_stages=(("grid4", "global"), ("global",), ("global",))),
    "celebahq256": dict(latent_dim=32, bottom=1, g_channels=(256, 256, 256, 64, 16, 4),
                        g_depths=(0, 1, 1, 1, 1, 1), g_attn=("global",) * 3 + ("grid4",) * 3,
                        mod_tokens=8, mod_dim=32,
                        d_scales=((8, 4, 2, 1), (8, 4, 4, 0), (16, 8, 8, 0)),
                        d_stages=(("grid4",), ("grid4", "global"), ("global",))),
}


def nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_param_counts(preset):
    G, D = build(preset, device="meta")
    assert (nparams(G), nparams(D)) == PARAMS[preset]
    if preset in SPEC_M:
        g_m, d_m = SPEC_M[preset]
        assert abs(nparams(G) / 1e6 - g_m) < 0.1 and abs(nparams(D) / 1e6 - d_m) < 0.1


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_full_size_shapes_on_meta(preset):
    G, D = build(preset, device="meta")
    z = torch.randn(2, G.latent_dim, device="meta")
    x = G(z)
    S = SIZES[preset]
    assert x.shape == (2, 3, S, S) and G.cfg.img_size == S
    assert D(x).shape == (2, 1)


def test_initialisation():
    """The released initialisation: trunc_normal_(std=.02) cut at +-2 absolute (not 2 std); D
    linears trunc-normal with zero bias; conv weights Xavier, conv biases PyTorch's default
    (released weights_init only touches conv weights); G linears PyTorch's default."""
    G, D = build("cifar10", g_noise=True)
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        if "noise_strength" in name:
            assert p.item() == 0.0, name
        elif name.endswith("rel_bias") or "pos" in name or "cls_token" in name:
            assert 0.015 < p.std() < 0.025 and p.abs().max() < 0.2, name
    big = torch.cat([p.detach().flatten() for n, p in G.named_parameters() if n.startswith("pos.")])
    assert 0.035 < (big.abs() > 0.04).float().mean() < 0.056  # 4.55% beyond 2 std: nothing cut
    for name, m in D.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert 0.015 < m.weight.std() < 0.025, name
            assert m.bias is None or not m.bias.any(), name
    for conv in [e.conv for e in D.embeds] + [G.to_rgb]:
        fan_in = conv.weight[0].numel()
        bound = (6 / (fan_in + conv.weight.shape[0] * conv.weight[0, 0].numel())) ** 0.5
        assert conv.weight.abs().max() <= bound + 1e-6 and conv.weight.std() > 0.4 * bound
        assert conv.bias.abs().max() <= fan_in ** -0.5 + 1e-6 and conv.bias.std() > 0
    # Generator linears keep PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in)).
    w = G.stages[0][0].mlp.fc1.weight
    assert w.abs().max() <= 1024 ** -0.5 + 1e-6 and w.std() > 0.5 * 1024 ** -0.5 / 3 ** 0.5
    Ghq, _ = build("celebahq256", **TINY["celebahq256"])
    assert not Ghq.mod_pos.any()  # released embed_pos is never initialised


def test_config_overrides_and_errors():
    cfg = config("church256", g_noise=False)
    assert cfg.g_noise is False and PRESETS["church256"].g_noise is True
    with pytest.raises(ValueError, match="unknown field"):
        config("cifar10", not_a_field=1)
    with pytest.raises(ValueError, match="unknown preset"):
        config("mnist")
    G, D = build("cifar10", **TINY["cifar10"])
    with pytest.raises(ValueError, match=r"z must be \(B, 32\)"):
        G(torch.randn(2, 31))
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 16, 16\)"):
        D(torch.randn(2, 3, 32, 32))


def _triple(preset, **extra):
    """(ref float64, ref float32, auto float32) copies of one tiny G/D pair."""
    G, D = build(preset, backend="ref", **{**TINY[preset], **extra})
    with torch.no_grad():  # exercise the attention-noise path with non-zero strengths
        for n, p in list(G.named_parameters()) + list(D.named_parameters()):
            if "noise_strength" in n:
                p.uniform_(0.1, 0.5)
    r64 = (copy.deepcopy(G).double(), copy.deepcopy(D).double())
    a32 = (set_backend(copy.deepcopy(G), "auto"), set_backend(copy.deepcopy(D), "auto"))
    return r64, (G, D), a32


def _assert_parity(a, r32, r64, grad, what):
    scale = max(1.0, r64.abs().max().item())
    err_a = (a.double() - r64).abs().max().item()
    err_r = (r32.double() - r64).abs().max().item()
    tol = max((1e-4 if grad else 1e-5) * scale, 2 * err_r)
    assert err_a == err_a and err_a <= tol, f"{what}: auto error {err_a:.3e} > {tol:.3e} (ref32 {err_r:.3e})"


def _g_run(G, D, z, seed):
    torch.manual_seed(seed)
    x = G(z.to(next(G.parameters()).dtype))
    loss = D(x).sum() + x.square().mean()
    G.zero_grad(), D.zero_grad()
    loss.backward()
    return x.detach(), {n: p.grad.detach() for n, p in G.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_backend_parity_generator(preset):
    r64, r32, a32 = _triple(preset)
    z = torch.randn(2, r32[0].latent_dim)
    outs = [_g_run(G, D, z, seed=7) for G, D in (r64, r32, a32)]
    (x64, g64), (x32, g32), (xa, ga) = outs
    assert xa.shape == (2, 3, r32[0].cfg.img_size, r32[0].cfg.img_size)
    _assert_parity(xa, x32, x64, False, f"{preset} G output")
    # Every parameter gets a gradient except celebahq256's unused cross-attention noise scales.
    used = [n for n, _ in r64[0].named_parameters() if not n.endswith("cross.noise_strength")]
    assert g64.keys() == ga.keys() and sorted(g64) == sorted(used)
    for n in g64:
        _assert_parity(ga[n], g32[n], g64[n], True, f"{preset} grad {n}")


def _gp_run(D, x, seed):
    torch.manual_seed(seed)
    x = x.to(next(D.parameters()).dtype).requires_grad_()
    out = D(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    penalty = (gx.flatten(1).norm(dim=1) - 1).square().mean() + out.mean() ** 2
    D.zero_grad()
    penalty.backward()
    return gx.detach(), {n: p.grad.detach() for n, p in D.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", sorted(TINY))
def test_backend_parity_gradient_penalty(preset):
    """WGAN-GP: second-order gradients through D agree between backends."""
    r64, r32, a32 = _triple(preset)
    S = r32[1].img_size
    x = torch.rand(2, 3, S, S) * 2 - 1
    (gx64, p64), (gx32, p32), (gxa, pa) = (_gp_run(D, x, 3) for _, D in (r64, r32, a32))
    _assert_parity(gxa, gx32, gx64, True, f"{preset} dD/dx")
    assert p64.keys() == pa.keys() and len(p64) > 0
    for n in p64:
        _assert_parity(pa[n], p32[n], p64[n], True, f"{preset} penalty grad {n}")


def test_minibatch_std():
    """d_mbstd: each sample's logit depends on its group's other samples and on nothing else;
    off by default (the papers' parameter counts are unchanged) and multiscale only."""
    assert PRESETS["cifar10"].d_mbstd == 0
    _, D = build("cifar10", **TINY["cifar10"], d_mbstd=2)
    D.eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = D(x)
    # Groups pair samples i and i + B/2: changing sample 1 moves the logits of 1 and 3 only.
    y = x.clone()
    y[1] = -y[1]
    moved = (D(y) - out).abs().flatten() > 1e-6
    assert moved.tolist() == [False, True, False, True]
    # Identical samples have zero spread: the same logit whatever the batch size.
    same = x[:1].expand(4, -1, -1, -1)
    assert torch.allclose(D(same), D(same[:2])[:1].expand(4, 1), atol=1e-6)
    # Second order (R1 / WGAN-GP) reaches the projection.
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(D(xr).sum(), xr, create_graph=True)
    gx.square().sum().backward()
    assert D.mbstd_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of 2"):
        D(x[:3])
    with pytest.raises(ValueError, match="d_mbstd"):
        config("celeba64", d_mbstd=4)
    with pytest.raises(ValueError, match="d_mbstd"):
        config("cifar10", d_mbstd=-1)


def test_cifar10_full_size_forward_backward_parity():
    """The real CIFAR-10 preset, batch 1: G then D, forward and backward, ref vs auto."""
    G, D = build("cifar10", backend="ref")
    r64 = (copy.deepcopy(G).double(), copy.deepcopy(D).double())
    a32 = (set_backend(copy.deepcopy(G), "auto"), set_backend(copy.deepcopy(D), "auto"))
    z = torch.randn(1, 256)
    (x64, g64), (x32, g32), (xa, ga) = (_g_run(g, d, z, 0) for g, d in (r64, (G, D), a32))
    assert xa.shape == (1, 3, 32, 32)
    _assert_parity(xa, x32, x64, False, "cifar10 G output")
    for n in ("stem.weight", "pos.0", "stages.0.0.attn.rel_bias", "stages.2.1.attn.qkv.weight",
              "stages.2.1.attn.rel_bias", "to_rgb.weight"):
        _assert_parity(ga[n], g32[n], g64[n], True, f"cifar10 grad {n}")


def test_augment_runs_inside_discriminator():
    _, D = build("cifar10", **TINY["cifar10"])
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    seen = []
    out = D(x, augment=lambda t: seen.append(t.shape) or t.flip(3) * 0.5)
    assert seen == [(2, 3, 16, 16)]
    torch.testing.assert_close(out, D(x.flip(3) * 0.5))
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.abs().sum() > 0


def test_locality_schedule_on_last_block():
    G, _ = build("celeba64", **TINY["celeba64"])
    blocks = [b for s in G.stages for b in s]
    assert [b.attn.locality is not None for b in blocks] == [False] * (len(blocks) - 1) + [True]
    last = blocks[-1].attn
    table = last.rel_bias
    assert table.shape == ((2 * 16 - 1) ** 2, 4)  # full 16x16 map in every phase
    for progress, width in ((0, 3), (5, 5), (19.5, 9), (20, None)):
        G.set_progress(progress)
        assert last.masked == (width is not None)
        if width is not None:
            assert last.geom.band_width == width
        assert last.rel_bias is table
    z = torch.randn(1, 32)
    G.set_progress(0)
    masked = G(z)
    G.set_progress(100)
    assert not torch.allclose(masked, G(z))


def test_locality_all_blocks_and_errors():
    G, _ = build("cifar10", **TINY["cifar10"], locality=LocalitySchedule.cifar(blocks="all"))
    assert all(b.attn.locality is not None for s in G.stages for b in s)
    with pytest.raises(ValueError, match="last block"):
        build("church256", device="meta", locality=LocalitySchedule.cifar())


def test_super_resolution_head():
    G, _ = build("celeba64", **TINY["celeba64"], sr_head=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec = G.reconstruct(x)
    assert rec.shape == x.shape
    loss = 50 * torch.nn.functional.mse_loss(rec, x)
    loss.backward()
    assert G.sr_embed.weight.grad.abs().sum() > 0 and G.stages[-1][-1].attn.qkv.weight.grad is not None
    G2, _ = build("cifar10", **TINY["cifar10"])
    with pytest.raises(RuntimeError, match="sr_head=True"):
        G2.reconstruct(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("backend", ["ref", "auto"])
def test_torch_compile_fullgraph(backend):
    import torch._dynamo
    torch._dynamo.reset()
    G, _ = build("cifar10", backend=backend, latent_dim=16, bottom=2,
                 g_channels=(64, 16, 4), g_depths=(1, 1, 1), g_noise=True)
    z = torch.randn(2, 16)
    compiled = torch.compile(G, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    out = compiled(z)
    torch.manual_seed(1)
    ref = G(z)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert G.stem.weight.grad is not None
