"""Drop-in neighbourhood attention (NATTEN's `NeighborhoodAttention2D`) on `local_attention`.

Same constructor arguments, parameter names and shapes as NATTEN's module (`qkv`, optional `rpb`
of shape `(heads, 2k-1, 2k-1)`, `proj`), same channels-last input `(B, H, W, C)`, and the same
semantics as `natten.na2d`: every query sees exactly `k x k` keys, the window shifted inward at
the borders, with optional dilation. Runs `local_attention(mode="window2d", border="shift")`.

NATTEN's `rpb[h, a, b]` is indexed by key minus query (`a = (yk - yq)/d + k - 1`); our tables are
indexed by query minus key, so the forward reads `rpb` flipped on both spatial axes (a view, and
the gradient flows back into `rpb` in NATTEN's layout).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..ops import attention, local_geometry
from .attention import trunc_normal_

__all__ = ["NeighborhoodAttention2D", "natten_rpb_to_table"]


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def natten_rpb_to_table(rpb: torch.Tensor) -> torch.Tensor:
    """NATTEN `(heads, 2k1-1, 2k2-1)` (key minus query) -> our `((2k1-1)(2k2-1), heads)` table."""
    h = rpb.shape[0]
    return rpb.flip(1, 2).permute(1, 2, 0).reshape(-1, h)


class NeighborhoodAttention2D(nn.Module):
    """2-D neighbourhood attention, NATTEN-compatible.

    Args:
        dim: channels. num_heads: heads. kernel_size: odd `k` or `(k1, k2)`.
        dilation: `d` or `(d1, d2)` (`k * d <= map side`). rel_pos_bias: learn NATTEN's `rpb`.
        qkv_bias, qk_scale, attn_drop, proj_drop: as NATTEN (`attn_drop` must be 0: the kernels
            have no dropout on attention weights). is_causal: must be False.
        backend: passed to the ops.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size, dilation=1, is_causal: bool = False,
                 rel_pos_bias: bool = False, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"NeighborhoodAttention2D: dim={dim} must be divisible by num_heads={num_heads}")
        if is_causal:
            raise ValueError("NeighborhoodAttention2D: is_causal=True is not supported")
        if attn_drop:
            raise ValueError(f"NeighborhoodAttention2D: attn_drop must be 0 (no dropout inside the "
                             f"fused kernels); got {attn_drop}")
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.head_dim = dim // num_heads
        self.kernel_size, self.dilation = _pair(kernel_size), _pair(dilation)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"NeighborhoodAttention2D: kernel_size must be odd; got {kernel_size}")
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            k1, k2 = self.kernel_size
            self.rpb = nn.Parameter(trunc_normal_(torch.zeros(num_heads, 2 * k1 - 1, 2 * k2 - 1)))
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x (B, H, W, C)` -> `(B, H, W, C)`."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"NeighborhoodAttention2D: x must be (B, H, W, {self.dim}); got {tuple(x.shape)}")
        B, H, W, C = x.shape
        h, d, N = self.num_heads, self.head_dim, H * W
        geom = local_geometry((H, W), "window2d", self.kernel_size, "shift", self.dilation,
                              op="NeighborhoodAttention2D")
        # Strided (B, h, N, d) views into the packed projection.
        q, k, v = self.qkv(x).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4)   # 3 x (B, h, N, d)
        table = natten_rpb_to_table(self.rpb) if self.rpb is not None else None
        o = attention(q, k, v, geom, table, self.scale, backend=self.backend)  # (B, h, N, d)
        o = o.transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(o))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rel_pos_bias={self.rpb is not None}, backend={self.backend!r}")
