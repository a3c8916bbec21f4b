"""TransGAN attention layers on the fused ops: global, grid (window) and locality-masked.

One class, `Attention`, covers the three: its geometry (`AttnGeometry`) says which keys each query
sees and which relative-bias row it adds, and the forward is always
`Linear(C, 3C, bias=False) -> attention_qkv -> Linear(C, C)` (4 heads by default), so the packed
projection reaches the kernel without permute copies. A locality-masked layer swaps its geometry
when the `LocalitySchedule` moves on (`set_progress`); its relative-bias table is the full map's in
every phase, so one learned table serves the masked and the unmasked layer.

`CrossAttention` is celebahq256's self-modulation: stage tokens attend to 64 latent tokens.

The attention noise (`noise=True`) is drawn from the global torch RNG unless a `noise_source`
context names a dedicated `torch.Generator` (the trainer, its snapshots and `generate` do, so that
sampling never disturbs the training streams and a seed fixes the noise) or turns it off.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import AttnGeometry, LocalitySchedule, attention_qkv, grid_geometry

__all__ = ["Attention", "CrossAttention", "trunc_normal_", "noise_source"]

_NOISE = threading.local()  # .generator (None: global RNG), .enabled; unset: global RNG, on


@contextlib.contextmanager
def noise_source(generator: Optional[torch.Generator] = None, enabled: bool = True) -> Iterator[None]:
    """Inside the block, `Attention` noise is drawn from `generator` (None: the global RNG), or
    skipped entirely when `enabled` is False. The generator must live on the activations' device."""
    prev = (getattr(_NOISE, "generator", None), getattr(_NOISE, "enabled", True))
    _NOISE.generator, _NOISE.enabled = generator, enabled
    try:
        yield
    finally:
        _NOISE.generator, _NOISE.enabled = prev


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Normal(0, std) truncated at +-2 absolute, in place: the released TransGAN's and timm's
    `trunc_normal_(t, std=.02)` (cut at a=-2, b=2, not at 2 std), so at std 0.02 no value is cut."""
    return nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Attention(nn.Module):
    """Multi-head self-attention over an `H x W` token map, with a fixed or scheduled geometry.

    Args:
        dim: channels `C` (divisible by `heads`).
        hw: the token map `(H, W)`; the layer's input is `(B, H*W, C)`.
        heads: number of heads (TransGAN: 4 everywhere).
        window: `None` for global attention, or `(M1, M2)` for grid (window) attention.
        rel_bias: learn a Swin-style relative-position table `((2M1-1)(2M2-1), heads)` (`M` = the
            window side, the whole map for global layers).
        noise: learn the attention-noise scale `s` (init 0): `x += n * s`, `n ~ N(0, 1)` of
            shape `(B, N, 1)` (drawn in window order for grid layers), before the qkv projection.
        locality: a `LocalitySchedule` masking this (global) layer; call `set_progress`.
        backend: passed to the ops ("auto", "ref", "cpu", "cuda", "triton").
    """

    def __init__(self, dim: int, hw, heads: int = 4, window=None, rel_bias: bool = True,
                 noise: bool = False, locality: Optional[LocalitySchedule] = None,
                 backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim={dim} must be divisible by heads={heads}")
        H, W = _pair(hw)
        if locality is not None and window is not None:
            raise ValueError(f"Attention: a locality schedule needs a global layer; got window={window}")
        self.dim, self.heads, self.hw, self.backend = dim, heads, (H, W), backend
        self.window = (H, W) if window is None else _pair(window)
        self.locality = locality
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.geom: AttnGeometry = grid_geometry((H, W), self.window, op="Attention")
        if rel_bias:
            M1, M2 = self.window
            self.rel_bias = nn.Parameter(trunc_normal_(torch.empty((2 * M1 - 1) * (2 * M2 - 1), heads)))
        else:
            self.register_parameter("rel_bias", None)
        if noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        else:
            self.register_parameter("noise_strength", None)
        self.progress = 0.0
        if locality is not None:
            self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        """Apply the locality schedule at `progress` (no-op for layers without one)."""
        self.progress = float(progress)
        if self.locality is not None:
            self.geom = self.locality.geometry(self.hw, progress, full_bias=True)

    @property
    def masked(self) -> bool:
        """True while a locality mask is in force."""
        return self.geom.kind != 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        if N != self.geom.N or C != self.dim:
            raise ValueError(f"Attention: expected x of shape (B, {self.geom.N}, {self.dim}) for "
                             f"hw={self.hw}; got {tuple(x.shape)}")
        if self.noise_strength is not None and getattr(_NOISE, "enabled", True):
            x = x + self._noise(B, N, x) * self.noise_strength
        qkv = self.qkv(x)                                                   # (B, N, 3C)
        o = attention_qkv(qkv, self.heads, self.geom, self.rel_bias, backend=self.backend)  # (B, N, C)
        return self.proj(o)

    def _noise(self, B: int, N: int, x: torch.Tensor) -> torch.Tensor:
        """`(B, N, 1)` standard normal noise, drawn in float32 whatever x's dtype (one seed gives
        the same noise in every dtype). A grid layer draws it in window order, as the released
        models do on their window-partitioned `(B * windows, M1 * M2, 1)` tensor, so one seed
        gives the released noise; maps the windows do not tile draw it per token, row-major."""
        (H, W), (M1, M2) = self.hw, self.window
        gen = getattr(_NOISE, "generator", None)  # None: the global RNG (see noise_source)
        if (M1, M2) != (H, W) and H % M1 == 0 and W % M2 == 0:
            n = torch.randn(B, H // M1, W // M2, M1, M2, device=x.device, generator=gen)
            n = n.permute(0, 1, 3, 2, 4).reshape(B, N, 1)                   # (B, N, 1) row-major
        else:
            n = torch.randn(B, N, 1, device=x.device, generator=gen)         # (B, N, 1)
        return n.to(x.dtype)

    def extra_repr(self) -> str:
        kind = "global" if self.window == self.hw else f"grid{self.window}"
        return (f"dim={self.dim}, heads={self.heads}, hw={self.hw}, {kind}, "
                f"rel_bias={self.rel_bias is not None}, noise={self.noise_strength is not None}, "
                f"locality={self.locality is not None}, backend={self.backend!r}")


class CrossAttention(nn.Module):
    """Residual cross-attention from stage tokens (queries) to latent tokens (keys/values).

    celebahq256's self-modulation: bias-free q/k/v, `heads` heads, output projection with bias,
    no norm before it. The 64 latent tokens make the key set tiny, so this runs on torch's SDPA.
    `noise_strength` is declared and never used, as in the released model (Celeba256_gen), so
    parameter counts and official checkpoints match; it gets no gradient.
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 4, backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"CrossAttention: dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.backend = dim, heads, backend
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(context_dim, dim, bias=False)
        self.v = nn.Linear(context_dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        L = context.shape[1]
        d = C // self.heads
        q = self.q(x).reshape(B, N, self.heads, d).transpose(1, 2)          # (B, h, N, d)
        k = self.k(context).reshape(B, L, self.heads, d).transpose(1, 2)    # (B, h, L, d)
        v = self.v(context).reshape(B, L, self.heads, d).transpose(1, 2)    # (B, h, L, d)
        o = F.scaled_dot_product_attention(q, k, v)                         # (B, h, N, d)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))
