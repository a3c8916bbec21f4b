"""Attention geometry: which keys each query sees, and where its relative bias comes from.

Every attention op in this package (grid/window, band, clipped window, NATTEN-style neighbourhood)
is one masked attention whose mask and relative-bias index are pure functions of token coordinates.
`AttnGeometry` is that description, packed into a flat integer list so it can cross the
`torch.library` boundary and reach the C++/CUDA/Triton kernels unchanged. The four parameters
``p`` mean different things per kind; read them through the named accessors (``grid_window``,
``grid_shift``, ``band_width``, ``clip_radius``, ``nbhd_kernel``, ``nbhd_dilation``), which have the
same names in C++ (``csrc/common/geometry.h``) and Triton (``_triton/_geom.py``).
`docs/kernels.md` follows a geometry through the tiles to the kernels.

The index math here is the Python twin of `csrc/common/geometry.h`; both must agree exactly, and
`tests/test_geometry_cpp.py` checks them against each other through the compiled kernels.

Kinds (`AttnGeometry.kind`):

- ``GRID`` (0): windows ``(M1, M2)`` with cyclic ``shift (s1, s2)``. Token (y, x) moves to rolled
  coordinates ``y' = (y - s1) mod H`` (Swin's ``roll(-s)``), lives in window ``(y' // M1, x' // M2)``
  and attends to tokens of the same window that have the same *wrap* status on each axis
  (``y' >= H - s1`` means the token wrapped around; Swin's region mask). For maps that the window
  divides this is exactly Swin's mask; partial last windows keep the same rule.
  Bias index: in-window offsets of rolled coordinates, table ``(2M1-1)(2M2-1)``.
- ``BAND`` (1): ``|i - j| <= width`` on the flattened row-major index (official TransGAN code).
  Bias index: 2-D offsets over the whole map, table ``(2H-1)(2W-1)``.
- ``CLIP`` (2): ``|yi - yj| <= r1 and |xi - xj| <= r2`` (the paper's figure); windows are cut at the
  border. Bias table ``(2r1+1)(2r2+1)`` or the full map ``(2H-1)(2W-1)``.
- ``NBHD`` (3): NATTEN neighbourhood attention: per axis of length L with kernel k and dilation d,
  query i in dilation group ``g = i % d`` at group index ``ig = i // d`` sees keys
  ``(start + t) * d + g`` for ``t < k``, ``start = clamp(ig - k // 2, 0, Lg - k)``, ``Lg`` the group's
  length. Every query sees exactly ``k1 * k2`` keys. Bias table ``(2k1-1)(2k2-1)`` indexed by the
  offset in group units.

In every kind the relative-bias index of query i and key j is
``(dy + B1 - 1) * (2 * B2 - 1) + (dx + B2 - 1)`` where ``(dy, dx)`` is query minus key in the kind's
bias coordinates and ``(B1, B2)`` the table's half-size (``bias_hw``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

GRID, BAND, CLIP, NBHD = 0, 1, 2, 3
INT32_MAX = 2 ** 31 - 1  # the kernels take the geometry and token indices as int32
KIND_NAMES = {GRID: "grid", BAND: "band1d", CLIP: "window2d-clip", NBHD: "window2d-shift"}


def _pair(value, name: str, op: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints; got {value!r}") from None
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (a, b)):
        raise ValueError(f"{op}: {name} must contain ints; got {value!r}")
    return (a, b)


@dataclass(frozen=True)
class AttnGeometry:
    """Flat description of one masked-attention geometry (see the module docstring)."""

    H: int
    W: int
    kind: int
    p: Tuple[int, int, int, int] = (0, 0, 0, 0)  # kind-dependent: use the accessors below
    bias_hw: Tuple[int, int] = (0, 0)            # (B1, B2): table has (2B1-1)(2B2-1) rows

    @property
    def N(self) -> int:
        return self.H * self.W

    # Named parameters per kind: the one place (in Python) that says what p[0..3] mean.
    def _params(self, kind: int, name: str, first: int) -> Tuple[int, int]:
        if self.kind != kind:
            raise ValueError(f"AttnGeometry.{name} is a {KIND_NAMES[kind]} parameter; this "
                             f"geometry is {KIND_NAMES.get(self.kind, self.kind)}")
        return (self.p[first], self.p[first + 1])

    @property
    def grid_window(self) -> Tuple[int, int]:
        """GRID: window (M1, M2)."""
        return self._params(GRID, "grid_window", 0)

    @property
    def grid_shift(self) -> Tuple[int, int]:
        """GRID: cyclic shift (s1, s2)."""
        return self._params(GRID, "grid_shift", 2)

    @property
    def band_width(self) -> int:
        """BAND: |i - j| <= band_width on the flat index."""
        return self._params(BAND, "band_width", 0)[0]

    @property
    def clip_radius(self) -> Tuple[int, int]:
        """CLIP: radii (r1, r2): |dy| <= r1, |dx| <= r2."""
        return self._params(CLIP, "clip_radius", 0)

    @property
    def nbhd_kernel(self) -> Tuple[int, int]:
        """NBHD: kernel size (k1, k2)."""
        return self._params(NBHD, "nbhd_kernel", 0)

    @property
    def nbhd_dilation(self) -> Tuple[int, int]:
        """NBHD: dilation (d1, d2)."""
        return self._params(NBHD, "nbhd_dilation", 2)

    def as_list(self) -> List[int]:
        """The integer list that the kernels take: [H, W, kind, p0, p1, p2, p3, B1, B2]."""
        return [self.H, self.W, self.kind, *self.p, *self.bias_hw]

    @staticmethod
    def from_list(g: Sequence[int]) -> "AttnGeometry":
        return AttnGeometry(int(g[0]), int(g[1]), int(g[2]), tuple(int(t) for t in g[3:7]),
                            (int(g[7]), int(g[8])))

    @property
    def bias_rows(self) -> int:
        return (2 * self.bias_hw[0] - 1) * (2 * self.bias_hw[1] - 1)

    def max_keys(self) -> int:
        """Upper bound on the keys one query sees (used to count useful FLOPs)."""
        H, W = self.H, self.W
        if self.kind == GRID:
            M1, M2 = self.grid_window
            return min(M1, H) * min(M2, W)
        if self.kind == BAND:
            return min(2 * self.band_width + 1, self.N)
        if self.kind == CLIP:
            r1, r2 = self.clip_radius
            return min(2 * r1 + 1, H) * min(2 * r2 + 1, W)
        k1, k2 = self.nbhd_kernel
        return k1 * k2


# ----------------------------------------------------------------------------------------------
# Constructors with argument checking (the public ops call these).

def grid_geometry(hw, window, shift=(0, 0), bias_rows: Optional[int] = None,
                  op: str = "grid_attention") -> AttnGeometry:
    H, W = _pair(hw, "hw", op)
    M1, M2 = _pair(window, "window", op)
    s1, s2 = _pair(shift, "shift", op)
    _check_hw(op, H, W)
    if not (1 <= M1 <= H and 1 <= M2 <= W):
        raise ValueError(f"{op}: window {(M1, M2)} must fit inside the map (1 <= window <= hw); "
                         f"got hw={(H, W)}")
    if not (0 <= s1 < M1 and 0 <= s2 < M2):
        raise ValueError(f"{op}: shift {(s1, s2)} must satisfy 0 <= shift < window={(M1, M2)}")
    geom = AttnGeometry(H, W, GRID, (M1, M2, s1, s2), (M1, M2))
    if bias_rows is not None and bias_rows != geom.bias_rows:
        raise ValueError(f"{op}: rel_bias must have (2*M1-1)*(2*M2-1) = {geom.bias_rows} rows for "
                         f"window={(M1, M2)}; got {bias_rows}")
    return geom


def _check_hw(op, H, W):
    if H < 1 or W < 1:
        raise ValueError(f"{op}: hw must be positive; got hw={(H, W)}")
    if H * W > INT32_MAX:
        raise ValueError(f"{op}: hw={(H, W)} has H*W = {H * W} tokens; the kernels index tokens "
                         f"with int32 (at most {INT32_MAX})")


def local_geometry(hw, mode="window2d", kernel_size=(7, 7), border="clip", dilation=(1, 1),
                   width=None, bias_rows: Optional[int] = None,
                   op: str = "local_attention") -> AttnGeometry:
    H, W = _pair(hw, "hw", op)
    _check_hw(op, H, W)
    full = (2 * H - 1) * (2 * W - 1)
    if mode == "band1d":
        if width is None or not isinstance(width, int) or isinstance(width, bool) or width < 0:
            raise ValueError(f"{op}: mode='band1d' needs an int width >= 0; got width={width!r}")
        if width > INT32_MAX:
            raise ValueError(f"{op}: band1d width={width} does not fit the kernels' int32 geometry "
                             f"(at most {INT32_MAX}); any width >= N-1 = {H * W - 1} already "
                             f"sees every token")
        geom = AttnGeometry(H, W, BAND, (width, 0, 0, 0), (H, W))
        if bias_rows is not None and bias_rows != full:
            raise ValueError(f"{op}: rel_bias for mode='band1d' must have (2H-1)*(2W-1) = {full} "
                             f"rows for hw={(H, W)}; got {bias_rows}")
        return geom
    if mode != "window2d":
        raise ValueError(f"{op}: mode must be 'band1d' or 'window2d'; got {mode!r}")
    k1, k2 = _pair(kernel_size, "kernel_size", op)
    d1, d2 = _pair(dilation, "dilation", op)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"{op}: kernel_size must be positive; got {(k1, k2)}")
    if d1 < 1 or d2 < 1:
        raise ValueError(f"{op}: dilation must be positive; got {(d1, d2)}")
    if border == "clip":
        if k1 % 2 == 0 or k2 % 2 == 0:
            raise ValueError(f"{op}: border='clip' needs odd kernel_size; got {(k1, k2)}")
        if (d1, d2) != (1, 1):
            raise ValueError(f"{op}: dilation is only supported with border='shift'; "
                             f"got dilation={(d1, d2)}")
        r1, r2 = (k1 - 1) // 2, (k2 - 1) // 2
        if max(r1, r2) > INT32_MAX // 2:
            raise ValueError(f"{op}: kernel_size={(k1, k2)} does not fit the kernels' int32 "
                             f"geometry; any kernel_size >= 2*max(hw)-1 already sees the whole map")
        minimal = (2 * r1 + 1) * (2 * r2 + 1)
        bias_hw = (r1 + 1, r2 + 1)
        if bias_rows is not None and bias_rows != minimal:
            if bias_rows == full:
                bias_hw = (H, W)
            else:
                raise ValueError(f"{op}: rel_bias for window2d/clip must have {minimal} rows "
                                 f"(kernel {(k1, k2)}) or {full} rows (the full map {(H, W)}); "
                                 f"got {bias_rows}")
        return AttnGeometry(H, W, CLIP, (r1, r2, 0, 0), bias_hw)
    if border == "shift":
        if k1 * d1 > H or k2 * d2 > W:
            raise ValueError(f"{op}: border='shift' needs kernel_size*dilation <= hw; got "
                             f"kernel_size={(k1, k2)}, dilation={(d1, d2)}, hw={(H, W)}")
        geom = AttnGeometry(H, W, NBHD, (k1, k2, d1, d2), (k1, k2))
        if bias_rows is not None and bias_rows != geom.bias_rows:
            raise ValueError(f"{op}: rel_bias for window2d/shift must have (2k1-1)*(2k2-1) = "
                             f"{geom.bias_rows} rows for kernel_size={(k1, k2)}; got {bias_rows}")
        return geom
    raise ValueError(f"{op}: border must be 'clip' or 'shift'; got {border!r}")


# ----------------------------------------------------------------------------------------------
# Vectorised index math (reference twin of csrc/common/geometry.h).

def _nbhd_start(i: torch.Tensor, L: int, k: int, d: int) -> torch.Tensor:
    """First key (in group units) of NATTEN's neighbourhood for positions `i` along one axis."""
    g = i % d
    ig = i // d
    Lg = (L - g + d - 1) // d
    return torch.minimum(torch.clamp(ig - k // 2, min=0), Lg - k)


def visibility(geom: AttnGeometry, device=None) -> torch.Tensor:
    """Dense boolean (N, N) mask: entry [i, j] is True iff query i sees key j."""
    H, W = geom.H, geom.W
    t = torch.arange(geom.N, device=device)
    y, x = t // W, t % W
    yi, xi, yj, xj = y[:, None], x[:, None], y[None, :], x[None, :]
    if geom.kind == GRID:
        (M1, M2), (s1, s2) = geom.grid_window, geom.grid_shift
        ry, rx = (y - s1) % H, (x - s2) % W
        same_win = ((ry // M1)[:, None] == (ry // M1)[None, :]) & ((rx // M2)[:, None] == (rx // M2)[None, :])
        wy, wx = ry >= H - s1, rx >= W - s2
        same_reg = (wy[:, None] == wy[None, :]) & (wx[:, None] == wx[None, :])
        return same_win & same_reg
    if geom.kind == BAND:
        return (t[:, None] - t[None, :]).abs() <= geom.band_width
    if geom.kind == CLIP:
        r1, r2 = geom.clip_radius
        return ((yi - yj).abs() <= r1) & ((xi - xj).abs() <= r2)
    (k1, k2), (d1, d2) = geom.nbhd_kernel, geom.nbhd_dilation
    sy, sx = _nbhd_start(y, H, k1, d1), _nbhd_start(x, W, k2, d2)
    oky = ((yj % d1) == (yi % d1)) & ((yj // d1) >= sy[:, None]) & ((yj // d1) < sy[:, None] + k1)
    okx = ((xj % d2) == (xi % d2)) & ((xj // d2) >= sx[:, None]) & ((xj // d2) < sx[:, None] + k2)
    return oky & okx


def bias_index(geom: AttnGeometry, device=None) -> torch.Tensor:
    """Dense (N, N) long tensor of relative-bias table rows; entries outside the mask are clamped
    into range (they are masked anyway)."""
    H, W = geom.H, geom.W
    B1, B2 = geom.bias_hw
    t = torch.arange(geom.N, device=device)
    y, x = t // W, t % W
    if geom.kind == GRID:
        (M1, M2), (s1, s2) = geom.grid_window, geom.grid_shift
        cy, cx = ((y - s1) % H) % M1, ((x - s2) % W) % M2
    elif geom.kind == NBHD:
        d1, d2 = geom.nbhd_dilation
        cy, cx = y // d1, x // d2
    else:
        cy, cx = y, x
    dy = cy[:, None] - cy[None, :]
    dx = cx[:, None] - cx[None, :]
    dy = dy.clamp(-(B1 - 1), B1 - 1)
    dx = dx.clamp(-(B2 - 1), B2 - 1)
    return (dy + B1 - 1) * (2 * B2 - 1) + (dx + B2 - 1)
