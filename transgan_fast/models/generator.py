"""TransGAN generator (docs/transgan.md §2): latent -> token map -> transformer stages -> RGB.

Initialisation is the released code's: linears keep PyTorch's defaults, position embeddings and
relative-bias tables are `trunc_normal_(std=0.02)` (cut at +-2 absolute), the RGB conv is Xavier-
uniform with PyTorch's default bias, noise scales start at 0.

Stem `Linear(latent, bottom^2 * C0)` plus a learned position embedding; between stages an
upsample (bicubic keeps C, pixel shuffle gives C/4) fused with the next stage's position
embedding; tokens -> `(B, C, H, W)` -> 1x1 conv to RGB, no tanh.

Class-conditional (`cfg.num_classes > 0`): a shared embedding `e = E[y]` (`class_dim`) is
concatenated to z before the stem, and each stage `i` has a zero-initialised
`Linear(class_dim, 2 C_i)` giving `(scale, shift)` (stages with blocks only), applied to both norms of all its blocks as
`Norm(x) * (1 + scale) + shift` (conditional LayerNorm / adaptive PixelNorm, as BigGAN's shared
embedding drives conditional BatchNorm). At initialisation the modulation is the identity.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import TransformerBlock, trunc_normal_
from ..ops import bicubic_upsample_seq, pixel_shuffle_seq
from .config import TransGANConfig, parse_attn

__all__ = ["Generator", "check_labels"]


def check_labels(who: str, y: Optional[torch.Tensor], batch: int, num_classes: int) -> None:
    """Raise ValueError unless `y` is an integer `(batch,)` tensor of classes in [0, num_classes)."""
    if y is None:
        raise ValueError(f"{who}: this model is class-conditional ({num_classes} classes); pass "
                         f"y, the (B,) class labels")
    if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{who}: y must be an int64 tensor of shape ({batch},); got "
                         f"{y.dtype} {tuple(y.shape)}")
    if batch and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{who}: class labels must be in [0, {num_classes}); got "
                         f"min {int(y.min())}, max {int(y.max())}")


class Generator(nn.Module):
    """The TransGAN generator for one `TransGANConfig`.

    `forward(z, y=None)`: `z (B, latent_dim)` -> image `(B, 3, S, S)`, `S = cfg.img_size`;
    `y (B,)` integer class labels, required exactly when `cfg.num_classes > 0`.
    `set_progress(p)` applies the locality schedule (if any) to its blocks.
    With `cfg.sr_head`, `reconstruct(x)` maps a real image to its reconstruction from the
    `bottom x bottom` low-resolution version (v1 super-resolution co-training).
    """

    def __init__(self, cfg: TransGANConfig, backend: str = "auto"):
        super().__init__()
        self.cfg, self.backend = cfg, backend
        self.latent_dim = cfg.latent_dim
        self.num_classes = cfg.num_classes
        b, C = cfg.bottom, cfg.g_channels
        cond_dim = cfg.class_dim if cfg.num_classes else 0
        self.stem = nn.Linear(cfg.latent_dim + cond_dim, b * b * C[0])
        self.pos = nn.ParameterList(
            [nn.Parameter(trunc_normal_(torch.empty(1, (b << i) ** 2, c))) for i, c in enumerate(C)])
        if cfg.self_modulation:
            self.mod = nn.Linear(cfg.latent_dim, cfg.mod_tokens * cfg.mod_dim)
            # Zeros: the released Celeba256_gen never initialises its `embed_pos`.
            self.mod_pos = nn.Parameter(torch.zeros(1, cfg.mod_tokens, cfg.mod_dim))
        masked = self._locality_blocks()
        self.stages = nn.ModuleList()
        for i, (c, depth, kind) in enumerate(zip(C, cfg.g_depths, cfg.g_attn)):
            side = b << i
            window = parse_attn(kind)
            self.stages.append(nn.ModuleList(
                TransformerBlock(c, (side, side), norm=cfg.g_norm, heads=cfg.heads,
                                 context_dim=cfg.mod_dim if cfg.self_modulation else None,
                                 backend=backend, window=None if window is None else (window, window),
                                 rel_bias=cfg.g_rel_bias, noise=cfg.g_noise,
                                 locality=cfg.locality if (i, j) in masked else None)
                for j in range(depth)))
        if cfg.num_classes:
            self.class_embed = nn.Embedding(cfg.num_classes, cfg.class_dim)   # N(0, 1) init
            # one per stage that has blocks (a stage without blocks has nothing to modulate)
            self.class_mod = nn.ModuleDict({str(i): nn.Linear(cfg.class_dim, 2 * c)
                                            for i, (c, d) in enumerate(zip(C, cfg.g_depths)) if d})
            for m in self.class_mod.values():
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        self.to_rgb = nn.Conv2d(C[-1], 3, 1)
        nn.init.xavier_uniform_(self.to_rgb.weight)  # bias: PyTorch's default, as released
        if cfg.sr_head:
            if cfg.self_modulation:
                raise ValueError("Generator: sr_head cannot be combined with self_modulation")
            self.sr_embed = nn.Linear(3, C[0])

    def _locality_blocks(self) -> set:
        """(stage, block) pairs that carry the locality mask."""
        cfg = self.cfg
        if cfg.locality is None:
            return set()
        glob = [(i, j) for i, d in enumerate(cfg.g_depths) for j in range(d)
                if cfg.g_attn[i] == "global"]
        if cfg.locality.blocks == "all":
            return set(glob)
        last = max((i, d - 1) for i, d in enumerate(cfg.g_depths) if d > 0)
        if last not in glob:
            raise ValueError(f"Generator: the locality mask goes on the last block, which uses "
                             f"{cfg.g_attn[last[0]]!r} attention; it needs 'global'")
        return {last}

    def set_progress(self, progress: float) -> None:
        """Apply `cfg.locality` at training progress `progress` (epochs or the schedule's unit)."""
        for m in self.modules():
            if m is not self and hasattr(m, "set_progress") and getattr(m, "locality", None) is not None:
                m.set_progress(progress)

    def _trunk(self, x: torch.Tensor, ctx: Optional[torch.Tensor],
               emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Stages -> RGB; `emb (B, class_dim)` is the class embedding (None: no modulation)."""
        cfg = self.cfg
        B = x.shape[0]
        side = cfg.bottom
        for i, blocks in enumerate(self.stages):
            if i > 0:
                hw = (side, side)
                if cfg.g_upsample[i - 1] == "pixelshuffle":
                    x = pixel_shuffle_seq(x, hw, pos=self.pos[i], backend=self.backend)  # (B, 4N, C/4)
                else:
                    x = bicubic_upsample_seq(x, hw, backend=self.backend) + self.pos[i]  # (B, 4N, C)
                side *= 2
            mod = None
            if emb is not None and blocks:
                mod = self.class_mod[str(i)](emb)[:, None].chunk(2, dim=2)        # 2 x (B, 1, C_i)
            for blk in blocks:
                x = blk(x, ctx, mod)
            if i in cfg.updown_after:
                x = _updown(x, side)
        img = x.transpose(1, 2).reshape(B, -1, side, side)                  # (B, C, S, S)
        return self.to_rgb(img)

    def forward(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator: z must be (B, {self.latent_dim}); got {tuple(z.shape)}")
        cfg = self.cfg
        B = z.shape[0]
        emb = None
        if self.num_classes:
            check_labels("Generator", y, B, self.num_classes)
            emb = self.class_embed(y)                                       # (B, class_dim)
            h = torch.cat([z, emb.to(z.dtype)], dim=1)                      # (B, latent + class_dim)
        elif y is not None:
            raise ValueError("Generator: y (class labels) given, but this generator is "
                             "unconditional (num_classes=0)")
        else:
            h = z
        x = self.stem(h).view(B, cfg.bottom ** 2, cfg.g_channels[0]) + self.pos[0]  # (B, b^2, C0)
        ctx = None
        if cfg.self_modulation:
            ctx = self.mod(z).view(B, cfg.mod_tokens, cfg.mod_dim) + self.mod_pos  # (B, T, 1024)
        return self._trunk(x, ctx, emb)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """v1 super-resolution task: rebuild `x (B, 3, S, S)` from its `bottom^2` average-pooled
        version, through the same stages as `forward`. Loss: `lambda * MSE(G.reconstruct(x), x)`."""
        if not self.cfg.sr_head:
            raise RuntimeError("Generator.reconstruct: build with sr_head=True")
        S, b = self.cfg.img_size, self.cfg.bottom
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"Generator.reconstruct: x must be (B, 3, {S}, {S}); got {tuple(x.shape)}")
        low = F.adaptive_avg_pool2d(x, b).flatten(2).transpose(1, 2)        # (B, b^2, 3)
        return self._trunk(self.sr_embed(low) + self.pos[0], None)


def _updown(x: torch.Tensor, side: int) -> torch.Tensor:
    """celebahq256's anti-alias step: bicubic x4 upsample, then 4x4 average pool (same size)."""
    B, N, C = x.shape
    m = x.transpose(1, 2).reshape(B, C, side, side)                         # (B, C, S, S)
    m = F.avg_pool2d(F.interpolate(m, scale_factor=4, mode="bicubic", align_corners=False), 4)
    return m.reshape(B, C, N).transpose(1, 2)                               # (B, N, C)
