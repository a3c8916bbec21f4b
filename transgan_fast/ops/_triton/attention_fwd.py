"""Flash-style masked attention forward in Triton, for every geometry kind.

One program per (query tile of a plane, head, batch). The tile's candidate keys, a rectangle of
the plane, come from the geometry (`_geom.candidate_range`), so key tiles outside the
window/neighbourhood are never visited; inside a tile the exact mask and relative-bias row are computed from token coordinates.
Online softmax in float32; the natural-log `lse` is saved for the backward.

Non-finite values: a NaN/Inf in `q`, `k` or the bias only reaches rows that see it, because masked
logits are replaced before the softmax. A non-finite *value* would still reach every row of the tile
through the `P @ V` product (0 * NaN = NaN). So the fast pass (`_attend`) also sums `v * 0` over its
value tiles (NaN exactly when one held a NaN/Inf); a program that saw one redoes its query tile with
`_nonfinite_pv`, which counts non-finite values per (row, channel) from the rows that see them. The
exact pass is a separate loop, so it costs finite inputs nothing but that running sum.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import _geom as G
from . import tuning


@triton.jit
def _nonfinite_pv(p, vis, v, PREC: tl.constexpr):
    """`P @ V` for a value tile holding NaN/Inf, restricted to visible pairs: a visible NaN value
    gives NaN, visible +Inf / -Inf give +Inf / -Inf (both: NaN, as inf + -inf)."""
    zero = tl.zeros_like(v)
    bad = (v * 0) != 0  # NaN or Inf
    pv = tl.dot(p.to(v.dtype), tl.where(bad, zero, v), input_precision=PREC)
    seen = vis.to(v.dtype)
    pv += tl.where(tl.dot(seen, tl.where(v != v, zero + 1, zero)) > 0, float("nan"), 0.0)
    pv += tl.where(tl.dot(seen, tl.where(v == float("inf"), zero + 1, zero)) > 0, float("inf"), 0.0)
    pv += tl.where(tl.dot(seen, tl.where(v == float("-inf"), zero + 1, zero)) > 0, float("-inf"), 0.0)
    return pv


@triton.jit
def _attend(q, yi, xi, qvalid, Kb, Vb, skn, svn, Bias, hd, heads, scale, ka0, kb0, KB, total, c0, c1,
            dmask, H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr, HAS_BIAS: tl.constexpr,
            DP: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            EXACT: tl.constexpr):
    """Online softmax of a query tile over its candidate keys: (row max, row sum, unnormalised
    output, whether a value tile held NaN/Inf). EXACT routes every value tile through
    `_nonfinite_pv`; the fast pass only notes that one was seen, so its loop stays lean."""
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, DP), tl.float32)
    bad = tl.sum(tl.zeros((BLOCK_M,), tl.float32), 0)  # sums v * 0: NaN once a NaN/Inf is seen
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DP)
    for start in range(0, total, BLOCK_N):
        yj, xj, ktok, kvalid = G.rect_points(start + offs_n, total, ka0, kb0, KB, c0, c1,
                                             H, W, P0, P1, P2, P3, KIND)
        k, v = G.load_pair(Kb, Vb, skn, svn, ktok, kvalid, offs_d, dmask)
        s, vis, _ = G.scores(q, k, yi, xi, yj, xj, qvalid, kvalid, Bias, hd, heads, scale,
                             H, W, P0, P1, P2, P3, B1, B2, KIND, HAS_BIAS, PREC)  # (BLOCK_M, BLOCK_N)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if EXACT:
            pv = _nonfinite_pv(p, vis, v, PREC)
        else:
            pv = tl.dot(p.to(v.dtype), v, input_precision=PREC)
            bad += tl.sum(tl.sum((v * 0).to(tl.float32), 1), 0)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return m_i, l_i, acc, bad != bad


@triton.jit
def attn_fwd_kernel(Q, K, V, Bias, Out, Lse,
                    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                    heads, d, scale, LYM, LXM, TX,
                    H, W, P0, P1, P2, P3, B1, B2, AP0, AP1, BH,
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

    q_ptrs = Q + G.slice_offset(bt, hd, sqb, sqh) + qtok[:, None] * sqn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=qvalid[:, None] & dmask[None, :], other=0.0)

    # Candidate keys of this query tile: a rectangle of its plane.
    ka0, ka1 = G.candidate_range(a_lo, a_hi, LY, AP0, AX0)
    kb0, kb1 = G.candidate_range(b_lo, b_hi, LX, AP1, AX1)
    KB = kb1 - kb0
    total = (ka1 - ka0) * KB

    Kb = K + G.slice_offset(bt, hd, skb, skh)  # this (batch, head) slice of k and v
    Vb = V + G.slice_offset(bt, hd, svb, svh)
    m_i, l_i, acc, bad = _attend(q, yi, xi, qvalid, Kb, Vb, skn, svn, Bias, hd, heads, scale,
                                 ka0, kb0, KB, total, c0, c1, dmask, H, W, P0, P1, P2, P3, B1, B2,
                                 KIND, HAS_BIAS, DP, PREC, BLOCK_M, BLOCK_N, False)
    if bad:  # rare: a NaN/Inf value was in range; redo this tile exactly (see module docstring)
        m_i, l_i, acc, bad = _attend(q, yi, xi, qvalid, Kb, Vb, skn, svn, Bias, hd, heads, scale,
                                     ka0, kb0, KB, total, c0, c1, dmask, H, W, P0, P1, P2, P3, B1, B2,
                                     KIND, HAS_BIAS, DP, PREC, BLOCK_M, BLOCK_N, True)

    l_safe = tl.where(qvalid, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = Out + G.slice_offset(bt, hd, sob, soh) + qtok[:, None] * son + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=qvalid[:, None] & dmask[None, :])
    N = H * W
    lse_ptrs = Lse + (bt.to(tl.int64) * heads + hd) * N + qtok
    tl.store(lse_ptrs, m_i + tl.log(l_safe), mask=qvalid)


_launcher = tuning.Launcher(attn_fwd_kernel)


def attn_fwd(q, k, v, bias, geom, scale, out, lse):
    """Kernel-contract entry (see `_library`): writes `out` and `lse`."""
    B, h, N, d = q.shape
    if q.numel() == 0:
        return  # nothing to compute (an empty grid is not a valid launch)
    dp = max(16, G.next_pow2(d))
    n_planes, (LYM, LXM), TX = G.plane_plan(geom)
    AX0, AX1 = G.kind_axes(geom.kind, backward=False)
    AP0, AP1 = G.axis_params(geom, backward=False)
    has_bias = bias is not None
    grid = lambda META: (n_planes * G.tiles_per_plane(geom, META["BLOCK_M"]), h, B)  # noqa: E731
    _launcher(grid, dp, q.element_size(),
              q, k, v, bias if has_bias else q, out, lse,
              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
              h, d, float(scale), LYM, LXM, TX,
              geom.H, geom.W, *geom.p, *geom.bias_hw, AP0, AP1, G.next_pow2(B * h),
              KIND=geom.kind, AX0=AX0, AX1=AX1, HAS_BIAS=has_bias, DP=dp,
              PREC=tuning.dot_precision(q.dtype))
