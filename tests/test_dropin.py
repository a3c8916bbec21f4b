"""Drop-in attention modules against independent references written here.

The Swin reference does what Swin does: roll, partition into windows, region mask (three slices
per axis, -100 additive), dense bias gather from a meshgrid-built index, reverse, roll back.
The NATTEN reference loops over queries with NATTEN's window-start rule and rpb indexing.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from conftest import assert_close_f32
from transgan_fast.nn import (DoubleWindowAttention, NeighborhoodAttention2D, WindowAttention,
                              replace_attention, set_backend)


# ----------------------------------------------------------------------------------------------
# Independent Swin pieces.

def swin_index(Wh, Ww):
    c = torch.stack(torch.meshgrid(torch.arange(Wh), torch.arange(Ww), indexing="ij")).flatten(1)
    rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0)           # query minus key
    return (rel[..., 0] + Wh - 1) * (2 * Ww - 1) + rel[..., 1] + Ww - 1


def partition(x, M1, M2):                                           # (B, H, W, C) -> (B*nW, L, C)
    B, H, W, C = x.shape
    x = x.view(B, H // M1, M1, W // M2, M2, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, M1 * M2, C)


def unpartition(w, B, H, W, M1, M2):
    C = w.shape[-1]
    x = w.view(B, H // M1, W // M2, M1, M2, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def swin_mask(H, W, M1, M2, s1, s2):
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -M1), slice(-M1, -s1 if s1 else None), slice(-s1 if s1 else H, None)):
        for ws in (slice(0, -M2), slice(-M2, -s2 if s2 else None), slice(-s2 if s2 else W, None)):
            img[:, hs, ws] = cnt
            cnt += 1
    mw = partition(img, M1, M2).squeeze(-1)                          # (nW, L)
    m = mw[:, None, :] - mw[:, :, None]
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def window_attn_ref(q, k, v, table, index, scale, mask=None):
    """(Bw, h, L, d) windows; dense bias gather; Swin's additive mask."""
    L = q.shape[2]
    logits = (q * scale) @ k.transpose(-2, -1) + table[index.reshape(-1)].view(L, L, -1).permute(2, 0, 1)
    if mask is not None:
        nW = mask.shape[0]
        logits = logits.view(-1, nW, *logits.shape[1:]) + mask[None, :, None].to(logits)
        logits = logits.view(-1, *logits.shape[2:])
    return logits.softmax(-1) @ v


def swin_map_ref(mod, x, hw, shift):
    """Full Swin pipeline around `mod`'s weights: (B, H*W, C) -> (B, H*W, C)."""
    (H, W), (M1, M2), (s1, s2) = hw, mod.window_size, shift
    B, N, C = x.shape
    h = mod.num_heads
    t = torch.roll(x.view(B, H, W, C), (-s1, -s2), (1, 2))
    w = partition(t, M1, M2)
    Bw, L, _ = w.shape
    q, k, v = mod.qkv(w).view(Bw, L, 3, h, C // h).permute(2, 0, 3, 1, 4)
    mask = swin_mask(H, W, M1, M2, s1, s2) if (s1 or s2) else None
    o = window_attn_ref(q, k, v, mod.relative_position_bias_table, swin_index(M1, M2), mod.scale, mask)
    o = mod.proj(o.transpose(1, 2).reshape(Bw, L, C))
    o = torch.roll(unpartition(o, B, H, W, M1, M2), (s1, s2), (1, 2))
    return o.reshape(B, N, C)


def run_pair(mod, fn, x):
    """fn(float64 ref module, x64) and fn(float32 auto module, x32); docs/ops.md §4 on output and grads."""
    m64 = set_backend(copy.deepcopy(mod), "ref").double()
    x64 = x.double().requires_grad_()
    out64 = fn(m64, x64)
    g = torch.randn_like(out64)
    out64.backward(g)
    m32 = set_backend(copy.deepcopy(mod), "auto")
    x32 = x.float().requires_grad_()
    out32 = fn(m32, x32)
    out32.backward(g.float())
    assert_close_f32(out32, out64.detach())
    assert_close_f32(x32.grad, x64.grad, grad=True, what="dx")
    for (n, p32), p64 in zip(m32.named_parameters(), m64.parameters()):
        assert_close_f32(p32.grad, p64.grad, grad=True, what=f"d{n}")
    return m64, x64, out64


def test_swin_index_convention_matches():
    mod = WindowAttention(16, (3, 5), 4)
    assert torch.equal(mod.relative_position_index, swin_index(3, 5))
    names = dict(mod.named_parameters())
    assert set(names) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
                          "relative_position_bias_table"}
    assert names["relative_position_bias_table"].shape == (5 * 9, 4)
    assert "relative_position_index" in mod.state_dict()


