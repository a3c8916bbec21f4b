"""Attention ops: grid (window) attention, locality-masked attention, and the packed-qkv entry.

The whole contract lives here: the public functions, their plain-PyTorch references (`*_ref`,
the ground truth) and the dispatch to the fused backends. Geometry (which key each query sees,
which relative-bias row it adds) is defined once in `geometry.py`.

Shapes follow SDPA: `q, k, v` are `(B, heads, N, d)` with `N = H*W` tokens in row-major order;
the output has the same shape. `attention_qkv` takes the packed projection `(B, N, 3*heads*d)` of
`Linear(C, 3C)` and returns `(B, N, heads*d)` without permute copies.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from . import _dispatch
from .geometry import GRID, AttnGeometry, bias_index, grid_geometry, local_geometry, visibility

__all__ = ["grid_attention", "local_attention", "attention", "attention_qkv",
           "attention_ref", "grid_attention_ref", "probs_times_values"]


# ----------------------------------------------------------------------------------------------
# References (plain PyTorch; autograd of any order; any device and dtype).

def probs_times_values(p, v, vis):
    """`p @ v` where masked pairs contribute nothing, even when a value is NaN or +-Inf.

    `p` (..., Nq, Nk) are softmax weights (exactly 0 where masked), `vis` the boolean mask
    broadcastable to `p`, `v` (..., Nk, d). A dense product would multiply a masked key's 0 weight
    by its NaN/Inf value and poison every row (0 * NaN = NaN); here a non-finite value reaches
    exactly the rows that see it: NaN, or +Inf / -Inf (both: NaN, as inf + -inf).
    """
    out = torch.matmul(p, v)
    if v.device.type == "meta" or torch.compiler.is_exporting():
        # Shapes only (meta), or an exported generator (docs/export.md): the dense product, whose
        # NaN/Inf spread no deployed latent -> image graph needs to pay two extra matmuls for.
        return out
    if not torch.compiler.is_compiling() and bool(torch.isfinite(v).all()):
        return out  # the common case: the dense product is exact
    finite = torch.isfinite(v)
    out = torch.matmul(p, torch.where(finite, v, torch.zeros_like(v)))
    codes = torch.cat([v.isnan(), v == float("inf"), v == float("-inf")], dim=-1).to(p.dtype)
    hits = torch.matmul(vis.to(p.dtype), codes) > 0                      # (..., Nq, 3d)
    nan_hit, pos_hit, neg_hit = hits.split(v.shape[-1], dim=-1)
    out = torch.where(pos_hit, torch.full_like(out, float("inf")), out)
    out = torch.where(neg_hit, torch.full_like(out, float("-inf")), out)
    return torch.where(nan_hit | (pos_hit & neg_hit), torch.full_like(out, float("nan")), out)


def attention_ref(q, k, v, geom: AttnGeometry, rel_bias=None, scale=None):
    """Dense reference: full (N, N) logits, boolean mask from `geometry.visibility`, softmax.

    Memory is O(N^2) per (batch, head): use it for checking, not for large maps.
    Grid geometries use the window-partitioned `grid_attention_ref` instead (O(N * window)).
    """
    if geom.kind == GRID:
        return grid_attention_ref(q, k, v, geom, rel_bias, scale)
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    logits = torch.matmul(q * scale, k.transpose(-2, -1))               # (B, h, N, N)
    if rel_bias is not None:
        idx = bias_index(geom, q.device)                                 # (N, N)
        logits = logits + rel_bias[idx].permute(2, 0, 1).to(logits.dtype)  # (h, N, N)
    mask = visibility(geom, q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    return probs_times_values(torch.softmax(logits, dim=-1), v, mask)


def grid_attention_ref(q, k, v, geom: AttnGeometry, rel_bias=None, scale=None):
    """Window reference: roll, pad to whole windows, partition, masked attention, reverse.

    Padding tokens are masked out as keys; the region mask of shifted windows (Swin) is applied
    inside each window. Memory O(N * M1 * M2).
    """
    B, h, N, d = q.shape
    H, W = geom.H, geom.W
    (M1, M2), (s1, s2) = geom.grid_window, geom.grid_shift
    scale = d ** -0.5 if scale is None else scale
    nH, nW = -(-H // M1), -(-W // M2)
    Hp, Wp = nH * M1, nW * M2

    def part(t):
        t = t.reshape(B, h, H, W, d)
        t = torch.roll(t, shifts=(-s1, -s2), dims=(2, 3))
        t = F.pad(t, (0, 0, 0, Wp - W, 0, Hp - H))                     # (B, h, Hp, Wp, d)
        t = t.reshape(B, h, nH, M1, nW, M2, d).permute(0, 1, 2, 4, 3, 5, 6)
        return t.reshape(B, h, nH * nW, M1 * M2, d)                      # (B, h, nWin, L, d)

    qw, kw, vw = part(q), part(k), part(v)
    # Region labels on the padded, rolled map: wrap status per axis; -1 marks padding.
    ry = torch.arange(Hp, device=q.device)
    rx = torch.arange(Wp, device=q.device)
    lab = (ry >= H - s1).long()[:, None] * 2 + (rx >= W - s2).long()[None, :]
    lab = torch.where((ry < H)[:, None] & (rx < W)[None, :], lab, torch.full_like(lab, -1))
    lab = lab.reshape(nH, M1, nW, M2).permute(0, 2, 1, 3).reshape(nH * nW, M1 * M2)
    mask = (lab[:, :, None] == lab[:, None, :]) & (lab[:, None, :] >= 0)  # (nWin, L, L)
    eye = torch.eye(M1 * M2, dtype=torch.bool, device=q.device)
    mask = mask | (eye & (lab[:, :, None] < 0))                          # padded queries: no NaN

    logits = torch.matmul(qw * scale, kw.transpose(-2, -1))              # (B, h, nWin, L, L)
    if rel_bias is not None:
        cy = torch.arange(M1, device=q.device).repeat_interleave(M2)
        cx = torch.arange(M2, device=q.device).repeat(M1)
        idx = (cy[:, None] - cy[None, :] + M1 - 1) * (2 * M2 - 1) + (cx[:, None] - cx[None, :] + M2 - 1)
        logits = logits + rel_bias[idx].permute(2, 0, 1)[:, None].to(logits.dtype)  # (h, 1, L, L)
    logits = logits.masked_fill(~mask, float("-inf"))
    ow = probs_times_values(torch.softmax(logits, dim=-1), vw, mask)     # (B, h, nWin, L, d)

    o = ow.reshape(B, h, nH, nW, M1, M2, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, h, Hp, Wp, d)
    o = o[:, :, :H, :W]
    o = torch.roll(o, shifts=(s1, s2), dims=(2, 3))
    return o.reshape(B, h, N, d)


# ----------------------------------------------------------------------------------------------
# Input checking.

def _check_geom(op, geom):
    if not isinstance(geom, AttnGeometry):
        raise TypeError(f"{op}: geom must be an AttnGeometry (from grid_geometry(...) or "
                        f"local_geometry(...)); got {type(geom).__name__}")


def _check_qkv(op, q, k, v, geom: AttnGeometry, rel_bias):
    _check_geom(op, geom)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (B, heads, N, d); got shape {tuple(t.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"{op}: q, k and v must have the same shape (B, heads, N, d); got "
                         f"q={tuple(q.shape)}, k={tuple(k.shape)}, v={tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise ValueError(f"{op}: q must be floating point; got {q.dtype}")
    if q.shape[3] < 1:
        raise ValueError(f"{op}: head dim d (q.shape[3]) must be >= 1; got shape {tuple(q.shape)}")
    if q.shape[2] != geom.N:
        raise ValueError(f"{op}: q has N={q.shape[2]} tokens but hw={(geom.H, geom.W)} needs "
                         f"N = H*W = {geom.N}")
    _check_bias(op, rel_bias, q.shape[1])


def _check_bias(op, rel_bias, heads):
    if rel_bias is None:
        return
    if not isinstance(rel_bias, torch.Tensor) or rel_bias.dim() != 2:
        raise ValueError(f"{op}: rel_bias must be a 2-D tensor (rows, heads); got "
                         f"{getattr(rel_bias, 'shape', type(rel_bias).__name__)}")
    if rel_bias.shape[1] != heads:
        raise ValueError(f"{op}: rel_bias has {rel_bias.shape[1]} heads in dim 1 but q has {heads} heads")
    if not rel_bias.dtype.is_floating_point:
        raise ValueError(f"{op}: rel_bias must be floating point; got {rel_bias.dtype}")


def _bias_rows(rel_bias):
    if rel_bias is None:
        return None
    if not isinstance(rel_bias, torch.Tensor) or rel_bias.dim() != 2:
        raise ValueError(f"rel_bias must be a 2-D tensor (rows, heads); got "
                         f"{getattr(rel_bias, 'shape', type(rel_bias).__name__)}")
    return rel_bias.shape[0]


_AUTOCAST_DEVICES = ("cpu", "cuda")
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast(*ts):
    """Inputs as autocast runs attention (docs/ops.md §5): inside `torch.autocast(device, dtype)`
    for the tensors' device, float32/float16/bfloat16 activations are cast to the autocast dtype,
    as torch casts the inputs of `scaled_dot_product_attention`; float64, and everything outside
    autocast, is left alone. The bias table is not cast (the kernels read it in float32)."""
    dev = ts[0].device.type if isinstance(ts[0], torch.Tensor) else None
    if dev not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(dev):
        return ts
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t
                 for t in ts)


# ----------------------------------------------------------------------------------------------
# Public ops.

def attention(q, k, v, geom: AttnGeometry, rel_bias=None, scale=None, backend="auto"):
    """Masked attention with geometry `geom` (see `geometry.py`) on `(B, heads, N, d)` tensors.

    `grid_attention` and `local_attention` build the geometry and call this; use it directly when
    the geometry is built once and reused (as the model layers do). Under `torch.autocast` q, k
    and v run in the autocast dtype (as `scaled_dot_product_attention`).
    """
    op = "attention"
    q, k, v = _autocast(q, k, v)
    _check_qkv(op, q, k, v, geom, rel_bias)
    if rel_bias is not None and rel_bias.shape[0] != geom.bias_rows:
        raise ValueError(f"{op}: rel_bias must have {geom.bias_rows} rows for this geometry; "
                         f"got {rel_bias.shape[0]}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    B, h, N, d = q.shape
    b = _dispatch.resolve(op, backend, [("q", q), ("k", k), ("v", v), ("rel_bias", rel_bias)],
                          dict(B=B, heads=h, N=N, d=d, kind=geom.kind))
    if b == "ref":
        return attention_ref(q, k, v, geom, rel_bias, scale)
    from . import _library
    return _library.attention_fused(q, k, v, rel_bias, geom, scale, b)


def grid_attention(q, k, v, hw, window, shift=(0, 0), rel_bias=None, scale=None, backend="auto"):
    """Non-overlapping window self-attention (Swin without shift by default), in token order.

    Args:
        q, k, v: `(B, heads, N, d)`, `N = H*W`, tokens row-major.
        hw: map size `(H, W)`.
        window: window size `(M1, M2)`; `window == hw` is global attention. Windows need not divide
            the map: the last row/column of windows is partial and masked.
        shift: cyclic shift `(s1, s2)`, `0 <= s < window` (Swin's shifted windows, with the region mask).
        rel_bias: optional table `((2*M1-1)*(2*M2-1), heads)`, added to the scaled logits.
        scale: logit scale, default `d ** -0.5`.
        backend: "auto" | "ref" | "cpu" | "cuda" | "triton".
    Returns:
        `(B, heads, N, d)`.
    """
    geom = grid_geometry(hw, window, shift, _bias_rows(rel_bias))
    return attention(q, k, v, geom, rel_bias, scale, backend)


def local_attention(q, k, v, hw, mode="window2d", kernel_size=(7, 7), border="clip",
                    dilation=(1, 1), width=None, rel_bias=None, scale=None, backend="auto"):
    """Locality-masked self-attention (TransGAN's locality-aware initialisation, NATTEN).

    Modes: `band1d` (`|i - j| <= width` on the flattened index; the official TransGAN code),
    `window2d` with `border="clip"` (a `kernel_size` window cut at the border; the paper's figure)
    or `border="shift"` (NATTEN's neighbourhood attention, with `dilation`).
    `rel_bias` rows: band1d `(2H-1)(2W-1)`; clip `k1*k2` or `(2H-1)(2W-1)`; shift `(2k1-1)(2k2-1)`.
    Returns `(B, heads, N, d)`.
    """
    geom = local_geometry(hw, mode, kernel_size, border, dilation, width, _bias_rows(rel_bias))
    return attention(q, k, v, geom, rel_bias, scale, backend)


def attention_qkv(qkv, heads: int, geom: AttnGeometry, rel_bias=None, scale=None, backend="auto"):
    """Attention straight from the packed projection of `Linear(C, 3C)`.

    Args:
        qkv: `(B, N, 3*heads*d)`, laid out as `[q | k | v]`, each `heads*d` wide, head-major.
        heads: number of heads.
        geom: the geometry (`grid_geometry(...)`, `local_geometry(...)`).
    Returns:
        `(B, N, heads*d)`, ready for the output projection (in the autocast dtype under
        `torch.autocast`, as `attention`).
    """
    op = "attention_qkv"
    _check_geom(op, geom)
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        raise ValueError(f"{op}: qkv must be 3-D (B, N, 3*heads*d); got "
                         f"{getattr(qkv, 'shape', type(qkv).__name__)}")
    (qkv,) = _autocast(qkv)
    B, N, C3 = qkv.shape
    if not isinstance(heads, int) or heads < 1 or C3 % (3 * heads) or C3 == 0:
        raise ValueError(f"{op}: qkv's last dim {C3} must be positive and divisible by 3*heads "
                         f"(heads={heads}; head dim d = C / (3*heads) >= 1)")
    if N != geom.N:
        raise ValueError(f"{op}: qkv has N={N} tokens but hw={(geom.H, geom.W)} needs N = {geom.N}")
    if not qkv.dtype.is_floating_point:
        raise ValueError(f"{op}: qkv must be floating point; got {qkv.dtype}")
    _check_bias(op, rel_bias, heads)
    if rel_bias is not None and rel_bias.shape[0] != geom.bias_rows:
        raise ValueError(f"{op}: rel_bias must have {geom.bias_rows} rows for this geometry; "
                         f"got {rel_bias.shape[0]}")
    d = C3 // (3 * heads)
    scale = d ** -0.5 if scale is None else float(scale)
    b = _dispatch.resolve(op, backend, [("qkv", qkv), ("rel_bias", rel_bias)],
                          dict(B=B, heads=heads, N=N, d=d, kind=geom.kind))
    if b == "ref":
        q, k, v = qkv.reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)   # 3 x (B, h, N, d)
        o = attention_ref(q, k, v, geom, rel_bias, scale)                 # (B, h, N, d)
        return o.transpose(1, 2).reshape(B, N, heads * d)
    from . import _library
    return _library.attention_qkv_fused(qkv, rel_bias, heads, geom, scale, b)
