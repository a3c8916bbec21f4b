"""Sequence resampling ops: pixel (un)shuffle, bicubic upsampling, 2x2 pooling, pixel norm.

Token maps are `(B, N, C)` sequences of an `H x W` map in row-major order. Each op here is the
public function, its plain-PyTorch reference (`*_ref`, the ground truth, defined through the map
view and torch's own image ops) and dispatch to the fused backends. The linear ops' backward is
their adjoint op (StyleGAN's upfirdn2d trick), so gradients of every order come for free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _dispatch
from .geometry import _pair

__all__ = ["pixel_shuffle_seq", "pixel_unshuffle_seq", "bicubic_upsample_seq", "avg_pool_seq",
           "pixel_norm", "pixel_shuffle_seq_ref", "pixel_unshuffle_seq_ref",
           "bicubic_upsample_seq_ref", "avg_pool_seq_ref", "pixel_norm_ref"]

PIXEL_NORM_EPS = 1e-8


def _to_map(x, H, W):
    B, N, C = x.shape
    return x.transpose(1, 2).reshape(B, C, H, W)          # (B, C, H, W)


def _to_seq(m):
    B, C = m.shape[:2]
    return m.reshape(B, C, -1).transpose(1, 2)             # (B, H*W, C)


# ----------------------------------------------------------------------------------------------
# References.

def pixel_shuffle_seq_ref(x, hw, pos=None):
    """`nn.PixelShuffle(2)` on the map view: `(B, H*W, C)` -> `(B, 4*H*W, C/4)`, plus `pos`."""
    H, W = hw
    out = _to_seq(F.pixel_shuffle(_to_map(x, H, W), 2))
    return out if pos is None else out + pos


def pixel_unshuffle_seq_ref(x, hw):
    """`nn.PixelUnshuffle(2)` on the map view: `(B, H*W, C)` -> `(B, H*W/4, 4C)`; `hw` is the input map."""
    H, W = hw
    return _to_seq(F.pixel_unshuffle(_to_map(x, H, W), 2))


def bicubic_upsample_seq_ref(x, hw):
    """`F.interpolate(scale_factor=2, mode='bicubic', align_corners=False)` on the map view."""
    H, W = hw
    m = F.interpolate(_to_map(x, H, W), scale_factor=2, mode="bicubic", align_corners=False)
    return _to_seq(m)


def avg_pool_seq_ref(x, hw):
    """2x2 average pooling on the map view: `(B, H*W, C)` -> `(B, H*W/4, C)`."""
    H, W = hw
    return _to_seq(F.avg_pool2d(_to_map(x, H, W), 2))


def pixel_norm_ref(x):
    """TransGAN's modified normalisation: `x / sqrt(mean_c(x^2) + 1e-8)` per token (last dim)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + PIXEL_NORM_EPS)


# ----------------------------------------------------------------------------------------------
# Checking.

def _check_seq(op, x, hw, name="x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{op}: {name} must be 3-D (B, N, C); got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} must be floating point; got {x.dtype}")
    H, W = _pair(hw, "hw", op)
    if H < 1 or W < 1 or x.shape[1] != H * W:
        raise ValueError(f"{op}: {name} has N={x.shape[1]} tokens but hw={(H, W)} needs N = H*W = {H * W}")
    return H, W


def _check_even(op, H, W):
    if H % 2 or W % 2:
        raise ValueError(f"{op}: hw must be even on both axes for 2x2 resampling; got hw={(H, W)}")


# ----------------------------------------------------------------------------------------------
# Public ops.

def pixel_shuffle_seq(x, hw, pos=None, backend="auto"):
    """Pixel-shuffle upsampling of a token sequence, with an optional fused position-embedding add.

    Output channel `c` at sub-pixel `(i, j)` takes input channel `4c + 2i + j` at `(h, w)` and
    lands at `(2h+i, 2w+j)` (exactly `nn.PixelShuffle(2)` on the map view).

    Args:
        x: `(B, H*W, C)` with `C` divisible by 4.
        hw: input map `(H, W)`.
        pos: optional `(1 or B, 4*H*W, C/4)` added to the output (the next stage's embedding).
    Returns:
        `(B, 4*H*W, C/4)`.
    """
    op = "pixel_shuffle_seq"
    H, W = _check_seq(op, x, hw)
    B, N, C = x.shape
    if C % 4:
        raise ValueError(f"{op}: channels C={C} must be divisible by 4")
    if pos is not None:
        if not isinstance(pos, torch.Tensor) or pos.dim() != 3 or pos.shape[1:] != (4 * N, C // 4) \
                or pos.shape[0] not in (1, B):
            raise ValueError(f"{op}: pos must have shape (1 or {B}, {4 * N}, {C // 4}); got "
                             f"{getattr(pos, 'shape', type(pos).__name__)}")
        if pos.dtype != x.dtype:
            raise ValueError(f"{op}: pos dtype {pos.dtype} must equal x dtype {x.dtype}")
    b = _dispatch.resolve(op, backend, [("x", x), ("pos", pos)])
    if b == "ref":
        return pixel_shuffle_seq_ref(x, (H, W), pos)
    from . import _library
    return _library.pixel_shuffle_seq_op(x, H, W, pos, b)


def pixel_unshuffle_seq(x, hw, backend="auto"):
    """Inverse of `pixel_shuffle_seq`: `(B, H*W, C)` -> `(B, H*W/4, 4C)`; `hw` is the input map."""
    op = "pixel_unshuffle_seq"
    H, W = _check_seq(op, x, hw)
    _check_even(op, H, W)
    b = _dispatch.resolve(op, backend, [("x", x)])
    if b == "ref":
        return pixel_unshuffle_seq_ref(x, (H, W))
    from . import _library
    return _library.pixel_unshuffle_seq_op(x, H // 2, W // 2, b)


def bicubic_upsample_seq(x, hw, backend="auto"):
    """2x bicubic upsampling of a token sequence: `(B, H*W, C)` -> `(B, 4*H*W, C)`.

    Equal to `F.interpolate(scale_factor=2, mode="bicubic", align_corners=False)` on the map view.
    """
    op = "bicubic_upsample_seq"
    H, W = _check_seq(op, x, hw)
    b = _dispatch.resolve(op, backend, [("x", x)])
    if b == "ref":
        return bicubic_upsample_seq_ref(x, (H, W))
    from . import _library
    return _library.bicubic_upsample_seq_op(x, H, W, b)


def avg_pool_seq(x, hw, backend="auto"):
    """2x2 average pooling of a token sequence: `(B, H*W, C)` -> `(B, H*W/4, C)` (even H, W)."""
    op = "avg_pool_seq"
    H, W = _check_seq(op, x, hw)
    _check_even(op, H, W)
    b = _dispatch.resolve(op, backend, [("x", x)])
    if b == "ref":
        return avg_pool_seq_ref(x, (H, W))
    from . import _library
    return _library.avg_pool_seq_op(x, H, W, b)


def pixel_norm(x, backend="auto"):
    """`x / sqrt(mean(x^2, last dim) + 1e-8)`: TransGAN's parameter-free normalisation."""
    op = "pixel_norm"
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"{op}: x must be a tensor with at least 1 dim; got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{op}: x must be floating point; got dtype {x.dtype}")
    b = _dispatch.resolve(op, backend, [("x", x)])
    if b == "ref":
        return pixel_norm_ref(x)
    from . import _library
    return _library.pixel_norm_op(x, b)
