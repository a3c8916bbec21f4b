"""`LocalitySchedule`: TransGAN's growing neighbourhood for locality-aware attention.

The model and the trainer share one schedule object. Given training progress (epochs, or any
monotone unit the caller chooses, such as kimg) it returns the neighbourhood in force, or `None`
once the mask is removed; layers then run plain global attention through the same op.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from .geometry import AttnGeometry, grid_geometry, local_geometry

__all__ = ["LocalitySchedule"]


@dataclass
class LocalitySchedule:
    """Piecewise-constant neighbourhood widths.

    Args:
        widths: neighbourhood widths, one per phase (band half-width for `band1d`, window radius
            `r` giving a `(2r+1)^2` window for `window2d`).
        milestones: progress values where phase `i` ends and phase `i+1` starts
            (`len(widths) - 1` increasing values).
        off_at: progress at which the mask is removed (`None` keeps it forever).
        mode: `"band1d"` (the official code) or `"window2d"` (the paper's figure, clipped border).
        blocks: which generator blocks get the mask: `"last"` (official) or `"all"`.
    """

    widths: Sequence[int] = (4, 6, 8, 10)
    milestones: Sequence[float] = (22, 32, 42)
    off_at: Optional[float] = 60
    mode: str = "band1d"
    blocks: str = "last"

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.milestones = tuple(self.milestones)
        if not self.widths:
            raise ValueError("LocalitySchedule: widths must not be empty")
        if any(w < 0 for w in self.widths):
            raise ValueError(f"LocalitySchedule: widths must be >= 0; got {self.widths}")
        if len(self.milestones) != len(self.widths) - 1:
            raise ValueError(f"LocalitySchedule: need len(widths) - 1 = {len(self.widths) - 1} "
                             f"milestones; got {len(self.milestones)}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"LocalitySchedule: milestones must increase; got {self.milestones}")
        if self.off_at is not None and self.milestones and self.off_at <= self.milestones[-1]:
            raise ValueError(f"LocalitySchedule: off_at={self.off_at} must come after the last "
                             f"milestone {self.milestones[-1]}")
        if self.mode not in ("band1d", "window2d"):
            raise ValueError(f"LocalitySchedule: mode must be 'band1d' or 'window2d'; got {self.mode!r}")
        if self.blocks not in ("last", "all"):
            raise ValueError(f"LocalitySchedule: blocks must be 'last' or 'all'; got {self.blocks!r}")

    @classmethod
    def cifar(cls, **kw) -> "LocalitySchedule":
        """Official CIFAR-10/STL-10 values: widths 4, 6, 8, 10 from epochs 0, 22, 32, 42; off at 60."""
        return cls((4, 6, 8, 10), (22, 32, 42), 60, **kw)

    @classmethod
    def celeba64(cls, **kw) -> "LocalitySchedule":
        """Official CelebA-64 values: widths 8, 12, 16, 20 from epochs 0, 5, 10, 15; off at 20."""
        return cls((8, 12, 16, 20), (5, 10, 15), 20, **kw)

    def width(self, progress: float) -> Optional[int]:
        """The width in force at `progress`, or None once the mask is off."""
        if self.off_at is not None and progress >= self.off_at:
            return None
        phase = sum(progress >= m for m in self.milestones)
        return self.widths[phase]

    def at(self, progress: float) -> Optional[Dict[str, object]]:
        """Keyword arguments for `local_attention` at `progress` (None: mask off, global attention)."""
        w = self.width(progress)
        if w is None:
            return None
        if self.mode == "band1d":
            return {"mode": "band1d", "width": w}
        return {"mode": "window2d", "kernel_size": (2 * w + 1, 2 * w + 1), "border": "clip"}

    def geometry(self, hw: Tuple[int, int], progress: float, full_bias: bool = True) -> AttnGeometry:
        """The attention geometry at `progress` for a global layer over `hw`.

        With `full_bias` the relative-bias table is the full map's `(2H-1)(2W-1)` rows in every
        phase, so one learned table serves the masked and the unmasked layer.
        """
        kw = self.at(progress)
        H, W = hw
        if kw is None:
            return grid_geometry(hw, hw)
        rows = (2 * H - 1) * (2 * W - 1) if full_bias else None
        return local_geometry(hw, bias_rows=rows, **kw)

    def state_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> "LocalitySchedule":
        return cls(**state)
