"""Fused `pixel_shuffle_seq` (+ optional position-embedding add) and its adjoint in Triton.

Shuffle: output channel `c` of token `(2h+i, 2w+j)` is input channel `4c + 2i + j` of token
`(h, w)` (exactly `nn.PixelShuffle(2)` on the map view), plus `pos` when given. Unshuffle is the
exact inverse (and the adjoint). One pass over the output; no intermediate permuted copies.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import tuning


@triton.jit
def shuffle_kernel(X, Pos, Out, H, W, Cq, sxb, sxn, spb, HAS_POS: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    bt = tl.program_id(2).to(tl.int64)
    T = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # high-res tokens (BLOCK_T,)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # output channels (BLOCK_C,)
    N4 = 4 * H * W
    Y = T // (2 * W)
    X2 = T % (2 * W)
    src_tok = (Y // 2) * W + X2 // 2
    sub = (Y % 2) * 2 + X2 % 2
    mask = (T < N4)[:, None] & (c < Cq)[None, :]
    val = tl.load(X + bt * sxb + src_tok[:, None].to(tl.int64) * sxn + 4 * c[None, :] + sub[:, None],
                  mask=mask, other=0.0)
    if HAS_POS:
        val += tl.load(Pos + bt * spb + T[:, None].to(tl.int64) * Cq + c[None, :], mask=mask, other=0.0)
    tl.store(Out + (bt * N4 + T[:, None]) * Cq + c[None, :], val, mask=mask)


@triton.jit
def unshuffle_kernel(G, Out, H, W, Cq, sgb, sgn, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    bt = tl.program_id(2).to(tl.int64)
    n = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)   # low-res tokens (BLOCK_T,)
    cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # low-res channels (BLOCK_C,)
    N = H * W
    C = 4 * Cq
    h = n // W
    w = n % W
    i = (cc // 2) % 2
    j = cc % 2
    src_tok = (2 * h[:, None] + i[None, :]) * (2 * W) + 2 * w[:, None] + j[None, :]
    mask = (n < N)[:, None] & (cc < C)[None, :]
    val = tl.load(G + bt * sgb + src_tok.to(tl.int64) * sgn + (cc // 4)[None, :], mask=mask, other=0.0)
    tl.store(Out + (bt * N + n[:, None]) * C + cc[None, :], val, mask=mask)


def _blocks(channels: int):
    bc = min(triton.next_power_of_2(max(channels, 1)), 64)
    bt = 16 if tuning.interpreting() else max(16, 4096 // bc)
    return bt, bc


def pixel_shuffle_seq(x, H, W, *rest):
    """Kernel-contract entry: `(x, H, W, out)` or `(x, H, W, pos, out)`; x `(B, HW, C)` ->
    out `(B, 4HW, C/4)` contiguous, `pos` `(1 or B, 4HW, C/4)` contiguous."""
    pos, out = rest if len(rest) == 2 else (None, rest[0])
    B, N, C = x.shape
    Cq = C // 4
    bt, bc = _blocks(Cq)
    spb = 0 if pos is None or pos.shape[0] == 1 else pos.stride(0)
    grid = (triton.cdiv(4 * N, bt), triton.cdiv(Cq, bc), B)
    tuning.launch(shuffle_kernel, grid, x, pos if pos is not None else x, out, H, W, Cq,
                  x.stride(0), x.stride(1), spb, HAS_POS=pos is not None, BLOCK_T=bt, BLOCK_C=bc)


def pixel_unshuffle_seq(g, H, W, out):
    """Kernel-contract entry: g `(B, 4HW, Cq)` (high-res map 2H x 2W) -> out `(B, HW, 4Cq)`."""
    B, N4, Cq = g.shape
    bt, bc = _blocks(4 * Cq)
    grid = (triton.cdiv(N4 // 4, bt), triton.cdiv(4 * Cq, bc), B)
    tuning.launch(unshuffle_kernel, grid, g, out, H, W, Cq, g.stride(0), g.stride(1),
                  BLOCK_T=bt, BLOCK_C=bc)
