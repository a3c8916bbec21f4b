"""TransGAN generator and discriminator, every preset of docs/transgan.md, and a registry.

    G, D = transgan_fast.models.build("cifar10", backend="auto")
    G, D = transgan_fast.models.build("church256", g_noise=False)   # any config field overridable
    G, D = transgan_fast.models.load_official("cifar_checkpoint.pth", "cifar10")  # released weights
"""
from __future__ import annotations

from typing import Tuple

import torch

from .config import PRESETS, TransGANConfig, config
from .discriminator import Discriminator
from .generator import Generator
from .official import OFFICIAL_LAYOUTS, load_official

__all__ = ["PRESETS", "TransGANConfig", "config", "build", "Generator", "Discriminator",
           "load_official", "OFFICIAL_LAYOUTS"]


def build(preset="cifar10", backend: str = "auto", device=None,
          **overrides) -> Tuple[Generator, Discriminator]:
    """Build `(G, D)` for `preset` (a name in `PRESETS` or a `TransGANConfig`), fields overridden
    by `overrides`. `device="meta"` builds without allocating (for counting parameters)."""
    cfg = preset.replace(**overrides) if isinstance(preset, TransGANConfig) else config(preset, **overrides)
    with torch.device(device) if device is not None else _nullcontext():
        return Generator(cfg, backend=backend), Discriminator(cfg, backend=backend)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
