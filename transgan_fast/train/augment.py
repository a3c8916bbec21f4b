"""DiffAugment: differentiable augmentations applied inside the discriminator's forward.

Every op maps a batch `(B, C, H, W)` to a batch of the same shape with plain tensor ops, so
gradients flow to the generator through the augmented fakes (and to the penalty interpolates).
Randomness comes from an explicit `torch.Generator`, never the global RNG, so a run is
reproducible and resumable (the trainer reseeds the generator from (seed, rank, step)).

Parameters are the released TransGAN ones (docs/transgan.md §4):
- translation: shift by up to 20% of each side, zero padding, per sample.
- cutout: zero a half-side square per sample with probability 0.3 per batch; as in the release
  (`rand_cutout`), the square's centre is uniform over the whole image and the square is clipped
  at the border, so corners are erased as often as 9/33 x 9/33 of hits at 32x32.
- erase_ratio: the same with a rectangle whose sides are drawn once per batch in
  `[int(0.2 side), int(0.7 side)]`.
- stl_erase_ratio: the same with sides drawn once per batch in `[20, side // 2 + 20]` pixels (the
  released values, for 48x48 STL-10).
- hue: rotate colours about the luma axis (1, 1, 1) by `U(-pi, pi)`, each sample with probability 0.5.
- filter: ADA-style 4-band gain filter: the image is split into 4 frequency bands by repeated
  [1, 2, 1] blurs; each band gets a gain `2^N(0, 1)` per sample, gains normalised so their mean
  square is 1 (the expected signal power is kept); each sample with probability 0.5.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DiffAugment", "AUGMENTS", "parse_policy"]

Gen = Optional[torch.Generator]


def _rand(shape, x: torch.Tensor, gen: Gen) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)


def brightness(x, gen: Gen = None):
    """Add `U(-0.5, 0.5)` per sample."""
    return x + (_rand((x.shape[0], 1, 1, 1), x, gen) - 0.5)


def saturation(x, gen: Gen = None):
    """Scale the deviation from the per-pixel channel mean by `U(0, 2)` per sample."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, gen) * 2) + mean


def contrast(x, gen: Gen = None):
    """Scale the deviation from the image mean by `U(0.5, 1.5)` per sample."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, gen) + 0.5) + mean


def translation(x, gen: Gen = None, ratio: float = 0.2):
    """Shift each sample by up to `ratio` of each side (integer pixels), zero padding."""
    B, C, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (B, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(-sw, sw + 1, (B, 1, 1), generator=gen, device=x.device)
    iy = torch.arange(H, device=x.device).view(1, H, 1) + dy  # (B, H, 1) source rows
    ix = torch.arange(W, device=x.device).view(1, 1, W) + dx  # (B, 1, W) source cols
    # Pad by one zero row/col on each side and clamp out-of-range sources onto the padding.
    xp = F.pad(x, [1, 1, 1, 1])  # (B, C, H+2, W+2)
    iy = (iy + 1).clamp(0, H + 1).expand(B, H, W)
    ix = (ix + 1).clamp(0, W + 1).expand(B, H, W)
    flat = (iy * (W + 2) + ix).view(B, 1, H * W).expand(B, C, H * W)
    return xp.flatten(2).gather(2, flat).view(B, C, H, W)


def _erase(x, gen: Gen, h: int, w: int, prob: float):
    """Zero an `h x w` rectangle per sample, with probability `prob` per batch (the released
    `rand_cutout` family): each sample's centre is uniform over the whole image (rows
    `0 .. H - 1`, plus `H` when `h` is even; columns likewise) and the rectangle, rows
    `cy - h // 2 .. cy - h // 2 + h - 1`, is clipped at the border."""
    B, _, H, W = x.shape
    if prob < 1.0 and torch.rand((), generator=gen, device=x.device).item() >= prob:
        return x
    cy = torch.randint(0, H + 1 - h % 2, (B, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, W + 1 - w % 2, (B, 1, 1), generator=gen, device=x.device)
    y0, x0 = cy - h // 2, cx - w // 2
    yy = torch.arange(H, device=x.device).view(1, H, 1)
    xx = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _randint(lo: int, hi: int, gen: Gen, x: torch.Tensor) -> int:
    """One integer uniform in [lo, hi] (both included), like python's `random.randint`."""
    return int(torch.randint(lo, hi + 1, (), generator=gen, device=x.device).item())


def cutout(x, gen: Gen = None, ratio: float = 0.5, prob: float = 0.3):
    """Zero a `round(ratio * side)` square per sample (centre anywhere, clipped), probability `prob`
    per batch."""
    return _erase(x, gen, int(x.shape[2] * ratio + 0.5), int(x.shape[3] * ratio + 0.5), prob)