@pytest.mark.parametrize("hw,window,shift", [((8, 8), (4, 4), (2, 2)), ((8, 12), (4, 4), (2, 1)),
                                             ((6, 6), (3, 3), (0, 0)), ((4, 6), (2, 3), (1, 1))])
def test_window_attention_forward_map_vs_swin(hw, window, shift):
    mod = WindowAttention(12, window, 3)
    x = torch.randn(2, hw[0] * hw[1], 12)
    m64, x64, out64 = run_pair(mod, lambda m, t: m.forward_map(t, hw, shift), x)
    torch.testing.assert_close(out64, swin_map_ref(m64, x64, hw, shift), rtol=1e-9, atol=1e-9)


def test_window_attention_windowed_layout_with_and_without_mask():
    H, W, M, s = 8, 8, 4, 2
    mod = WindowAttention(16, M, 4, qk_scale=0.3)
    x = torch.randn(2, H, W, 16)
    rolled = partition(torch.roll(x, (-s, -s), (1, 2)), M, M)          # (B*nW, L, C)
    mask = swin_mask(H, W, M, M, s, s)
    # Without a mask the fused path runs (one window = one global map).
    run_pair(mod, lambda m, t: m(t), rolled)
    # With Swin's mask: equals the shifted-window pipeline and the fused whole-map path.
    m64 = copy.deepcopy(mod).double()
    out = m64(rolled.double(), mask.double())
    whole = unpartition(out, 2, H, W, M, M)
    whole = torch.roll(whole, (s, s), (1, 2)).reshape(2, H * W, 16)
    torch.testing.assert_close(whole, m64.forward_map(x.double().reshape(2, -1, 16), (H, W), (s, s)),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(whole, swin_map_ref(m64, x.double().reshape(2, -1, 16), (H, W), (s, s)),
                               rtol=1e-9, atol=1e-9)


def test_window_attention_against_timm():
    timm_swin = pytest.importorskip("timm.models.swin_transformer", reason="timm is not installed")
    ref = timm_swin.WindowAttention(dim=16, num_heads=4, window_size=(4, 4)).eval()
    holder = nn.Sequential(ref)
    x = torch.randn(4, 16, 16)
    mask = swin_mask(8, 8, 4, 4, 2, 2)
    with torch.no_grad():
        want, want_m = ref(x), ref(x, mask)
    report = replace_attention(holder)
    assert [s[0] for s in report.swapped] == ["0"]
    with torch.no_grad():
        torch.testing.assert_close(holder[0](x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(holder[0](x, mask), want_m, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_without_index():
    a = WindowAttention(8, 4, 2)
    sd = {k: v for k, v in a.state_dict().items() if k != "relative_position_index"}  # timm style
    b = WindowAttention(8, 4, 2)
    b.load_state_dict(sd)
    torch.testing.assert_close(b.relative_position_bias_table, a.relative_position_bias_table)
    bad = dict(a.state_dict(), relative_position_index=torch.zeros(16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="query-minus-key"):
        b.load_state_dict(bad)


# ----------------------------------------------------------------------------------------------
# StyleSwin double attention.

def double_ref(mod, x, hw):
    (H, W), (M1, M2), (s1, s2) = hw, mod.window_size, mod.shift_size
    B, N, C = x.shape
    h2, d = mod.num_heads // 2, C // mod.num_heads
    qkv = mod.qkv(x).view(B, H, W, 3, C)
    outs = []
    for half, (r1, r2) in ((0, (0, 0)), (1, (s1, s2))):
        part = qkv[..., half * C // 2:(half + 1) * C // 2]
        part = torch.roll(part, (-r1, -r2), (1, 2))
        q, k, v = (partition(part[..., i, :], M1, M2) for i in range(3))  # (Bw, L, C/2)
        Bw, L, _ = q.shape
        q, k, v = (t.view(Bw, L, h2, d).transpose(1, 2) for t in (q, k, v))
        mask = swin_mask(H, W, M1, M2, r1, r2) if (r1 or r2) else None
        o = window_attn_ref(q, k, v, mod.attn[half].relative_position_bias_table, swin_index(M1, M2),
                            mod.scale, mask)
        o = unpartition(o.transpose(1, 2).reshape(Bw, L, C // 2), B, H, W, M1, M2)
        outs.append(torch.roll(o, (r1, r2), (1, 2)).reshape(B, N, C // 2))
    return mod.proj(torch.cat(outs, dim=2))


def test_styleswin_double_attention():
    mod = DoubleWindowAttention(16, 4, 4)
    assert mod.shift_size == (2, 2)
    assert mod.attn[0].relative_position_bias_table.shape == (49, 2)
    x = torch.randn(2, 64, 16)
    m64, x64, out64 = run_pair(mod, lambda m, t: m(t, (8, 8)), x)
    torch.testing.assert_close(out64, double_ref(m64, x64, (8, 8)), rtol=1e-9, atol=1e-9)
    small = DoubleWindowAttention(16, 8, 4, input_resolution=4)
    assert small.window_size == (4, 4) and small.shift_size == (0, 0)
    assert small(torch.randn(1, 16, 16), (4, 4)).shape == (1, 16, 16)


# ----------------------------------------------------------------------------------------------
# NATTEN neighbourhood attention.

def na_start(i, L, k, d):
    g = i % d
    Lg = len(range(g, L, d))
    return min(max(i // d - k // 2, 0), Lg - k), g


def na_loop_ref(mod, x):
    B, H, W, C = x.shape
    h, d = mod.num_heads, C // mod.num_heads
    (k1, k2), (d1, d2) = mod.kernel_size, mod.dilation
    q, k, v = mod.qkv(x).view(B, H, W, 3, h, d).unbind(3)             # (B, H, W, h, d)
    out = torch.empty(B, H, W, h, d, dtype=x.dtype)
    for y in range(H):
        sy, gy = na_start(y, H, k1, d1)
        ys = [(sy + t) * d1 + gy for t in range(k1)]
        for xx in range(W):
            sx, gx = na_start(xx, W, k2, d2)
            xs = [(sx + t) * d2 + gx for t in range(k2)]
            kk = k[:, ys][:, :, xs].reshape(B, k1 * k2, h, d)
            vv = v[:, ys][:, :, xs].reshape(B, k1 * k2, h, d)
            logit = torch.einsum("bhd,bnhd->bhn", q[:, y, xx] * mod.scale, kk)
            if mod.rpb is not None:  # NATTEN: rpb[h, (key - query)/d + k - 1, ...]
                ay = [(yy - y) // d1 + k1 - 1 for yy in ys]
                ax = [(x2 - xx) // d2 + k2 - 1 for x2 in xs]
                logit = logit + mod.rpb[:, ay][:, :, ax].reshape(h, -1)
            out[:, y, xx] = torch.einsum("bhn,bnhd->bhd", logit.softmax(-1), vv)
    return mod.proj(out.reshape(B, H, W, C))


@pytest.mark.parametrize("hw,k,dil,rpb", [((7, 9), 3, (1, 2), True), ((6, 6), 5, 1, True),
                                          ((5, 8), (3, 5), 1, False)])
def test_neighborhood_attention_vs_loop(hw, k, dil, rpb):
    mod = NeighborhoodAttention2D(8, 2, k, dil, rel_pos_bias=rpb)
    if rpb:
        assert mod.rpb.shape == (2, 2 * mod.kernel_size[0] - 1, 2 * mod.kernel_size[1] - 1)
    x = torch.randn(2, *hw, 8)
    m64, x64, out64 = run_pair(mod, lambda m, t: m(t), x)
    torch.testing.assert_close(out64, na_loop_ref(m64, x64), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# replace_attention on a model with foreign attention classes.

class WindowAttention_(nn.Module):  # renamed below to look like Swin's class
    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.window_size, self.num_heads, self.scale = window_size, num_heads, (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        self.register_buffer("relative_position_index", swin_index(*window_size))
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(0.0), nn.Dropout(0.0)

    def forward(self, x, mask=None):
        Bw, L, C = x.shape
        q, k, v = self.qkv(x).view(Bw, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        o = window_attn_ref(q, k, v, self.relative_position_bias_table, self.relative_position_index,
                            self.scale, mask)
        return self.proj(o.transpose(1, 2).reshape(Bw, L, C))


WindowAttention_.__name__ = "WindowAttention"


class NeighborhoodAttention2D_(nn.Module):
    def __init__(self, dim, num_heads, kernel_size, dilation):
        super().__init__()
        self.num_heads, self.kernel_size, self.dilation = num_heads, (kernel_size,) * 2, (dilation,) * 2
        self.scale, self.is_causal, self.attn_drop = (dim // num_heads) ** -0.5, (False, False), 0.0
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rpb = nn.Parameter(torch.randn(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))

    forward = na_loop_ref


NeighborhoodAttention2D_.__name__ = "NeighborhoodAttention2D"


class HalfAttention(nn.Module):  # StyleSwin-like: no qkv inside
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(49, 2))
        self.num_heads, self.window_size = 2, (4, 4)


HalfAttention.__name__ = "WindowAttention"


class Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 1))


def test_replace_attention_swaps_and_reports():
    model = nn.ModuleDict({"swin": WindowAttention_(16, (4, 4), 4), "na": NeighborhoodAttention2D_(8, 2, 3, 2),
                           "styleswin": HalfAttention(), "other": Mystery()}).double()
    xs = torch.randn(4, 16, 16, dtype=torch.float64)
    mask = swin_mask(8, 8, 4, 4, 2, 2).double()
    xn = torch.randn(1, 7, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        want = (model["swin"](xs), model["swin"](xs, mask), model["na"](xn))
    report = replace_attention(model, backend="ref")
    assert [s[0] for s in report.swapped] == ["swin", "na"]
    assert isinstance(model["swin"], WindowAttention) and isinstance(model["na"], NeighborhoodAttention2D)
    skipped = {n: why for n, _, why in report.skipped}
    assert "no qkv/proj" in skipped["styleswin"] and "unrecognised" in skipped["other"]
    assert "swapped swin" in str(report)
    with torch.no_grad():
        got = (model["swin"](xs), model["swin"](xs, mask), model["na"](xn))
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    assert replace_attention(model).swapped == []  # idempotent: ours are left alone


def test_replace_attention_skips_what_it_cannot_reproduce():
    """Issue 15 item 1: a strided NATTEN module was swapped with its stride ignored (outputs off by
    0.19), an even kernel_size raised ValueError. Both are now skipped with the reason, the
    original module left in place."""
    strided = NeighborhoodAttention2D_(8, 2, 3, 1)
    strided.stride = (2, 2)
    even = NeighborhoodAttention2D_(8, 2, 4, 1)
    ok = NeighborhoodAttention2D_(8, 2, 3, 1)
    ok.stride = 1
    model = nn.ModuleDict({"strided": strided, "even": even, "ok": ok})
    report = replace_attention(model, backend="ref")
    skipped = {n: why for n, _, why in report.skipped}
    assert [s[0] for s in report.swapped] == ["ok"]
    assert "stride=(2, 2)" in skipped["strided"] and "even kernel_size=(4, 4)" in skipped["even"]
    assert model["strided"] is strided and model["even"] is even
    assert isinstance(model["ok"], NeighborhoodAttention2D)


class TimmWindowAttention_(WindowAttention_):  # timm registers the index non-persistent
    def __init__(self, dim, window_size, num_heads):
        super().__init__(dim, window_size, num_heads)
        self.register_buffer("relative_position_index", swin_index(*window_size), persistent=False)


TimmWindowAttention_.__name__ = "WindowAttention"


@pytest.mark.parametrize("style", ["timm", "swin"])
def test_swapped_state_dict_loads_strictly_into_the_unswapped_model(style):
    """Issue 15 item 7: after a timm swap the state dict gained `relative_position_index`, so a
    strict load back into an unswapped timm model failed. The swap keeps the source's choice."""
    cls = TimmWindowAttention_ if style == "timm" else WindowAttention_
    model = nn.Sequential(cls(16, (4, 4), 4))
    keys = set(model.state_dict())
    assert replace_attention(model, backend="ref").swapped
    sd = model.state_dict()
    assert set(sd) == keys
    fresh = nn.Sequential(cls(16, (4, 4), 4))
    fresh.load_state_dict(sd)  # strict
    model.load_state_dict(fresh.state_dict())  # and back
    x = torch.randn(4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), fresh[0](x), rtol=1e-5, atol=1e-5)


def test_set_window_size_after_swap():
    """Issue 15 item 7: timm's `set_input_size()` calls `attn.set_window_size(...)`, which the
    swapped module lacked (AttributeError). The same window is a no-op; a new one resizes the bias
    table with timm's own interpolation, or says timm is needed."""
    model = nn.Sequential(TimmWindowAttention_(16, (4, 4), 4))
    replace_attention(model, backend="ref")
    x = torch.randn(4, 16, 16)
    with torch.no_grad():
        before = model[0](x)
        model[0].set_window_size(4)
        torch.testing.assert_close(model[0](x), before, rtol=0, atol=0)
    try:
        import timm.layers  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="from \\(4, 4\\) to \\(6, 6\\).*timm is not installed"):
            model[0].set_window_size((6, 6))
        return
    model[0].set_window_size((6, 6))
    assert model[0].relative_position_bias_table.shape == (121, 4)
    assert model[0](torch.randn(2, 36, 16)).shape == (2, 36, 16)
