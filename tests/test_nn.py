"""TransGAN layers (transgan_fast.nn) against independent dense formulas written here.

Each layer runs in float64 on backend "ref" (must equal the formula) and in float32 on "auto"
(whatever fused kernels exist; docs/ops.md §4 tolerances against the float64 result, with gradients).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_f32
from transgan_fast.nn import (Attention, CrossAttention, Mlp, PixelNorm, TransformerBlock,
                              set_backend)
from transgan_fast.ops import LocalitySchedule


def dense_reference(layer: Attention, x, mask, bias_idx):
    """Attention written out: qkv, per-head logits * d^-0.5 + table[idx], mask, softmax, proj."""
    B, N, C = x.shape
    h = layer.heads
    d = C // h
    q, k, v = layer.qkv(x).split(C, dim=2)
    q, k, v = (t.reshape(B, N, h, d).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-2, -1) * d ** -0.5
    if layer.rel_bias is not None:
        logits = logits + layer.rel_bias[bias_idx].permute(2, 0, 1)
    logits = logits.masked_fill(~mask, float("-inf"))
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
    return layer.proj(o)


def coords(H, W):
    t = torch.arange(H * W)
    return t // W, t % W


def global_case(H, W):
    y, x = coords(H, W)
    idx = (y[:, None] - y[None, :] + H - 1) * (2 * W - 1) + (x[:, None] - x[None, :] + W - 1)
    return torch.ones(H * W, H * W, dtype=torch.bool), idx


def grid_case(H, W, M):
    y, x = coords(H, W)
    same = ((y // M)[:, None] == (y // M)[None, :]) & ((x // M)[:, None] == (x // M)[None, :])
    cy, cx = y % M, x % M
    idx = (cy[:, None] - cy[None, :] + M - 1) * (2 * M - 1) + (cx[:, None] - cx[None, :] + M - 1)
    return same, idx


def band_case(H, W, width):
    t = torch.arange(H * W)
    return (t[:, None] - t[None, :]).abs() <= width, global_case(H, W)[1]


def check_layer(layer, x, mask, idx):
    """float64 ref == formula; float32 auto within docs/ops.md §4 of it (output and all gradients)."""
    l64 = set_backend(copy.deepcopy(layer), "ref").double()
    x64 = x.double().requires_grad_()
    torch.manual_seed(0)
    out64 = l64(x64)
    torch.manual_seed(0)
    ref = dense_reference(l64, x64, mask, idx) if mask is not None else None
    if ref is not None:
        torch.testing.assert_close(out64, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out64)
    out64.backward(g)
    l32 = set_backend(copy.deepcopy(layer), "auto")
    x32 = x.float().requires_grad_()
    torch.manual_seed(0)
    out32 = l32(x32)
    out32.backward(g.float())
    assert_close_f32(out32, out64.detach(), what="output")
    assert_close_f32(x32.grad, x64.grad, grad=True, what="dx")
    for (n, p32), p64 in zip(l32.named_parameters(), l64.parameters()):
        assert_close_f32(p32.grad, p64.grad, grad=True, what=f"d{n}")


@pytest.mark.parametrize("H,W,C", [(8, 8, 32), (5, 7, 12)])
def test_global_attention_with_rel_bias(H, W, C):
    layer = Attention(C, (H, W))
    assert layer.rel_bias.shape == ((2 * H - 1) * (2 * W - 1), 4)
    assert layer.qkv.bias is None and layer.proj.bias is not None
    check_layer(layer, torch.randn(2, H * W, C), *global_case(H, W))


def test_grid_attention_layer():
    layer = Attention(16, (8, 12), window=(4, 4))
    assert layer.rel_bias.shape == (49, 4)
    check_layer(layer, torch.randn(1, 96, 16), *grid_case(8, 12, 4))


def test_locality_masked_layer_shares_one_table():
    sched = LocalitySchedule((2, 5), (3,), 6, mode="band1d")
    layer = Attention(8, (6, 6), locality=sched)
    table = layer.rel_bias
    assert table.shape == (11 * 11, 4) and layer.masked
    check_layer(layer, torch.randn(2, 36, 8), *band_case(6, 6, 2))
    layer.set_progress(4)
    check_layer(layer, torch.randn(2, 36, 8), *band_case(6, 6, 5))
    layer.set_progress(6)
    assert not layer.masked and layer.rel_bias is table
    check_layer(layer, torch.randn(2, 36, 8), *global_case(6, 6))


def test_attention_noise():
    layer = Attention(8, (4, 4), noise=True)
    assert layer.noise_strength.item() == 0.0
    x = torch.randn(2, 16, 8)
    torch.testing.assert_close(layer(x), layer(x))  # s = 0: deterministic
    with torch.no_grad():
        layer.noise_strength.fill_(0.7)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    n = torch.randn(2, 16, 1)
    plain = Attention(8, (4, 4))
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "noise_strength"})
    torch.testing.assert_close(out, plain(x + 0.7 * n))
    out.sum().backward()
    assert layer.noise_strength.grad.abs() > 0
    check_layer(layer, x, None, None)


def test_noise_source_generator_and_off_switch():
    from transgan_fast.nn import noise_source
    layer = Attention(8, (4, 4), noise=True)
    with torch.no_grad():
        layer.noise_strength.fill_(0.7)
    plain = Attention(8, (4, 4))
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "noise_strength"})
    x = torch.randn(2, 16, 8)
    state = torch.get_rng_state()
    with noise_source(torch.Generator().manual_seed(3)):
        out = layer(x)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    n = torch.randn(2, 16, 1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, plain(x + 0.7 * n))
    with noise_source(enabled=False):
        torch.testing.assert_close(layer(x), plain(x))
    out2 = layer(x)  # outside: the global RNG again
    assert not torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(out2, out)


def test_grid_attention_noise_is_drawn_per_window():
    """The released grid stages add noise to the window-partitioned (B * windows, M*M, 1) tensor:
    with the same seed, token (y, x) gets element [b * windows + window index, position in window]."""
    B, H, W, M = 2, 4, 6, 2
    layer = Attention(8, (H, W), window=(M, M), noise=True)
    plain = Attention(8, (H, W), window=(M, M))
    with torch.no_grad():
        layer.noise_strength.fill_(0.7)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "noise_strength"})
    x = torch.randn(B, H * W, 8)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    drawn = torch.randn(B * (H // M) * (W // M), M * M, 1)
    n = torch.empty(B, H * W, 1)
    for b in range(B):
        for y in range(H):
            for xx in range(W):
                win = b * (H // M) * (W // M) + (y // M) * (W // M) + xx // M
                n[b, y * W + xx] = drawn[win, (y % M) * M + xx % M]
    torch.testing.assert_close(out, plain(x + 0.7 * n))


def test_pixel_norm_and_mlp():
    x = torch.randn(3, 10, 16)
    torch.testing.assert_close(PixelNorm()(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8))
    mlp = Mlp(16)
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (16, 64, 16)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x), approximate="none")))


@pytest.mark.parametrize("norm", ["ln", "pn"])
def test_transformer_block_is_prenorm_residual(norm):
    blk = TransformerBlock(16, (4, 4), norm=norm)
    x = torch.randn(2, 16, 16)
    n = (lambda t: F.layer_norm(t, (16,), blk.norm1.weight, blk.norm1.bias)) if norm == "ln" else \
        (lambda t: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-8))
    h = x + blk.attn(n(x))
    n2 = (lambda t: F.layer_norm(t, (16,), blk.norm2.weight, blk.norm2.bias)) if norm == "ln" else n
    torch.testing.assert_close(blk(x), h + blk.mlp(n2(h)))
    check_layer(blk, x, None, None)


def test_cross_attention_block():
    blk = TransformerBlock(16, (4, 4), norm="pn", context_dim=24)
    ca = blk.cross
    assert ca.q.bias is None and ca.k.bias is None and ca.v.bias is None and ca.proj.bias is not None
    x, ctx = torch.randn(2, 16, 16), torch.randn(2, 5, 24)
    q = ca.q(x).view(2, 16, 4, 4).transpose(1, 2)
    k = ca.k(ctx).view(2, 5, 4, 4).transpose(1, 2)
    v = ca.v(ctx).view(2, 5, 4, 4).transpose(1, 2)
    o = ((q @ k.transpose(-2, -1) / 2).softmax(-1) @ v).transpose(1, 2).reshape(2, 16, 16)
    torch.testing.assert_close(ca(x, ctx), ca.proj(o))
    with pytest.raises(ValueError, match="pass context"):
        blk(x)


def test_layer_errors():
    with pytest.raises(ValueError, match="divisible by heads"):
        Attention(10, (4, 4))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 16, 8\)"):
        Attention(8, (4, 4))(torch.randn(1, 15, 8))
    with pytest.raises(ValueError, match="needs a global layer"):
        Attention(8, (4, 4), window=2, locality=LocalitySchedule())
    with pytest.raises(ValueError, match="window"):
        Attention(8, (4, 4), window=8)
