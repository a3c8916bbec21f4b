"""Flash-style (FA2) masked attention backward in Triton, for every geometry kind.

Three kernels:
1. `delta_kernel`: D = rowsum(dO * O) per query, float32.
2. `dkdv_kernel`: one program per key tile; loops over its candidate queries, a rectangle of the
   plane (derived from the geometry: the whole window for GRID, radius r / width for CLIP / BAND, k - 1
   for NATTEN, since a query always lies in its own neighbourhood) and accumulates dK, dV.
3. `dq_kernel`: one program per query tile over its candidate keys (as the forward); accumulates dQ
   and, with a bias, stores dS into a per-slot scratch that `bias_grad` reduces into `dbias` in a
   fixed order (deterministic, no atomics).
Probabilities are recomputed from the saved `lse`; every accumulation is float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _geom as G
from . import bias_grad, tuning
from . import sparse as S


@triton.jit
def delta_kernel(O, DO, Delta, sob, soh, son, sdb, sdh, sdn, heads, N, d,
                 DP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    bt = tl.program_id(2).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DP)
    mask = (rows < N)[:, None] & (offs_d < d)[None, :]
    r64 = rows[:, None].to(tl.int64)
    o = tl.load(O + G.slice_offset(bt, hd, sob, soh) + r64 * son + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + G.slice_offset(bt, hd, sdb, sdh) + r64 * sdn + offs_d[None, :], mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + (bt * heads + hd) * N + rows, delta, mask=rows < N)


@triton.jit
def _probs(q, k, yi, xi, yj, xj, qvalid, kvalid, lse, Bias, hd, heads, scale,
           H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr, HAS_BIAS: tl.constexpr,
           PREC: tl.constexpr):
    """Recomputed probabilities P (BLOCK_M, BLOCK_N), the mask, and the bias rows."""
    s, vis, row = G.scores(q, k, yi, xi, yj, xj, qvalid, kvalid, Bias, hd, heads, scale,
                           H, W, P0, P1, P2, P3, B1, B2, KIND, HAS_BIAS, PREC)
    p = tl.where(vis, tl.exp(s - lse[:, None]), 0.0)
    return p, vis, row


@triton.jit
def dkdv_kernel(Q, K, V, Bias, DO, Lse, Delta, DK, DV,
                sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
                skgb, skgh, skgn, svgb, svgh, svgn,
                heads, d, scale, LYM, LXM, TX,
                H, W, P0, P1, P2, P3, B1, B2, AP0, AP1, BH,
                KIND: tl.constexpr, AX0: tl.constexpr, AX1: tl.constexpr,
                HAS_BIAS: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    bt = tl.program_id(2).to(tl.int64)
    N = H * W
    # The key tile (BLOCK_N plane points) and its candidate queries (a rectangle of the plane).
    LY, LX, c0, c1, a, b, kvalid, a_lo, a_hi, b_lo, b_hi = G.tile(
        pid, LYM, LXM, TX, H, W, P0, P1, P2, P3, BLOCK_N, KIND)
    yj, xj = G.coords(a, b, c0, c1, H, W, P0, P1, P2, P3, KIND)
    ktok = (yj * W + xj).to(tl.int64)
    offs_d = tl.arange(0, DP)
    dmask = offs_d < d
    kmask = kvalid[:, None] & dmask[None, :]
    k, v = G.load_pair(K + G.slice_offset(bt, hd, skb, skh), V + G.slice_offset(bt, hd, svb, svh),
                       skn, svn, ktok, kvalid, offs_d, dmask)
    qa0, qa1 = G.candidate_range(a_lo, a_hi, LY, AP0, AX0)
    qb0, qb1 = G.candidate_range(b_lo, b_hi, LX, AP1, AX1)
    QB = qb1 - qb0
    total = (qa1 - qa0) * QB

    dk = tl.zeros((BLOCK_N, DP), tl.float32)
    dv = tl.zeros((BLOCK_N, DP), tl.float32)
    offs_m = tl.arange(0, BLOCK_M)
    for start in range(0, total, BLOCK_M):
        yi, xi, qtok, qvalid = G.rect_points(start + offs_m, total, qa0, qb0, QB, c0, c1,
                                             H, W, P0, P1, P2, P3, KIND)
        q, do = G.load_pair(Q + G.slice_offset(bt, hd, sqb, sqh), DO + G.slice_offset(bt, hd, sdb, sdh),
                            sqn, sdn, qtok, qvalid, offs_d, dmask)
        lse = tl.load(Lse + (bt * heads + hd) * N + qtok, mask=qvalid, other=0.0)
        dl = tl.load(Delta + (bt * heads + hd) * N + qtok, mask=qvalid, other=0.0)
        p, vis, row = _probs(q, k, yi, xi, yj, xj, qvalid, kvalid, lse, Bias, hd, heads, scale,
                             H, W, P0, P1, P2, P3, B1, B2, KIND, HAS_BIAS, PREC)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = tl.where(vis, p * (dp - dl[:, None]), 0.0)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)

    dk = dk * scale
    tl.store(DK + G.slice_offset(bt, hd, skgb, skgh) + ktok[:, None] * skgn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kmask)
    tl.store(DV + G.slice_offset(bt, hd, svgb, svgh) + ktok[:, None] * svgn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def dq_kernel(Q, K, V, Bias, DO, Lse, Delta, DQ, DSlot,
              sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn, sqgb, sqgh, sqgn,
              heads, d, scale, LYM, LXM, TX,
              H, W, P0, P1, P2, P3, B1, B2, AP0, AP1, BH, SA, SB,
              KIND: tl.constexpr, AX0: tl.constexpr, AX1: tl.constexpr,
              HAS_BIAS: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1)
    bt = tl.program_id(2).to(tl.int64)
    N = H * W
    LY, LX, c0, c1, a, b, qvalid, a_lo, a_hi, b_lo, b_hi = G.tile(
        pid, LYM, LXM, TX, H, W, P0, P1, P2, P3, BLOCK_M, KIND)
    yi, xi = G.coords(a, b, c0, c1, H, W, P0, P1, P2, P3, KIND)
    qtok = (yi * W + xi).to(tl.int64)
    offs_d = tl.arange(0, DP)
    dmask = offs_d < d
    qmask = qvalid[:, None] & dmask[None, :]
    q, do = G.load_pair(Q + G.slice_offset(bt, hd, sqb, sqh), DO + G.slice_offset(bt, hd, sdb, sdh),
                        sqn, sdn, qtok, qvalid, offs_d, dmask)
    lse = tl.load(Lse + (bt * heads + hd) * N + qtok, mask=qvalid, other=0.0)
    dl = tl.load(Delta + (bt * heads + hd) * N + qtok, mask=qvalid, other=0.0)
    ka0, ka1 = G.candidate_range(a_lo, a_hi, LY, AP0, AX0)
    kb0, kb1 = G.candidate_range(b_lo, b_hi, LX, AP1, AX1)
    KB = kb1 - kb0
    total = (ka1 - ka0) * KB

    dq = tl.zeros((BLOCK_M, DP), tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    if HAS_BIAS:  # dS slot row of each query, and the query's part of the slot index
        srow = DSlot + ((bt * heads + hd) * N + qtok) * (SA * SB) - \
            S.slot_part(yi, xi, H, W, SA, SB, P0, P1, P2, P3, KIND, False)
    for start in range(0, total, BLOCK_N):
        yj, xj, ktok, kvalid = G.rect_points(start + offs_n, total, ka0, kb0, KB, c0, c1,
                                             H, W, P0, P1, P2, P3, KIND)
        k, v = G.load_pair(K + G.slice_offset(bt, hd, skb, skh), V + G.slice_offset(bt, hd, svb, svh),
                           skn, svn, ktok, kvalid, offs_d, dmask)
        p, vis, row = _probs(q, k, yi, xi, yj, xj, qvalid, kvalid, lse, Bias, hd, heads, scale,
                             H, W, P0, P1, P2, P3, B1, B2, KIND, HAS_BIAS, PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = tl.where(vis, p * (dp - dl[:, None]), 0.0)
        if HAS_BIAS:  # pass 1 of the dbias reduction: each visible pair's slot, written once
            kpart = S.slot_part(yj, xj, H, W, SA, SB, P0, P1, P2, P3, KIND, True)
            tl.store(srow[:, None] + kpart[None, :], ds, mask=vis)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)

    tl.store(DQ + G.slice_offset(bt, hd, sqgb, sqgh) + qtok[:, None] * sqgn + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


_dkdv = tuning.Launcher(dkdv_kernel)
_dq = tuning.Launcher(dq_kernel)


def _s3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias):
    """Kernel-contract entry (see `_library`): writes dq, dk, dv; adds into the zeroed `dbias`."""
    B, h, N, d = q.shape
    if q.numel() == 0:
        return  # empty gradients; dbias stays zero
    dp = max(16, G.next_pow2(d))
    delta = torch.empty((B, h, N), dtype=torch.float32, device=q.device)
    blk = 16 if tuning.interpreting() else 64
    tuning.launch(delta_kernel, (triton.cdiv(N, blk), h, B), out, dout, delta, *_s3(out), *_s3(dout),
                  h, N, d, DP=dp, BLOCK=blk)
    n_planes, (LYM, LXM), TX = G.plane_plan(geom)
    has_bias = bias is not None
    consts = dict(KIND=geom.kind, HAS_BIAS=has_bias, DP=dp, PREC=tuning.dot_precision(q.dtype))
    geo = (geom.H, geom.W, *geom.p, *geom.bias_hw)
    bias_arg = bias if has_bias else lse  # never read without bias
    elt = q.element_size()
    strides = (*_s3(q), *_s3(k), *_s3(v), *_s3(dout))
    bh = G.next_pow2(B * h)  # autotune key: how many (batch, head) slices share the GPU

    AX0, AX1 = G.kind_axes(geom.kind, backward=True)
    AP0, AP1 = G.axis_params(geom, backward=True)
    grid_k = lambda META: (n_planes * G.tiles_per_plane(geom, META["BLOCK_N"]), h, B)  # noqa: E731
    _dkdv(grid_k, dp, elt, q, k, v, bias_arg, dout, lse, delta, dk, dv, *strides, *_s3(dk), *_s3(dv),
          h, d, float(scale), LYM, LXM, TX, *geo, AP0, AP1, bh, AX0=AX0, AX1=AX1, **consts)

    AX0, AX1 = G.kind_axes(geom.kind, backward=False)
    AP0, AP1 = G.axis_params(geom, backward=False)
    sa, sb = S.slot_grid(geom)
    # With a bias, the batch goes in chunks whose per-slot dS scratch fits the budget; each chunk
    # is reduced into dbias before the next (bias_grad: deterministic, bounded memory).
    chunk = bias_grad.batch_chunk(B, h, N, sa * sb) if has_bias else B
    dslot = bias_grad.slot_scratch(chunk, h, geom, q.device) if has_bias else delta  # unused w/o bias
    for b0 in range(0, B, chunk):
        nb = min(chunk, B - b0)
        part = (lambda t: t) if nb == B else (lambda t, b0=b0, nb=nb: t[b0:b0 + nb])
        grid_q = lambda META, nb=nb: (n_planes * G.tiles_per_plane(geom, META["BLOCK_M"]), h, nb)  # noqa: E731
        _dq(grid_q, dp, elt, part(q), part(k), part(v), bias_arg, part(dout), part(lse), part(delta),
            part(dq), dslot, *strides, *_s3(dq), h, d, float(scale), LYM, LXM, TX, *geo, AP0, AP1,
            bh, sa, sb, AX0=AX0, AX1=AX1, **consts)
        if has_bias:
            bias_grad.reduce_into(dslot, nb, geom, dbias)
