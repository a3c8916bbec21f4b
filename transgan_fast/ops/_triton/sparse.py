"""Sparse-logit primitives in Triton: `qk`, `av` and `av`-transpose over each query's K neighbour
slots (the layout of `ops/neighbours.py`), for every geometry kind.

- `sparse_qk(a, b)[.., i, s]  = a_i . b_key(i,s)`   (0 at empty slots)
- `sparse_av(p, v)[.., i, :]  = sum_s p[i, s] v_key(i,s)`
- `sparse_avt(p, x)[.., m, :] = sum_{(i,s): key(i,s)=m} p[i, s] x_i`

No index tensor is materialised: `slot_key` computes key(i, s) from the geometry, `key_slot` its
inverse (the slot of query i that holds key m). The transpose is a gather, not a scatter: each
program owns a block of keys m and walks the queries that can see them - for GRID, BAND and CLIP
the neighbourhood relation is symmetric, so those are m's own slots; for NBHD the inverse
neighbourhood is an exact range per axis (`inverse_range`). So every output row is written once,
in a fixed order (deterministic, no atomics). Products are gathered elementwise and summed in
float32; an empty slot is never loaded, so a NaN elsewhere reaches exactly the outputs that read it.

Slot grid `(SA, SB)`, `K = SA * SB`: slot `s` is row `s // SB`, column `s % SB` of the
neighbourhood (GRID `(M1, M2)`, BAND `(1, 2w'+1)`, CLIP `(2r1'+1, 2r2'+1)`, NBHD `(k1, k2)`).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..geometry import AttnGeometry
from ..neighbours import num_slots, slot_grid
from . import _geom as G
from . import tuning


@triton.jit
def slot_key(i, s, H, W, SA, SB, P0, P1, P2, P3, KIND: tl.constexpr):
    """Key token of slot `s` of query `i` (broadcasting shapes) and whether that slot is filled;
    the key is 0 where it is not, so addresses built from it stay in bounds."""
    N = H * W
    y = i // W
    x = i % W
    a = s // SB
    b = s % SB
    if KIND == 0:  # GRID: the query's window in rolled coordinates, same wrap region only
        M1, M2 = G.grid_window(P0, P1, P2, P3)
        s1, s2 = G.grid_shift(P0, P1, P2, P3)
        ry = (y - s1 + H) % H
        rx = (x - s2 + W) % W
        ky = (ry // M1) * M1 + a
        kx = (rx // M2) * M2 + b
        ok = (ky < H) & (kx < W) & ((ky >= H - s1) == (ry >= H - s1))
        ok = ok & ((kx >= W - s2) == (rx >= W - s2))
        key = ((ky + s1) % H) * W + (kx + s2) % W
    elif KIND == 1:  # BAND: flat keys i - w' .. i + w'
        key = i - (SB - 1) // 2 + b
        ok = (key >= 0) & (key < N)
    elif KIND == 2:  # CLIP: (y - r1' + a, x - r2' + b), cut at the border
        ky = y - (SA - 1) // 2 + a
        kx = x - (SB - 1) // 2 + b
        ok = (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
        key = ky * W + kx
    else:  # NBHD: NATTEN's window, never empty
        k1, k2 = G.nbhd_kernel(P0, P1, P2, P3)
        d1, d2 = G.nbhd_dilation(P0, P1, P2, P3)
        ky = (G.nbhd_start(y, H, k1, d1) + a) * d1 + y % d1
        kx = (G.nbhd_start(x, W, k2, d2) + b) * d2 + x % d2
        ok = ky >= 0
        key = ky * W + kx
    ok = ok & (s < SA * SB) & (i < N)
    return tl.where(ok, key, 0), ok


@triton.jit
def key_slot(i, m, H, W, SA, SB, P0, P1, P2, P3, KIND: tl.constexpr):
    """Slot of query `i` that holds key `m`, for pairs where `i` sees `m`, and (NBHD only, where
    the caller cannot know it) whether `m` lies in `i`'s window; tokens must be valid."""
    y = i // W
    x = i % W
    ym = m // W
    xm = m % W
    if KIND == 0:
        M1, M2 = G.grid_window(P0, P1, P2, P3)
        s1, s2 = G.grid_shift(P0, P1, P2, P3)
        ry = (y - s1 + H) % H
        rx = (x - s2 + W) % W
        s = (((ym - s1 + H) % H) - (ry // M1) * M1) * SB + ((xm - s2 + W) % W) - (rx // M2) * M2
        ok = s >= 0
    elif KIND == 1:
        s = m - i + (SB - 1) // 2
        ok = s >= 0
    elif KIND == 2:
        s = (ym - y + (SA - 1) // 2) * SB + (xm - x + (SB - 1) // 2)
        ok = s >= 0
    else:
        k1, k2 = G.nbhd_kernel(P0, P1, P2, P3)
        d1, d2 = G.nbhd_dilation(P0, P1, P2, P3)
        a = ym // d1 - G.nbhd_start(y, H, k1, d1)
        b = xm // d2 - G.nbhd_start(x, W, k2, d2)
        s = a * SB + b
        ok = (a >= 0) & (a < SA) & (b >= 0) & (b < SB)
    return s, ok


@triton.jit
def slot_part(y, x, H, W, SA, SB, P0, P1, P2, P3, KIND: tl.constexpr, IS_KEY: tl.constexpr):
    """`key_slot` split for tiles: the slot of a visible pair is `part(key) - part(query)`, so a
    (queries x keys) tile costs one subtraction per pair (`(y, x)`: map coordinates)."""
    if KIND == 0:  # in-window position of the rolled key; the query plays no part
        if IS_KEY:
            M1, M2 = G.grid_window(P0, P1, P2, P3)
            s1, s2 = G.grid_shift(P0, P1, P2, P3)
            part = (((y - s1 + H) % H) % M1) * SB + ((x - s2 + W) % W) % M2
        else:
            part = y * 0
    elif KIND == 1:
        part = y * W + x
        if not IS_KEY:
            part -= (SB - 1) // 2
    elif KIND == 2:
        part = y * SB + x
        if not IS_KEY:
            part -= ((SA - 1) // 2) * SB + (SB - 1) // 2
    else:
        k1, k2 = G.nbhd_kernel(P0, P1, P2, P3)
        d1, d2 = G.nbhd_dilation(P0, P1, P2, P3)
        if IS_KEY:
            part = (y // d1) * SB + x // d2
        else:
            part = G.nbhd_start(y, H, k1, d1) * SB + G.nbhd_start(x, W, k2, d2)
    return part


@triton.jit
def inverse_range(pos, L, k, d):
    """NATTEN, one axis: the queries whose window holds key `pos` are `(lo + t) * d + pos % d` for
    `0 <= t < count` (group units; windows start at clamp(ig - k//2, 0, Lg - k), non-decreasing)."""
    g = pos % d
    gm = pos // d
    Lg = (L - g + d - 1) // d
    lo = tl.where(gm - k + 1 <= 0, 0, gm - k + 1 + k // 2)
    hi = tl.where(gm >= Lg - k, Lg - 1, gm + k // 2)
    return lo, hi - lo + 1, g


@triton.jit
def sparse_qk_kernel(A, Bm, Out, sab, sah, san, sbb, sbh, sbn, heads, d, H, W, SA, SB,
                     P0, P1, P2, P3, KIND: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1).to(tl.int64)
    bt = tl.program_id(2).to(tl.int64)
    N = H * W
    K = SA * SB
    n_sblk = tl.cdiv(K, BLOCK_S)
    i = (pid // n_sblk) * BLOCK_M + tl.arange(0, BLOCK_M)                 # queries (BLOCK_M,)
    s = (pid % n_sblk) * BLOCK_S + tl.arange(0, BLOCK_S)                  # slots (BLOCK_S,)
    key, ok = slot_key(i[:, None], s[None, :], H, W, SA, SB, P0, P1, P2, P3, KIND)
    Ab = A + bt * sab + hd * sah + i.to(tl.int64)[:, None] * san          # (BLOCK_M, 1)
    Bb = Bm + bt * sbb + hd * sbh + key.to(tl.int64)[:, :, None] * sbn    # (BLOCK_M, BLOCK_S, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_S), tl.float32)
    for d0 in range(0, d, BLOCK_D):
        c = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(Ab + c[None, :], mask=(i < N)[:, None] & (c < d)[None, :], other=0.0)
        b = tl.load(Bb + c[None, None, :], mask=ok[:, :, None] & (c < d)[None, None, :], other=0.0)
        acc += tl.sum(a.to(tl.float32)[:, None, :] * b.to(tl.float32), 2)
    acc = tl.where(ok, acc, 0.0)
    base = (bt * heads + hd) * N * K
    tl.store(Out + base + i.to(tl.int64)[:, None] * K + s[None, :], acc.to(Out.dtype.element_ty),
             mask=(i < N)[:, None] & (s < K)[None, :])


@triton.jit
def sparse_av_kernel(Pr, V, Out, svb, svh, svn, heads, d, H, W, SA, SB, P0, P1, P2, P3,
                     KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1).to(tl.int64)
    bt = tl.program_id(2).to(tl.int64)
    N = H * W
    K = SA * SB
    n_dblk = tl.cdiv(d, BLOCK_D)
    i = (pid // n_dblk) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = c < d
    prow = Pr + ((bt * heads + hd) * N + i.to(tl.int64)[:, None]) * K    # (BLOCK_M, 1)
    Vb = V + bt * svb + hd * svh
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for s0 in range(0, K, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        key, ok = slot_key(i[:, None], s[None, :], H, W, SA, SB, P0, P1, P2, P3, KIND)
        p = tl.load(prow + s[None, :], mask=ok, other=0.0)
        v = tl.load(Vb + key.to(tl.int64)[:, :, None] * svn + c[None, None, :],
                    mask=ok[:, :, None] & cmask[None, None, :], other=0.0)
        acc += tl.sum(p.to(tl.float32)[:, :, None] * v.to(tl.float32), 1)
    tl.store(Out + ((bt * heads + hd) * N + i.to(tl.int64)[:, None]) * d + c[None, :],
             acc.to(Out.dtype.element_ty), mask=(i < N)[:, None] & cmask[None, :])


@triton.jit
def _avt_add(acc, qi, qok, m, Pr, Xb, sxn, c, cmask, K, H, W, SA, SB, P0, P1, P2, P3,
             KIND: tl.constexpr):
    """acc[m] += sum over candidate queries qi (BLOCK_M, BLOCK_S) of p[qi, slot(qi, m)] x[qi]."""
    s, sok = key_slot(qi, m[:, None], H, W, SA, SB, P0, P1, P2, P3, KIND)
    ok = qok & sok
    p = tl.load(Pr + tl.where(ok, qi, 0).to(tl.int64) * K + tl.where(ok, s, 0), mask=ok, other=0.0)
    x = tl.load(Xb + tl.where(ok, qi, 0).to(tl.int64)[:, :, None] * sxn + c[None, None, :],
                mask=ok[:, :, None] & cmask[None, None, :], other=0.0)
    return acc + tl.sum(p.to(tl.float32)[:, :, None] * x.to(tl.float32), 1)


@triton.jit
def sparse_avt_kernel(Pr, X, Out, sxb, sxh, sxn, heads, d, H, W, SA, SB, P0, P1, P2, P3,
                      KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    hd = tl.program_id(1).to(tl.int64)
    bt = tl.program_id(2).to(tl.int64)
    N = H * W
    K = SA * SB
    n_dblk = tl.cdiv(d, BLOCK_D)
    m = (pid // n_dblk) * BLOCK_M + tl.arange(0, BLOCK_M)                 # keys (BLOCK_M,)
    mvalid = m < N
    c = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = c < d
    Pb = Pr + (bt * heads + hd) * N * K
    Xb = X + bt * sxb + hd * sxh
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    if KIND == 3:
        # Queries seeing m: a rectangle of its dilation group, exact per axis; walk the block's
        # largest rectangle, masked per key.
        ym = tl.where(mvalid, m // W, 0)
        xm = tl.where(mvalid, m % W, 0)
        k1, k2 = G.nbhd_kernel(P0, P1, P2, P3)
        d1, d2 = G.nbhd_dilation(P0, P1, P2, P3)
        ly, ny, gy = inverse_range(ym, H, k1, d1)
        lx, nx, gx = inverse_range(xm, W, k2, d2)
        ny = tl.where(mvalid, ny, 0)
        CX = tl.max(nx, 0)
        total = tl.max(ny, 0) * CX
        for t0 in range(0, total, BLOCK_S):
            t = t0 + tl.arange(0, BLOCK_S)
            ta = t // CX
            tb = t % CX
            qok = (ta[None, :] < ny[:, None]) & (tb[None, :] < nx[:, None])
            qi = ((ly[:, None] + ta[None, :]) * d1 + gy[:, None]) * W + \
                (lx[:, None] + tb[None, :]) * d2 + gx[:, None]
            acc = _avt_add(acc, qi, qok, m, Pb, Xb, sxn, c, cmask, K, H, W, SA, SB,
                           P0, P1, P2, P3, KIND)
    else:
        # Symmetric neighbourhoods: the queries that see m are the keys of m's own slots.
        for s0 in range(0, K, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            qi, qok = slot_key(m[:, None], s[None, :], H, W, SA, SB, P0, P1, P2, P3, KIND)
            acc = _avt_add(acc, qi, qok, m, Pb, Xb, sxn, c, cmask, K, H, W, SA, SB,
                           P0, P1, P2, P3, KIND)
    tl.store(Out + ((bt * heads + hd) * N + m.to(tl.int64)[:, None]) * d + c[None, :],
             acc.to(Out.dtype.element_ty), mask=mvalid[:, None] & cmask[None, :])


# ----------------------------------------------------------------------------------------------
# Host side.

# GPU (BLOCK_M, BLOCK_S, BLOCK_D) per kernel: 2048-element gathered tiles on 4 warps. Twice that
# spills on sm_80 (the 3-D pointer tiles are 64-bit); `scripts/triton_aot_check.py` compiles these.
GPU_BLOCKS = {"qk": (16, 16, 8), "av": (16, 8, 16), "avt": (16, 8, 16)}


def _blocks(op: str, K: int, d: int):
    """(BLOCK_M, BLOCK_S, BLOCK_D): a (BLOCK_M, BLOCK_S, BLOCK_D) gathered tile per step (the
    interpreter prefers few large programs)."""
    bm, bs, bd = (64, 32, 32) if tuning.interpreting() else GPU_BLOCKS[op]
    return bm, min(bs, G.next_pow2(K)), min(bd, G.next_pow2(d))


def _geo_args(geom: AttnGeometry):
    sa, sb = slot_grid(geom)
    return (geom.H, geom.W, sa, sb, *geom.p)  # the packed parameters (P0..P3, see _geom.py)


def _s3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def sparse_qk(a, b, geom, out):
    """Kernel-contract entry: out `(B, h, N, K)` contiguous = a_i . b_key(i,s), 0 at empty slots."""
    B, h, N, d = a.shape
    K = num_slots(geom)
    bm, bs, bd = _blocks("qk", K, d)
    grid = (triton.cdiv(N, bm) * triton.cdiv(K, bs), h, B)
    tuning.launch(sparse_qk_kernel, grid, a, b, out, *_s3(a), *_s3(b), h, d, *_geo_args(geom),
                  KIND=geom.kind, BLOCK_M=bm, BLOCK_S=bs, BLOCK_D=bd)


def sparse_av(p, v, geom, out):
    """Kernel-contract entry: out `(B, h, N, d)` contiguous = sum_s p[i, s] v_key(i,s)."""
    B, h, N, d = v.shape
    bm, bs, bd = _blocks("av", num_slots(geom), d)
    grid = (triton.cdiv(N, bm) * triton.cdiv(d, bd), h, B)
    tuning.launch(sparse_av_kernel, grid, p, v, out, *_s3(v), h, d, *_geo_args(geom),
                  KIND=geom.kind, BLOCK_M=bm, BLOCK_S=bs, BLOCK_D=bd)


def sparse_avt(p, x, geom, out):
    """Kernel-contract entry: out `(B, h, N, d)` contiguous; row m = sum of p[i, s] x_i over the
    (i, s) whose key is m (every row written, fixed summation order)."""
    B, h, N, d = x.shape
    bm, bs, bd = _blocks("avt", num_slots(geom), d)
    grid = (triton.cdiv(N, bm) * triton.cdiv(d, bd), h, B)
    tuning.launch(sparse_avt_kernel, grid, p, x, out, *_s3(x), h, d, *_geo_args(geom),
                  KIND=geom.kind, BLOCK_M=bm, BLOCK_S=bs, BLOCK_D=bd)
