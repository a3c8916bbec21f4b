"""TransGAN discriminators (docs/transgan.md §3): v2 multi-scale and v1 plain ViT.

Multi-scale: each scale tokenises the raw image with a strided conv; stage 1 runs on the finest
scale; between stages the map is 2x2 average pooled and the next scale's tokens are concatenated
channel-wise, then that stage's position embedding is added. A cls token joins before the final
block (no relative bias; attention noise as the other blocks), then norm, cls token, `Linear(C, 1)`.

Class-conditional (`cfg.num_classes > 0`): a projection discriminator (Miyato & Koyama, 2018),
`D(x, y) = w·h + b + <E[y], h>` with `h` the normed cls feature and `E` a class embedding.

Minibatch std (`cfg.d_mbstd = G > 0`): before the final block, each channel's standard deviation
over a group of G samples, averaged over the tokens, goes through a linear map and is added to
those samples' cls token, so the last block can tell a varied batch from a collapsed one.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from ..nn import PatchEmbed, TransformerBlock, make_norm, trunc_normal_
from ..ops import avg_pool_seq
from .config import TransGANConfig, parse_attn
from .generator import check_labels

__all__ = ["Discriminator"]


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


class Discriminator(nn.Module):
    """The TransGAN discriminator for one `TransGANConfig`.

    `forward(x, augment=None, y=None)`: images `(B, 3, S, S)` in [-1, 1] -> logits `(B, 1)`;
    `augment` (e.g. DiffAugment) is applied to the input inside forward, so the WGAN-GP gradient
    taken w.r.t. the un-augmented input flows through it. `y (B,)`: class labels, required
    exactly when `cfg.num_classes > 0` (projection term added to the logit).
    """

    def __init__(self, cfg: TransGANConfig, backend: str = "auto"):
        super().__init__()
        self.cfg, self.backend = cfg, backend
        self.img_size = S = cfg.img_size
        blk = dict(norm=cfg.d_norm, heads=cfg.heads, backend=backend)
        if cfg.d_kind == "vit":
            side = S // cfg.d_patch
            dim = cfg.d_dim
            self.embeds = nn.ModuleList([PatchEmbed(3, dim, cfg.d_patch, cfg.d_patch)])
            n_tok = side * side + 1
            self.pos = nn.ParameterList([nn.Parameter(trunc_normal_(torch.empty(1, n_tok, dim)))])
            self.stages = nn.ModuleList([nn.ModuleList(
                TransformerBlock(dim, (1, n_tok), rel_bias=False, noise=cfg.d_noise, **blk)
                for _ in range(cfg.d_depth))])
            self.sides = [side]
            self.final = None
        else:
            self.embeds = nn.ModuleList(PatchEmbed(3, c, k, s, p) for c, k, s, p in cfg.d_scales)
            self.sides = [_conv_out(S, k, s, p) for _, k, s, p in cfg.d_scales]
            for a, b in zip(self.sides, self.sides[1:]):
                if b * 2 != a:
                    raise ValueError(f"Discriminator: each scale's map must be half the previous "
                                     f"one; d_scales give sides {self.sides} for image size {S}")
            dims = [sum(c for c, *_ in cfg.d_scales[:i + 1]) for i in range(len(cfg.d_scales))]
            self.pos = nn.ParameterList(
                [nn.Parameter(trunc_normal_(torch.empty(1, s * s, c))) for s, c in zip(self.sides, dims)])
            self.stages = nn.ModuleList()
            for side, dim, kinds in zip(self.sides, dims, cfg.d_stages):
                self.stages.append(nn.ModuleList(
                    TransformerBlock(dim, (side, side), rel_bias=cfg.d_rel_bias, noise=cfg.d_noise,
                                     window=None if parse_attn(k) is None else (parse_attn(k),) * 2,
                                     **blk)
                    for k in kinds))
            dim = dims[-1]
            n_last = self.sides[-1] ** 2 + 1
            # The released D's last block draws attention noise whenever its other blocks do.
            self.final = TransformerBlock(dim, (1, n_last), rel_bias=False, noise=cfg.d_noise, **blk)
        self.cls_token = nn.Parameter(trunc_normal_(torch.empty(1, 1, dim)))
        self.norm = make_norm(cfg.d_norm, dim, backend)
        self.head = nn.Linear(dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if cfg.num_classes:  # after the loop: models without classes keep their init draws
            self.class_embed = nn.Embedding(cfg.num_classes, dim)
            trunc_normal_(self.class_embed.weight)
        if cfg.d_mbstd:
            self.mbstd_proj = nn.Linear(dim, dim)
            trunc_normal_(self.mbstd_proj.weight)
            nn.init.zeros_(self.mbstd_proj.bias)

    def _mbstd(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample `(B, 1, C)` cls offset from the group statistics of tokens `t (B, N, C)`."""
        B, N, C = t.shape
        G = min(self.cfg.d_mbstd, B)
        if B % G:
            raise ValueError(f"Discriminator: with d_mbstd={self.cfg.d_mbstd} the batch must be a "
                             f"multiple of {G}; got {B}")
        g = t.float().reshape(G, B // G, N, C)
        std = (g.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=1)      # (B/G, C)
        off = self.mbstd_proj(std.to(t.dtype))                              # (B/G, C)
        return off.repeat(G, 1).unsqueeze(1)                                # (B, 1, C)

    def _score(self, h: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits `(B, 1)` from the final feature `h (B, C)`: the head, plus the projection
        `<E[y], h>` of a class-conditional model."""
        out = self.head(h)
        if self.cfg.num_classes:
            check_labels("Discriminator", y, h.shape[0], self.cfg.num_classes)
            return out + (self.class_embed(y).to(h.dtype) * h).sum(1, keepdim=True)
        if y is not None:
            raise ValueError("Discriminator: y (class labels) given, but this discriminator is "
                             "unconditional (num_classes=0)")
        return out

    def forward(self, x: torch.Tensor, augment: Optional[Callable] = None,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        S = self.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"Discriminator: x must be (B, 3, {S}, {S}); got {tuple(x.shape)}")
        if augment is not None:
            x = augment(x)
        B = x.shape[0]
        cls = self.cls_token.expand(B, -1, -1)                              # (B, 1, C)
        if self.cfg.d_kind == "vit":
            t = torch.cat([cls, self.embeds[0](x)], dim=1) + self.pos[0]    # (B, 1 + N, C)
            for blk in self.stages[0]:
                t = blk(t)
            return self._score(self.norm(t[:, 0]), y)
        t = None
        for i, (embed, blocks) in enumerate(zip(self.embeds, self.stages)):
            tok = embed(x)                                                  # (B, N_i, c_i)
            if t is not None:
                prev = self.sides[i - 1]
                t = avg_pool_seq(t, (prev, prev), backend=self.backend)     # (B, N_i, C_{i-1})
                tok = torch.cat([t, tok], dim=2)                            # (B, N_i, C_i)
            t = tok + self.pos[i]
            for blk in blocks:
                t = blk(t)
        if self.cfg.d_mbstd:
            cls = cls + self._mbstd(t)
        t = self.final(torch.cat([cls, t], dim=1))                          # (B, 1 + N, C)
        return self._score(self.norm(t[:, 0]), y)
