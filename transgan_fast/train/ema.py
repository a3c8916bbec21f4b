"""Exponential moving average of the generator, kept on the training device.

StyleGAN2-ADA's rule: the half-life is given in images, `ema_nimg`, with a ramp-up that makes it
`min(ema_nimg, rampup·images_seen)` early in training; per update `β = 0.5^(batch / ema_nimg)`,
where, as in the released TransGAN trainer, `batch` is the D batch of one iteration (64 real images
for CIFAR-10), although the update runs once per G step.
A constant `beta` (the 256² runs use 0.995) replaces the rule when given. The update is an
in-place lerp on the device (no host copy per step: one of TransGAN users' complaints).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

__all__ = ["EMA", "ema_beta"]


def ema_beta(batch: int, images_seen: float, ema_kimg: float = 500.0,
             rampup: Optional[float] = 0.1, beta: Optional[float] = None) -> float:
    """The decay for one update of `batch` images after `images_seen` images."""
    if beta is not None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ema_beta: beta must be in [0, 1); got {beta}")
        return float(beta)
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


class EMA:
    """A frozen copy of a module whose parameters track the source with `ema_beta`.

    Buffers are copied, not averaged. `update(src, batch, images_seen)` returns the β used.
    """

    def __init__(self, module: torch.nn.Module, ema_kimg: float = 500.0,
                 rampup: Optional[float] = 0.1, beta: Optional[float] = None):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.ema_kimg, self.rampup, self.beta = ema_kimg, rampup, beta
        ema_beta(1, 1, ema_kimg, rampup, beta)  # validate now, not at the first update

    @torch.no_grad()
    def update(self, src: torch.nn.Module, batch: int, images_seen: float) -> float:
        b = ema_beta(batch, images_seen, self.ema_kimg, self.rampup, self.beta)
        for p_ema, p in zip(self.module.parameters(), src.parameters()):
            p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - b)
        for b_ema, b_src in zip(self.module.buffers(), src.buffers()):
            b_ema.copy_(b_src)
        return b
