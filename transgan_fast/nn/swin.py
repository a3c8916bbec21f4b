"""Drop-in window attention for Swin-style ViT GANs, on `grid_attention`'s geometry.

- `WindowAttention`: the constructor, parameter names and state-dict layout of the common Swin
  `WindowAttention` (`qkv`, `proj`, `relative_position_bias_table` `((2Wh-1)(2Ww-1), heads)`, buffer
  `relative_position_index`), so checkpoints load unchanged. `forward(x, mask)` takes Swin's
  windowed layout `(B*nW, Wh*Ww, C)`; `forward_map(x, hw, shift)` takes the whole map
  `(B, H*W, C)` and runs shifted windows with the region mask inside the kernel: no roll, no
  partition, no reverse copies.
- `DoubleWindowAttention`: StyleSwin's double attention: half the heads on regular windows, half on
  windows shifted by half a window, one shared qkv and output projection.

Our relative-bias index is Swin's: query minus key, `(dy + Wh - 1) * (2Ww - 1) + (dx + Ww - 1)`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..ops import attention, attention_qkv, grid_geometry
from .attention import trunc_normal_

__all__ = ["WindowAttention", "DoubleWindowAttention", "swin_relative_position_index"]


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def swin_relative_position_index(window) -> torch.Tensor:
    """`(Wh*Ww, Wh*Ww)` table rows: query minus key offset inside a window, Swin's layout."""
    Wh, Ww = _pair(window)
    y = torch.arange(Wh).repeat_interleave(Ww)                                # (L,) row of token
    x = torch.arange(Ww).repeat(Wh)                                           # (L,) column
    dy = y[:, None] - y[None, :] + Wh - 1                                     # (L, L)
    dx = x[:, None] - x[None, :] + Ww - 1
    return dy * (2 * Ww - 1) + dx


