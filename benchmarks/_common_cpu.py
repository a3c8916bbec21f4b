"""Helpers for the CPU attention benchmarks: the peers (SDPA with a mask or dense bias,
compiled FlexAttention with a cached block mask, NATTEN), parity checks and recording.

Parity checks and recording come from `benchmarks/conftest.py`.
"""
from __future__ import annotations

import functools
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from transgan_fast.ops import _dispatch
from transgan_fast.ops.geometry import AttnGeometry, bias_index, visibility



def cpu_unavailable() -> Optional[str]:
    _dispatch._load_backend_modules()
    return _dispatch._why_not("cpu", "attention", torch.device("cpu"), torch.float32)


# Parity checks and recording are the shared ones (threads: TGF_BENCH_THREADS, default 2).
from conftest import check_parity, record  # noqa: E402,F401


def useful_flops(geom: AttnGeometry, B: int, heads: int, d: int) -> float:
    """4 * B * heads * d * (attended (query, key) pairs): docs/ops.md §7's count, forward only."""
    return 4.0 * B * heads * d * visibility(geom).sum().item()


# ---------------------------------------------------------------------------------------------
# Peers.

def dense_bias(geom: AttnGeometry, rel_bias: Optional[torch.Tensor], heads: int) -> torch.Tensor:
    """(heads, N, N) float additive mask: gathered rel_bias (or 0) where visible, -inf elsewhere."""
    vis = visibility(geom)
    base = (rel_bias[bias_index(geom)].permute(2, 0, 1) if rel_bias is not None   # (h, N, N)
            else torch.zeros(heads, geom.N, geom.N))
    return base.masked_fill(~vis, float("-inf")).contiguous()


def sdpa_peer(geom: AttnGeometry, rel_bias: Optional[torch.Tensor], heads: int):
    """SDPA with a boolean mask (no bias) or the dense (h, N, N) bias tensor."""
    mask = visibility(geom) if rel_bias is None else dense_bias(geom, rel_bias, heads)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def partition_peer(geom: AttnGeometry, rel_bias: Optional[torch.Tensor], heads: int):
    """Swin without a fused kernel: partition the map into its windows, SDPA on
    (B, heads * windows, M1 * M2, d) (the in-window bias as a dense (L, L) term per head), then
    the reverse permutation. Unshifted windows that tile the map only."""
    H, W = geom.H, geom.W
    (M1, M2), shift = geom.grid_window, geom.grid_shift
    if shift != (0, 0) or H % M1 or W % M2:
        raise ValueError(f"partition peer: needs unshifted windows that tile the map; got "
                         f"hw={(H, W)}, window={(M1, M2)}, shift={shift}")
    nh, nw, L = H // M1, W // M2, M1 * M2
    mask = None
    if rel_bias is not None:  # every window sees the same in-window offsets: (heads, L, L)
        first = torch.arange(L) // M2 * W + torch.arange(L) % M2      # window 0's tokens
        mask = rel_bias[bias_index(geom)[first][:, first]].permute(2, 0, 1)
        mask = mask[:, None].expand(heads, nh * nw, L, L).reshape(heads * nh * nw, L, L)

    def run(q, k, v):
        B, h, _, d = q.shape

        def part(x):  # (B, h, N, d) -> (B, h * windows, L, d)
            x = x.view(B, h, nh, M1, nw, M2, d).permute(0, 1, 2, 4, 3, 5, 6)
            return x.reshape(B, h * nh * nw, L, d)

        o = F.scaled_dot_product_attention(part(q), part(k), part(v), attn_mask=mask)
        o = o.view(B, h, nh, nw, M1, M2, d).permute(0, 1, 2, 4, 3, 5, 6)
        return o.reshape(B, h, H * W, d)

    return run


def flex_unavailable() -> Optional[str]:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as exc:
        return f"FlexAttention not importable: {exc}"
    return None


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_peer(geom: AttnGeometry, rel_bias: Optional[torch.Tensor], heads: int):
    """Compiled FlexAttention with a block mask built once from the geometry (cached) and the
    relative bias applied through score_mod from a dense (N, N) index."""
    from torch.nn.attention.flex_attention import create_block_mask
    vis = visibility(geom)
    block_mask = create_block_mask(lambda b, h, qi, kj: vis[qi, kj], None, None, geom.N, geom.N,
                                   device="cpu")
    flex = _compiled_flex()
    if rel_bias is None:
        return lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    idx = bias_index(geom)

    def score_mod(score, b, h, qi, kj):
        return score + rel_bias[idx[qi, kj], h]

    return lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


def natten_unavailable() -> Optional[str]:
    try:
        import natten  # noqa: F401
    except ImportError as exc:
        return f"NATTEN not installed ({exc})"
    return None


def skip_if(reason: Optional[str]) -> None:
    if reason:
        pytest.skip(reason)
