"""Flash-style masked attention forward in Triton, for every geometry kind.

One program per (query tile of a lattice, head, batch). The query tile's key rectangle comes from
the geometry (`_geom.partner_range`), so key tiles outside the window/neighbourhood are never
visited; inside a tile the exact mask and relative-bias row are computed from token coordinates.
Online softmax in float32; the natural-log `lse` is saved for the backward.

Non-finite values: a NaN/Inf in `q`, `k` or the bias only reaches rows that see it, because masked
logits are replaced before the softmax. A non-finite *value* would still reach every row of the tile
through the `P @ V` product (0 * NaN = NaN), so a tile holding one takes an exact slow path
(`_nonfinite_pv`): the finite part through the dot, the non-finite part counted per (row, channel)
from the rows that actually see it. Finite inputs never take that branch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import _geom as G
from . import tuning


@triton.jit
def _has_nonfinite(v):
    """True when the tile holds a NaN or an Inf (`x * 0` is NaN exactly for those)."""
    z = tl.sum(tl.sum((v * 0).to(tl.float32), 1), 0)
    return z != z


@triton.jit
def _nonfinite_pv(p, vis, v, PREC: tl.constexpr):
    """`P @ V` for a value tile holding NaN/Inf, with the semantics of the dense product restricted
    to visible pairs: a visible NaN, or an Inf with probability 0, gives NaN; +Inf and -Inf with
    positive probability give +-Inf (both: NaN, as inf + -inf)."""
    zero = tl.zeros_like(v)
    one = zero + 1
    is_nan = v != v
    pos_inf = v == float("inf")
    neg_inf = v == float("-inf")
    clean = tl.where(is_nan | pos_inf | neg_inf, zero, v)
    pv = tl.dot(p.to(v.dtype), clean, input_precision=PREC)
    seen = vis.to(v.dtype)
    live = (vis & (p > 0)).to(v.dtype)
    dead = (vis & (p == 0)).to(v.dtype)
    n_nan = tl.dot(seen, tl.where(is_nan, one, zero)) + tl.dot(dead, tl.where(pos_inf | neg_inf, one, zero))
    pv += tl.where(n_nan > 0, float("nan"), 0.0)
    pv += tl.where(tl.dot(live, tl.where(pos_inf, one, zero)) > 0, float("inf"), 0.0)
    pv += tl.where(tl.dot(live, tl.where(neg_inf, one, zero)) > 0, float("-inf"), 0.0)
    return pv


@triton.jit
def attn_fwd_kernel(Q, K, V, Bias, Out, Lse,
                    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                    heads, d, scale, LYM, LXM, TX,
                    H, W, P0, P1, P2, P3, B1, B2, AP0, AP1,
                    KIND: tl.constexpr, AX0: tl.constexpr, AX1: tl.constexpr,
                    HAS_BIAS: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    bt = tl.program_id(2)
    LY, LX, c0, c1, a, b, qvalid, a_lo, a_hi, b_lo, b_hi = G.tile(
        pid, LYM, LXM, TX, H, W, P0, P1, P2, P3, BLOCK_M, KIND)
    yi, xi = G.coords(a, b, c0, c1, H, W, P0, P1, P2, P3, KIND)
    qtok = (yi * W + xi).to(tl.int64)
    offs_d = tl.arange(0, DP)
    dmask = offs_d < d

    q_ptrs = Q + bt.to(tl.int64) * sqb + hd * sqh + qtok[:, None] * sqn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=qvalid[:, None] & dmask[None, :], other=0.0)

    # Key rectangle of this query tile, in lattice coordinates.
    ka0, ka1 = G.partner_range(a_lo, a_hi, LY, AP0, AX0)
    kb0, kb1 = G.partner_range(b_lo, b_hi, LX, AP1, AX1)
    KB = kb1 - kb0
    total = (ka1 - ka0) * KB

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, DP), tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(0, total, BLOCK_N):
        j = start + offs_n
        kvalid = j < total
        yj, xj = G.coords(ka0 + j // KB, kb0 + j % KB, c0, c1, H, W, P0, P1, P2, P3, KIND)
        ktok = (yj * W + xj).to(tl.int64)
        kmask = kvalid[:, None] & dmask[None, :]
        k = tl.load(K + bt.to(tl.int64) * skb + hd * skh + ktok[:, None] * skn + offs_d[None, :],
                    mask=kmask, other=0.0)
        v = tl.load(V + bt.to(tl.int64) * svb + hd * svh + ktok[:, None] * svn + offs_d[None, :],
                    mask=kmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # (BLOCK_M, BLOCK_N) f32
        vis = G.visible(yi[:, None], xi[:, None], yj[None, :], xj[None, :],
                        H, W, P0, P1, P2, P3, KIND)
        vis = vis & qvalid[:, None] & kvalid[None, :]
        if HAS_BIAS:
            row = G.bias_row(yi[:, None], xi[:, None], yj[None, :], xj[None, :],
                             H, W, P0, P1, P2, P3, B1, B2, KIND)
            s += tl.load(Bias + row * heads + hd, mask=vis, other=0.0)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        pv = tl.dot(p.to(v.dtype), v, input_precision=PREC)
        if _has_nonfinite(v):  # rare: keep masked keys' NaN/Inf values out of other rows
            pv = _nonfinite_pv(p, vis, v, PREC)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    l_safe = tl.where(qvalid, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = Out + bt.to(tl.int64) * sob + hd * soh + qtok[:, None] * son + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=qvalid[:, None] & dmask[None, :])
    N = H * W
    lse_ptrs = Lse + (bt.to(tl.int64) * heads + hd) * N + qtok
    tl.store(lse_ptrs, m_i + tl.log(l_safe), mask=qvalid)


_launcher = tuning.Launcher(attn_fwd_kernel)


def attn_fwd(q, k, v, bias, geom, scale, out, lse):
    """Kernel-contract entry (see `_library`): writes `out` and `lse`."""
    B, h, N, d = q.shape
    dp = max(16, G.next_pow2(d))
    n_lat, (LYM, LXM), TX = G.lattice_plan(geom)
    AX0, AX1 = G.kind_axes(geom.kind, backward=False)
    AP0, AP1 = G.axis_params(geom, backward=False)
    has_bias = bias is not None
    grid = lambda META: (n_lat * G.tiles_per_lattice(geom, META["BLOCK_M"]), h, B)  # noqa: E731
    _launcher(grid, dp, q.element_size(),
              q, k, v, bias if has_bias else q, out, lse,
              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
              h, d, float(scale), LYM, LXM, TX,
              geom.H, geom.W, *geom.p, *geom.bias_hw, AP0, AP1,
              KIND=geom.kind, AX0=AX0, AX1=AX1, HAS_BIAS=has_bias, DP=dp,
              PREC=tuning.dot_precision(q.dtype))
