"""`TransGANConfig` and the preset registry (docs/transgan.md §2-§3).

A preset is a name -> config; `config(name, **overrides)` returns a copy with any field replaced.
Attention kinds are short strings: `"global"`, `"gridM"` (M x M windows, Swin-style, no shift).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..ops import LocalitySchedule

__all__ = ["TransGANConfig", "PRESETS", "config", "parse_attn"]


def parse_attn(kind: str) -> Optional[int]:
    """`"global"` -> None, `"grid16"` -> 16 (window side)."""
    if kind == "global":
        return None
    if kind.startswith("grid") and kind[4:].isdigit():
        return int(kind[4:])
    raise ValueError(f"attention kind must be 'global' or 'grid<M>' (e.g. 'grid16'); got {kind!r}")


@dataclass(frozen=True)
class TransGANConfig:
    """Every architectural choice of one TransGAN generator/discriminator pair.

    Generator (`g_*`): stage `i` runs `g_depths[i]` blocks at `g_channels[i]` channels on a
    `bottom * 2**i` square map with attention `g_attn[i]`; `g_upsample[i]` ("bicubic" keeps C,
    "pixelshuffle" divides it by 4) leads from stage `i` to `i + 1`.

    Discriminator (`d_*`), `d_kind="multiscale"` (v2): scale `i` tokenises the image with a conv
    `d_scales[i] = (channels, kernel, stride, padding)`; stage `i` runs blocks `d_stages[i]` (one
    attention kind per block) at the sum of the first `i + 1` scales' channels. `d_kind="vit"` (v1):
    plain ViT with patch `d_patch`, `d_dim` channels and `d_depth` blocks, cls + absolute position.
    `d_mbstd > 0` (multiscale only; 0 = off, the papers' models): minibatch standard deviation
    (Karras et al., 2018) over groups of `d_mbstd` samples, fed to the cls token (see
    `Discriminator`), so D sees how varied a batch is.

    Class conditioning (`num_classes > 0`; 0 = unconditional, the papers' models unchanged): a
    shared class embedding of `class_dim` channels is concatenated to the latent before the stem,
    and drives a class-conditional scale/shift of every block's normalisation, one projection per
    generator stage (BigGAN's shared embedding + conditional normalisation); the discriminator is
    a projection discriminator (Miyato & Koyama, 2018).
    """

    name: str = "custom"
    # Generator.
    latent_dim: int = 256
    bottom: int = 8
    g_channels: Tuple[int, ...] = (1024, 256, 64)
    g_depths: Tuple[int, ...] = (5, 4, 2)
    g_upsample: Tuple[str, ...] = ("pixelshuffle", "pixelshuffle")
    g_attn: Tuple[str, ...] = ("global", "global", "global")
    g_norm: str = "ln"
    g_noise: bool = False
    g_rel_bias: bool = True
    heads: int = 4
    locality: Optional[LocalitySchedule] = None      # locality-aware mask (v1)
    self_modulation: bool = False                    # celebahq256: cross-attention to latent tokens
    mod_tokens: int = 64
    mod_dim: int = 1024
    updown_after: Tuple[int, ...] = ()               # stages followed by bicubic x4 + 4x4 avg pool
    sr_head: bool = False                            # v1 super-resolution co-training head
    # Discriminator.
    d_kind: str = "multiscale"
    d_scales: Tuple[Tuple[int, int, int, int], ...] = ((288, 2, 2, 0), (96, 4, 4, 0))
    d_stages: Tuple[Tuple[str, ...], ...] = (("global",) * 3, ("global",) * 3)
    d_norm: str = "ln"
    d_noise: bool = True
    d_rel_bias: bool = True
    d_patch: int = 4
    d_dim: int = 384
    d_depth: int = 7
    d_mbstd: int = 0                                 # minibatch-std group size (0: off)
    # Class conditioning (0: unconditional).
    num_classes: int = 0
    class_dim: int = 128

    @property
    def img_size(self) -> int:
        return self.bottom * 2 ** (len(self.g_channels) - 1)

    def __post_init__(self):
        n = len(self.g_channels)
        if len(self.g_depths) != n or len(self.g_attn) != n or len(self.g_upsample) != n - 1:
            raise ValueError(f"TransGANConfig({self.name}): need len(g_depths) = len(g_attn) = "
                             f"len(g_channels) = {n} and len(g_upsample) = {n - 1}; got "
                             f"{len(self.g_depths)}, {len(self.g_attn)}, {len(self.g_upsample)}")
        for u in self.g_upsample:
            if u not in ("bicubic", "pixelshuffle"):
                raise ValueError(f"TransGANConfig: g_upsample entries must be 'bicubic' or "
                                 f"'pixelshuffle'; got {u!r}")
        for a in self.g_attn:
            parse_attn(a)
        if self.num_classes < 0 or self.num_classes == 1 or self.class_dim < 1:
            raise ValueError(f"TransGANConfig: num_classes must be 0 (unconditional) or >= 2 and "
                             f"class_dim >= 1; got num_classes={self.num_classes}, "
                             f"class_dim={self.class_dim}")
        if self.d_kind not in ("multiscale", "vit"):
            raise ValueError(f"TransGANConfig: d_kind must be 'multiscale' or 'vit'; got {self.d_kind!r}")
        if self.d_mbstd < 0 or (self.d_mbstd and self.d_kind != "multiscale"):
            raise ValueError(f"TransGANConfig: d_mbstd must be >= 0 (0: off) and needs "
                             f"d_kind='multiscale'; got d_mbstd={self.d_mbstd}, "
                             f"d_kind={self.d_kind!r}")
        if self.d_kind == "multiscale" and len(self.d_scales) != len(self.d_stages):
            raise ValueError(f"TransGANConfig: need one d_scale per d_stage; got {len(self.d_scales)} "
                             f"scales and {len(self.d_stages)} stages")

    def replace(self, **overrides) -> "TransGANConfig":
        """A copy with `overrides` applied (unknown fields are an error)."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ValueError(f"TransGANConfig: unknown field(s) {bad}; fields are {sorted(names)}")
        return dataclasses.replace(self, **overrides)


_CIFAR = TransGANConfig(name="cifar10")

PRESETS: Dict[str, TransGANConfig] = {
    "cifar10": _CIFAR,
    "stl10": _CIFAR.replace(
        name="stl10", latent_dim=512, bottom=12, g_depths=(7, 5, 3), g_norm="pn", d_norm="pn"),
    "celeba64": TransGANConfig(
        name="celeba64", latent_dim=1024, bottom=8, g_channels=(1024, 256, 64, 16),
        g_depths=(5, 3, 3, 2), g_upsample=("pixelshuffle",) * 3, g_attn=("global",) * 4,
        g_norm="ln", locality=LocalitySchedule.celeba64(), d_kind="vit", d_patch=4, d_dim=384,
        d_depth=7, d_noise=False, d_rel_bias=False),
    "celeba128": TransGANConfig(
        name="celeba128", latent_dim=512, bottom=8, g_channels=(1024, 1024, 256, 64, 16),
        g_depths=(5, 4, 4, 4, 4), g_upsample=("bicubic",) + ("pixelshuffle",) * 3,
        g_attn=("global", "global", "global", "grid16", "grid16"), g_norm="pn", g_noise=True,
        # The released code gives no discriminator for 128^2: church256's with every stride halved.
        d_scales=((288, 2, 2, 0), (48, 4, 4, 0), (48, 8, 8, 0)),
        d_stages=(("grid16", "grid16", "global"), ("global",) * 3, ("global",) * 4), d_noise=False),
    "church256": TransGANConfig(
        name="church256", latent_dim=512, bottom=8, g_channels=(1024, 1024, 1024, 256, 64, 16),
        g_depths=(5, 4, 4, 4, 4, 4), g_upsample=("bicubic", "bicubic") + ("pixelshuffle",) * 3,
        g_attn=("global",) * 3 + ("grid16",) * 3, g_norm="pn", g_noise=True,
        # The released church D (ViT_scale3_local_new_rp) has no attention noise.
        d_scales=((288, 4, 4, 0), (48, 8, 8, 0), (48, 16, 16, 0)),
        d_stages=(("grid16", "grid16", "global"), ("global",) * 3, ("global",) * 4), d_noise=False),
}
PRESETS["celebahq256"] = PRESETS["church256"].replace(
    name="celebahq256", g_depths=(0, 4, 4, 4, 4, 4), self_modulation=True, updown_after=(3, 4),
    d_scales=((96, 4, 2, 1), (96, 4, 4, 0), (192, 8, 8, 0)),
    d_stages=(("grid4",) * 3, ("grid4", "grid4", "global"), ("global",) * 4), d_rel_bias=False)


def config(preset: str, **overrides) -> TransGANConfig:
    """The preset's config with any field overridden, e.g. `config("cifar10", g_depths=(1, 1, 1))`."""
    if preset not in PRESETS:
        raise ValueError(f"config: unknown preset {preset!r}; available: {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)