class _BiasIndexMixin:
    """`relative_position_index` is in the state dict when persistent (original Swin) and not
    when non-persistent (timm); checkpoints load either way: a missing index is rebuilt, a present
    one must be Swin's."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "relative_position_index"
        persistent = "relative_position_index" not in self._non_persistent_buffers_set
        if key not in state_dict:
            if persistent:
                state_dict[key] = self.relative_position_index
        else:
            if not torch.equal(state_dict[key].to(self.relative_position_index), self.relative_position_index):
                raise ValueError(f"{type(self).__name__}: checkpoint {key} is not Swin's "
                                 f"query-minus-key index for window {self.window_size}")
            if not persistent:
                del state_dict[key]  # (load_state_dict passes a copy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class WindowAttention(_BiasIndexMixin, nn.Module):
    """Swin's window multi-head self-attention with relative position bias, on the fused ops.

    Args:
        dim: channels. window_size: `Wh` or `(Wh, Ww)`. num_heads: heads.
        qkv_bias: bias in the qkv projection. qk_scale: logit scale (default `head_dim ** -0.5`).
        attn_drop: dropout on attention weights; while training with `attn_drop > 0` the layer
            runs the unfused path (the kernels have no dropout). proj_drop: dropout after `proj`.
        backend: passed to the ops.
        persistent_index: keep `relative_position_index` in the state dict (original Swin) or not
            (timm); `replace_attention` copies the choice of the module it replaces.
    """

    def __init__(self, dim: int, window_size, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 backend: str = "auto", persistent_index: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.window_size = _pair(window_size)
        Wh, Ww = self.window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            trunc_normal_(torch.zeros((2 * Wh - 1) * (2 * Ww - 1), num_heads)))
        self.register_buffer("relative_position_index", swin_relative_position_index((Wh, Ww)),
                             persistent=persistent_index)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _dense_bias(self) -> torch.Tensor:
        L = self.window_size[0] * self.window_size[1]
        table = self.relative_position_bias_table
        return table[self.relative_position_index.reshape(-1)].reshape(L, L, -1).permute(2, 0, 1)  # (h, L, L)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Swin layout: `x (B*nW, Wh*Ww, C)`; `mask (nW, L, L)` of 0 / large negative values
        (Swin's shifted-window mask) or None. Returns `(B*nW, Wh*Ww, C)`.

        With a mask (or attention dropout while training) this runs the unfused path, because the
        mask is an arbitrary tensor; `forward_map` is the fused route for shifted windows."""
        Bw, L, C = x.shape
        Wh, Ww = self.window_size
        if L != Wh * Ww or C != self.dim:
            raise ValueError(f"WindowAttention: x must be (B*nW, {Wh * Ww}, {self.dim}); got {tuple(x.shape)}")
        qkv = self.qkv(x)                                                   # (Bw, L, 3C)
        if mask is None and not (self.training and self.attn_drop.p > 0):
            geom = grid_geometry((Wh, Ww), (Wh, Ww), op="WindowAttention")
            o = attention_qkv(qkv, self.num_heads, geom, self.relative_position_bias_table,
                              scale=self.scale, backend=self.backend)       # (Bw, L, C)
        else:
            h, d = self.num_heads, C // self.num_heads
            q, k, v = qkv.reshape(Bw, L, 3, h, d).permute(2, 0, 3, 1, 4)    # 3 x (Bw, h, L, d)
            logits = (q * self.scale) @ k.transpose(-2, -1) + self._dense_bias()  # (Bw, h, L, L)
            if mask is not None:
                nW = mask.shape[0]
                if Bw % nW:
                    raise ValueError(f"WindowAttention: batch*windows {Bw} is not a multiple of the "
                                     f"mask's {nW} windows")
                logits = (logits.view(Bw // nW, nW, h, L, L) + mask[None, :, None]).view(Bw, h, L, L)
            o = (self.attn_drop(logits.softmax(-1)) @ v).transpose(1, 2).reshape(Bw, L, C)
        return self.proj_drop(self.proj(o))

    def forward_map(self, x: torch.Tensor, hw, shift=(0, 0)) -> torch.Tensor:
        """Fused path on the whole map: `x (B, H*W, C)` in row-major token order, windows of
        `window_size`, cyclic `shift` with Swin's region mask; returns `(B, H*W, C)` in the same
        order. Equals roll(-shift) -> partition -> `forward(., mask)` -> reverse -> roll(shift)."""
        geom = grid_geometry(hw, self.window_size, shift, op="WindowAttention.forward_map")
        o = attention_qkv(self.qkv(x), self.num_heads, geom, self.relative_position_bias_table,
                          scale=self.scale, backend=self.backend)           # (B, N, C)
        return self.proj_drop(self.proj(o))

    def set_window_size(self, window_size) -> None:
        """timm's hook (called by `SwinTransformer.set_input_size`): a new window size resizes
        the bias table with timm's own interpolation, so a swapped model matches an unswapped one.
        An unchanged window (a new image size only) changes nothing."""
        window_size = _pair(window_size)
        if window_size == self.window_size:
            return
        try:
            from timm.layers import resize_rel_pos_bias_table
        except ImportError:
            raise RuntimeError(f"WindowAttention.set_window_size: changing the window from "
                               f"{self.window_size} to {window_size} resizes the relative-bias "
                               f"table with timm's interpolation, and timm is not installed") from None
        Wh, Ww = window_size
        table = self.relative_position_bias_table
        with torch.no_grad():
            resized = resize_rel_pos_bias_table(table, new_window_size=window_size,
                                                new_bias_shape=((2 * Wh - 1) * (2 * Ww - 1), self.num_heads),
                                                old_window_size=self.window_size)
        self.relative_position_bias_table = nn.Parameter(resized, requires_grad=table.requires_grad)
        persistent = "relative_position_index" not in self._non_persistent_buffers_set
        self.register_buffer("relative_position_index",
                             swin_relative_position_index(window_size).to(self.relative_position_index.device),
                             persistent=persistent)
        self.window_size = window_size

    def init_non_persistent_buffers(self) -> None:
        """timm's hook after meta-device construction: rebuild `relative_position_index`."""
        self.relative_position_index.copy_(swin_relative_position_index(self.window_size))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, backend={self.backend!r}"


class _HalfWindowBias(_BiasIndexMixin, nn.Module):
    """One half of StyleSwin's double attention: just its bias table and index."""

    def __init__(self, window_size, num_heads: int):
        super().__init__()
        self.window_size = _pair(window_size)
        Wh, Ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            trunc_normal_(torch.zeros((2 * Wh - 1) * (2 * Ww - 1), num_heads)))
        self.register_buffer("relative_position_index", swin_relative_position_index((Wh, Ww)))


class DoubleWindowAttention(nn.Module):
    """StyleSwin's double attention: heads split in two halves; the first attends inside regular
    windows, the second inside windows shifted by `shift_size` (default half a window); the two
    outputs are concatenated channel-wise before the shared output projection.

    Parameters: `qkv Linear(dim, 3*dim)`, `proj Linear(dim, dim)`, `attn[0|1]` each holding a
    `relative_position_bias_table` for `num_heads // 2` heads. `forward(x, hw)`: `x (B, H*W, C)`.
    When the map is no larger than the window, the window shrinks to the map and the shift is 0
    (as in StyleSwin).
    """

    def __init__(self, dim: int, window_size, num_heads: int, shift_size=None, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, input_resolution=None, backend: str = "auto"):
        super().__init__()
        if num_heads % 2 or dim % num_heads:
            raise ValueError(f"DoubleWindowAttention: num_heads={num_heads} must be even and divide "
                             f"dim={dim}")
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.window_size = _pair(window_size)
        if input_resolution is not None and min(_pair(input_resolution)) <= min(self.window_size):
            # StyleSwin sizes the window (and its tables) to a map no larger than the window.
            self.window_size, shift_size = _pair(input_resolution), 0
        self.shift_size = (tuple(w // 2 for w in self.window_size) if shift_size is None
                           else _pair(shift_size))
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn = nn.ModuleList(_HalfWindowBias(self.window_size, num_heads // 2) for _ in range(2))

    def forward(self, x: torch.Tensor, hw) -> torch.Tensor:
        H, W = _pair(hw)
        B, N, C = x.shape
        if N != H * W or C != self.dim:
            raise ValueError(f"DoubleWindowAttention: x must be (B, {H * W}, {self.dim}) for hw={(H, W)}; "
                             f"got {tuple(x.shape)}")
        window, shift = self.window_size, self.shift_size
        if min(H, W) <= min(window):
            window, shift = (H, W), (0, 0)
        h2, d = self.num_heads // 2, C // self.num_heads
        # Strided (B, h/2, N, d) views into the packed projection: no copies.
        qkv = self.qkv(x).view(B, N, 3, 2, h2, d).permute(2, 3, 0, 4, 1, 5)  # (3, 2, B, h/2, N, d)
        outs = []
        for half, s in ((0, (0, 0)), (1, shift)):
            geom = grid_geometry((H, W), window, s, op="DoubleWindowAttention")
            table = self.attn[half].relative_position_bias_table
            if window != self.window_size:
                table = _crop_table(table, self.window_size, window)
            o = attention(qkv[0, half], qkv[1, half], qkv[2, half], geom, table, self.scale,
                          backend=self.backend)                              # (B, h/2, N, d)
            outs.append(o.transpose(1, 2).reshape(B, N, h2 * d))
        return self.proj(torch.cat(outs, dim=2))                            # (B, N, C)


def _crop_table(table: torch.Tensor, full: Sequence[int], small: Sequence[int]) -> torch.Tensor:
    """Rows of a `full`-window table for the offsets a smaller window can produce (same offsets,
    same learned values as Swin's dense gather with the full index would give)."""
    (F1, F2), (S1, S2) = full, small
    t = table.view(2 * F1 - 1, 2 * F2 - 1, -1)
    return t[F1 - S1:F1 + S1 - 1, F2 - S2:F2 + S2 - 1].reshape((2 * S1 - 1) * (2 * S2 - 1), -1)