def erase_ratio(x, gen: Gen = None, prob: float = 0.3):
    """Zero a rectangle per sample, sides drawn once per batch uniformly in
    `[int(0.2 side), int(0.7 side)]` (centre anywhere, clipped), probability `prob` per batch."""
    H, W = x.shape[2], x.shape[3]
    h = _randint(int(H * 0.2), int(H * 0.7), gen, x)
    w = _randint(int(W * 0.2), int(W * 0.7), gen, x)
    return _erase(x, gen, h, w, prob)


def stl_erase_ratio(x, gen: Gen = None, prob: float = 0.3):
    """Zero a rectangle per sample, sides drawn once per batch uniformly in `[20, side // 2 + 20]`
    pixels (20-44 at 48x48), centre anywhere, clipped; probability `prob` per batch."""
    H, W = x.shape[2], x.shape[3]
    h = _randint(20, H // 2 + 20, gen, x)
    w = _randint(20, W // 2 + 20, gen, x)
    return _erase(x, gen, h, w, prob)


def hue(x, gen: Gen = None, prob: float = 0.5):
    """Rotate RGB about the luma axis (1,1,1)/sqrt(3) by U(-pi, pi), per sample with `prob`."""
    if x.shape[1] != 3:
        raise ValueError(f"hue: needs 3 channels; got x of shape {tuple(x.shape)}")
    B = x.shape[0]
    u = torch.rand((B, 2), generator=gen, device=x.device)
    theta = (u[:, 0] * 2 - 1) * math.pi * (u[:, 1] < prob).float()  # (B,) angle, 0 when skipped
    c, s = torch.cos(theta), torch.sin(theta)
    k = 1 / math.sqrt(3)
    K = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], device=x.device)  # cross(k, .)
    eye = torch.eye(3, device=x.device)
    # Rodrigues: R = I + sin(t) K + (1 - cos(t)) K^2, one (3, 3) matrix per sample.
    R = eye + s.view(B, 1, 1) * K + (1 - c).view(B, 1, 1) * (K @ K)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", R.to(x.dtype), x)


def filter4(x, gen: Gen = None, prob: float = 0.5):
    """Random gains on 4 frequency bands (ADA's filter, simplified), per sample with `prob`."""
    B, C, H, W = x.shape
    k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4
    k2 = (k1[:, None] * k1[None, :]).expand(C, 1, 3, 3)  # (C, 1, 3, 3) depthwise blur

    def blur(t, dil):
        return F.conv2d(F.pad(t, [dil] * 4, mode="replicate"), k2, groups=C, dilation=dil)

    lows = [x]
    for dil in (1, 2, 4):
        lows.append(blur(lows[-1], dil))
    bands = [lows[i] - lows[i + 1] for i in range(3)] + [lows[3]]
    g = torch.exp2(torch.randn((B, 4), generator=gen, device=x.device))
    g = g / g.pow(2).mean(dim=1, keepdim=True).sqrt()  # mean square gain 1
    on = (torch.rand((B, 1), generator=gen, device=x.device) < prob).float()
    g = (on * g + (1 - on)).to(x.dtype)  # (B, 4); identity gains where skipped
    return sum(g[:, i].view(B, 1, 1, 1) * bands[i] for i in range(4))


AUGMENTS: Dict[str, Sequence[Callable]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
    "erase_ratio": (erase_ratio,),
    "stl_erase_ratio": (stl_erase_ratio,),
    "hue": (hue,),
    "filter": (filter4,),
}


def parse_policy(policy) -> tuple:
    """'translation,cutout,color' (or a sequence) -> validated tuple of names; '' means none."""
    if isinstance(policy, str):
        names = tuple(p.strip() for p in policy.split(",") if p.strip())
    else:
        names = tuple(policy)
    bad = [n for n in names if n not in AUGMENTS]
    if bad:
        raise ValueError(f"DiffAugment: unknown policy entries {bad}; expected some of "
                         f"{sorted(AUGMENTS)}")
    return names


class DiffAugment:
    """Callable augmentation: `aug(x)` applies the policy's ops in order.

    Args:
        policy: comma-separated names from `AUGMENTS` (e.g. "translation,cutout,color").
        generator: the torch.Generator drawing all randomness (None: the global RNG).
    """

    def __init__(self, policy="translation,cutout,color", generator: Gen = None):
        self.policy = parse_policy(policy)
        self.generator = generator

    def __bool__(self):
        return bool(self.policy)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"DiffAugment: x must be (B, C, H, W); got shape {tuple(x.shape)}")
        for name in self.policy:
            for fn in AUGMENTS[name]:
                x = fn(x, self.generator)
        return x.contiguous()
