"""Deterministic relative-bias gradient for the Triton attention backward: a two-pass reduction.

Pass 1 (`attention_bwd.dq_kernel`): every visible (query i, key j) pair's dS goes, with a plain
store, to its neighbour slot `(g, head, i, slot(i, j))` of a float32 scratch laid out as
`ops/neighbours.py` (each element written exactly once, so no atomics).
Pass 2 (`bias_reduce_kernel`): one program per (block of table rows, head) sums, in a fixed order,
the slots whose pair has that table row: for row r, the offset (dy, dx) gives each query i at most
one key (bias offsets are injective per query: a table never clamps a visible pair), and its slot.
The batch is processed in chunks of `G` elements whose scratch fits `SCRATCH_BYTES`; chunks add into
`dbias` one after the other. Two runs give the same bits, as the CPU backward does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..geometry import AttnGeometry
from ..neighbours import num_slots
from . import _geom as G
from . import sparse as S
from . import tuning

# Upper bound on the pass-1 scratch (B elements of (heads, N, K) float32 each are split to fit).
SCRATCH_BYTES = 256 << 20
# (BLOCK_R, BLOCK_I) on a GPU: no spills on sm_80 (scripts/triton_aot_check.py).
GPU_BLOCKS = (32, 64)


@triton.jit
def offset_key(i, r, H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr):
    """Key token at bias-table row `r` from query `i` (broadcasting) and whether query i sees it
    (`geometry.bias_index` inverted: the offset is query minus key in the kind's bias coordinates)."""
    dy = r // (2 * B2 - 1) - (B1 - 1)
    dx = r % (2 * B2 - 1) - (B2 - 1)
    y = i // W
    x = i % W
    if KIND == 0:  # in-window offsets of rolled coordinates
        M1, M2 = G.grid_window(P0, P1, P2, P3)
        s1, s2 = G.grid_shift(P0, P1, P2, P3)
        ry = (y - s1 + H) % H
        rx = (x - s2 + W) % W
        kry = ry - dy
        krx = rx - dx
        ok = (kry >= 0) & (krx >= 0) & (kry < H) & (krx < W)
        kry = tl.where(ok, kry, 0)
        krx = tl.where(ok, krx, 0)
        ok = ok & (kry // M1 == ry // M1) & (krx // M2 == rx // M2)
        ky = (kry + s1) % H
        kx = (krx + s2) % W
    else:
        if KIND == 3:  # offsets in dilation-group units
            d1, d2 = G.nbhd_dilation(P0, P1, P2, P3)
            ky = y - dy * d1
            kx = x - dx * d2
        else:
            ky = y - dy
            kx = x - dx
        ok = (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
        ky = tl.where(ok, ky, 0)
        kx = tl.where(ok, kx, 0)
    ok = ok & (i < H * W) & G.visible(y, x, ky, kx, H, W, P0, P1, P2, P3, KIND)
    return tl.where(ok, ky * W + kx, 0), ok


@triton.jit
def bias_reduce_kernel(DSlot, DBias, n_batch, heads, rows, H, W, SA, SB, P0, P1, P2, P3, B1, B2,
                       KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    hd = tl.program_id(1).to(tl.int64)
    N = H * W
    K = SA * SB
    acc = tl.zeros((BLOCK_R,), tl.float32)
    for i0 in range(0, N, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        key, ok = offset_key(i[None, :], r[:, None], H, W, P0, P1, P2, P3, B1, B2, KIND)
        ok = ok & (r < rows)[:, None]
        s, _ = S.key_slot(tl.where(ok, i[None, :], 0), key, H, W, SA, SB, P0, P1, P2, P3, KIND)
        off = i.to(tl.int64)[None, :] * K + tl.where(ok, s, 0)
        for g in range(0, n_batch):
            base = (g * heads + hd) * N * K
            acc += tl.sum(tl.load(DSlot + base + off, mask=ok, other=0.0), 1)
    ptr = DBias + r.to(tl.int64) * heads + hd
    tl.store(ptr, tl.load(ptr, mask=r < rows, other=0.0) + acc, mask=r < rows)


def batch_chunk(B: int, heads: int, N: int, K: int, budget: int = None) -> int:
    """Batch elements per pass-1 chunk: as many as fit the scratch budget, at least one."""
    per = heads * N * K * 4
    return max(1, min(B, (SCRATCH_BYTES if budget is None else budget) // max(per, 1)))


def slot_scratch(chunk: int, heads: int, geom: AttnGeometry, device) -> torch.Tensor:
    """Pass-1 scratch `(chunk, heads, N, K)` float32; only visible slots are written and read."""
    return torch.empty((chunk, heads, geom.N, num_slots(geom)), dtype=torch.float32, device=device)


def reduce_into(dslot: torch.Tensor, n_batch: int, geom: AttnGeometry, dbias: torch.Tensor) -> None:
    """Pass 2: dbias `(rows, heads)` float32 += the table-row sums of the first `n_batch` scratch
    elements, in a fixed order."""
    heads = dslot.shape[1]
    rows = dbias.shape[0]
    sa, sb = S.slot_grid(geom)
    block_r, block_i = (32, 64) if tuning.interpreting() else GPU_BLOCKS
    grid = (triton.cdiv(rows, block_r), heads)
    tuning.launch(bias_reduce_kernel, grid, dslot, dbias, n_batch, heads, rows, geom.H, geom.W, sa, sb,
                  *geom.p, *geom.bias_hw, KIND=geom.kind, BLOCK_R=block_r, BLOCK_I=block_i)
