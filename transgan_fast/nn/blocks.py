"""Transformer building blocks shared by TransGAN's generator and discriminator.

`PixelNorm` (the paper's "modified normalisation", on the fused op), the MLP, the pre-norm
`TransformerBlock` (optionally with celebahq256's residual cross-attention first) and `PatchEmbed`
(a strided conv that tokenises an image).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..ops import pixel_norm
from .attention import Attention, CrossAttention

__all__ = ["PixelNorm", "Mlp", "TransformerBlock", "PatchEmbed", "make_norm", "set_backend"]


class PixelNorm(nn.Module):
    """`x / sqrt(mean_c(x^2) + 1e-8)` over the last dim; no parameters."""

    def __init__(self, dim: Optional[int] = None, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, backend=self.backend)


def make_norm(kind: str, dim: int, backend: str = "auto") -> nn.Module:
    """`"ln"` -> LayerNorm(dim), `"pn"` -> PixelNorm."""
    if kind == "ln":
        return nn.LayerNorm(dim)
    if kind == "pn":
        return PixelNorm(dim, backend=backend)
    raise ValueError(f"make_norm: kind must be 'ln' (LayerNorm) or 'pn' (PixelNorm); got {kind!r}")


class Mlp(nn.Module):
    """`Linear(C, 4C) -> GELU (exact) -> Linear(4C, C)`."""

    def __init__(self, dim: int, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: `x += Attn(Norm(x))`, `x += MLP(Norm(x))`; no dropout, no drop-path.

    With `context_dim`, a residual `CrossAttention` to the latent tokens runs first (no norm
    before it), and `forward` takes the context: `block(x, context)`.
    The `attn` keyword arguments go to `Attention` (hw, window, rel_bias, noise, locality).
    `forward(x, context, mod)`: `mod = (scale, shift)`, each `(B, 1, C)`, modulates both norms'
    outputs as `Norm(x) * (1 + scale) + shift` (class-conditional normalisation; None: off).
    """

    def __init__(self, dim: int, hw, norm: str = "ln", heads: int = 4,
                 context_dim: Optional[int] = None, backend: str = "auto", **attn):
        super().__init__()
        self.cross = (CrossAttention(dim, context_dim, heads, backend=backend)
                      if context_dim is not None else None)
        self.norm1 = make_norm(norm, dim, backend)
        self.attn = Attention(dim, hw, heads=heads, backend=backend, **attn)
        self.norm2 = make_norm(norm, dim, backend)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mod: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if self.cross is not None:
            if context is None:
                raise ValueError("TransformerBlock: this block has cross-attention; pass context")
            x = x + self.cross(x, context)
        x = x + self.attn(_modulate(self.norm1(x), mod))
        return x + self.mlp(_modulate(self.norm2(x), mod))


def _modulate(h: torch.Tensor, mod: Optional[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`h * (1 + scale) + shift` for `mod = (scale, shift)`; `h` unchanged for None."""
    if mod is None:
        return h
    scale, shift = mod
    return h * (1 + scale) + shift


class PatchEmbed(nn.Module):
    """Strided conv tokeniser: `(B, 3, H, W)` -> `(B, H'*W', C)` (row-major tokens).

    Initialised as the released code: Xavier-uniform weight, PyTorch's default bias
    (uniform in +-1/sqrt(fan_in)), which the released `weights_init` leaves alone."""

    def __init__(self, in_ch: int, dim: int, kernel: int, stride: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, dim, kernel, stride, padding)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)                      # (B, H'*W', C)


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Point every layer of `module` that calls the fused ops at `backend`; returns `module`."""
    for m in module.modules():
        if hasattr(m, "backend") and isinstance(getattr(m, "backend"), str):
            m.backend = backend
    return module
