"""Geometry inside the Triton kernels: planes, token coordinates, the exact mask and bias row.

Vocabulary as in `csrc/common/tiles.h` and `docs/kernels.md`: a *tile* is the tokens one program
owns (queries in the forward and dq, keys in dk/dv); its *candidates* are the tokens on the other
side it may pair with, a rectangle of the same *plane*; every pair is still masked exactly. A plane
is a 2-D array of tokens with its own coordinates `(a, b)`:

- GRID: one plane per window, in rolled (shifted) coordinates: token `y = (wy*M1 + a + s1) mod H`.
- BAND: the whole map as one row of N tokens: token `t = b`.
- CLIP: the whole map: `(y, x) = (a, b)`.
- NBHD: one plane per dilation group `(g1, g2)`: `y = a*d1 + g1`, `x = b*d2 + g2`.

Tiles are `QY x QX` rectangles of a plane; the candidates of a tile (`candidate_range` per axis)
are a rectangle of the same plane derived from the geometry, so fully masked tiles are never
visited. Inside a tile the mask and bias row are the formulas of `geometry.py` /
`csrc/common/geometry.h`, computed on the original token coordinates.

The kernels take the geometry's four kind-dependent parameters packed as `P0, P1, P2, P3`
(`AttnGeometry.p`); the accessors below (`grid_window`, `grid_shift`, `band_width`, `clip_radius`,
`nbhd_kernel`, `nbhd_dilation`, the names of geometry.h and AttnGeometry) are the one place in
Triton that says what each means.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..geometry import BAND, CLIP, GRID, AttnGeometry


@triton.jit
def grid_window(P0, P1, P2, P3):
    """GRID: window `(M1, M2)`."""
    return P0, P1


@triton.jit
def grid_shift(P0, P1, P2, P3):
    """GRID: cyclic shift `(s1, s2)`."""
    return P2, P3


@triton.jit
def band_width(P0, P1, P2, P3):
    """BAND: `|i - j| <= width` on the flat index."""
    return P0


@triton.jit
def clip_radius(P0, P1, P2, P3):
    """CLIP: radii `(r1, r2)`."""
    return P0, P1


@triton.jit
def nbhd_kernel(P0, P1, P2, P3):
    """NBHD: kernel size `(k1, k2)`."""
    return P0, P1


@triton.jit
def nbhd_dilation(P0, P1, P2, P3):
    """NBHD: dilation `(d1, d2)`."""
    return P2, P3


@triton.jit
def plane(pl, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Extent `(LY, LX)` and origin `(c0, c1)` of plane number `pl`."""
    if KIND == 0:  # GRID: window (wy, wx) of the rolled map; partial at the bottom/right
        M1, M2 = grid_window(P0, P1, P2, P3)
        nwx = (W + M2 - 1) // M2
        wy = pl // nwx
        wx = pl % nwx
        c0 = wy * M1
        c1 = wx * M2
        LY = tl.minimum(M1, H - c0)
        LX = tl.minimum(M2, W - c1)
    elif KIND == 1:  # BAND: one row of N tokens
        c0 = pl * 0
        c1 = pl * 0
        LY = pl * 0 + 1
        LX = pl * 0 + H * W
    elif KIND == 2:  # CLIP: the map
        c0 = pl * 0
        c1 = pl * 0
        LY = pl * 0 + H
        LX = pl * 0 + W
    else:  # NBHD: dilation group (g1, g2)
        d1, d2 = nbhd_dilation(P0, P1, P2, P3)
        c0 = pl // d2
        c1 = pl % d2
        LY = (H - c0 + d1 - 1) // d1
        LX = (W - c1 + d2 - 1) // d2
    return LY, LX, c0, c1


@triton.jit
def coords(a, b, c0, c1, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Map-coordinates `(y, x)` of plane points `(a, b)` (valid points only are meaningful)."""
    if KIND == 0:
        s1, s2 = grid_shift(P0, P1, P2, P3)
        y = (c0 + a + s1) % H
        x = (c1 + b + s2) % W
    elif KIND == 1:
        y = b // W
        x = b % W
    elif KIND == 2:
        y = a
        x = b
    else:
        d1, d2 = nbhd_dilation(P0, P1, P2, P3)
        y = a * d1 + c0
        x = b * d2 + c1
    return y, x


@triton.jit
def nbhd_start(i, L, k, d):
    """NATTEN's first key (group units) for positions `i` on an axis of length L (geometry.h)."""
    g = i % d
    ig = i // d
    Lg = (L - g + d - 1) // d
    return tl.minimum(tl.maximum(ig - k // 2, 0), Lg - k)


@triton.jit
def visible(yi, xi, yj, xj, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Does query (yi, xi) see key (yj, xj)?  `geometry.visibility`, elementwise."""
    if KIND == 0:
        M1, M2 = grid_window(P0, P1, P2, P3)
        s1, s2 = grid_shift(P0, P1, P2, P3)
        ryi = (yi - s1 + H) % H
        rxi = (xi - s2 + W) % W
        ryj = (yj - s1 + H) % H
        rxj = (xj - s2 + W) % W
        ok = ((ryi // M1) == (ryj // M1)) & ((rxi // M2) == (rxj // M2))
        ok = ok & ((ryi >= H - s1) == (ryj >= H - s1)) & ((rxi >= W - s2) == (rxj >= W - s2))
    elif KIND == 1:
        ok = tl.abs((yi * W + xi) - (yj * W + xj)) <= band_width(P0, P1, P2, P3)
    elif KIND == 2:
        r1, r2 = clip_radius(P0, P1, P2, P3)
        ok = (tl.abs(yi - yj) <= r1) & (tl.abs(xi - xj) <= r2)
    else:
        k1, k2 = nbhd_kernel(P0, P1, P2, P3)
        d1, d2 = nbhd_dilation(P0, P1, P2, P3)
        sy = nbhd_start(yi, H, k1, d1)
        sx = nbhd_start(xi, W, k2, d2)
        gy = yj // d1
        gx = xj // d2
        ok = ((yi % d1) == (yj % d1)) & ((xi % d2) == (xj % d2))
        ok = ok & (gy >= sy) & (gy < sy + k1) & (gx >= sx) & (gx < sx + k2)
    return ok


@triton.jit
def bias_row(yi, xi, yj, xj, H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr):
    """Relative-bias table row of (query, key): `geometry.bias_index`, elementwise."""
    if KIND == 0:
        M1, M2 = grid_window(P0, P1, P2, P3)
        s1, s2 = grid_shift(P0, P1, P2, P3)
        cyi = ((yi - s1 + H) % H) % M1
        cxi = ((xi - s2 + W) % W) % M2
        cyj = ((yj - s1 + H) % H) % M1
        cxj = ((xj - s2 + W) % W) % M2
    elif KIND == 3:
        d1, d2 = nbhd_dilation(P0, P1, P2, P3)
        cyi = yi // d1
        cxi = xi // d2
        cyj = yj // d1
        cxj = xj // d2
    else:
        cyi = yi
        cxi = xi
        cyj = yj
        cxj = xj
    dy = tl.minimum(tl.maximum(cyi - cyj, 1 - B1), B1 - 1)
    dx = tl.minimum(tl.maximum(cxi - cxj, 1 - B2), B2 - 1)
    return (dy + B1 - 1) * (2 * B2 - 1) + (dx + B2 - 1)


@triton.jit
def rect_points(idx, total, ra0, rb0, RB, c0, c1, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Points `idx` (a block of flat indices) of the plane rectangle starting at `(ra0, rb0)` with
    `RB` columns and `total` points: map coordinates, token index (int64) and validity."""
    valid = idx < total
    y, x = coords(ra0 + idx // RB, rb0 + idx % RB, c0, c1, H, W, P0, P1, P2, P3, KIND)
    return y, x, (y * W + x).to(tl.int64), valid


@triton.jit
def slice_offset(bt, hd, sb, sh):
    """Element offset of the (batch `bt`, head `hd`) slice of a tensor with batch/head strides
    `sb`, `sh`, computed in int64: program ids and small strides arrive as int32, and
    `hd * sh` alone passes 2**31 once heads * N * d does."""
    return bt.to(tl.int64) * sb + hd.to(tl.int64) * sh


@triton.jit
def load_pair(A, B, sa, sb, tok, valid, offs_d, dmask):
    """Rows `tok` of two `(N, d)` slices (e.g. key and value) as `(rows, DP)` tiles, zero-padded."""
    mask = valid[:, None] & dmask[None, :]
    a = tl.load(A + tok[:, None] * sa + offs_d[None, :], mask=mask, other=0.0)
    b = tl.load(B + tok[:, None] * sb + offs_d[None, :], mask=mask, other=0.0)
    return a, b


@triton.jit
def scores(q, k, yi, xi, yj, xj, qvalid, kvalid, Bias, hd, heads, scale,
           H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr, HAS_BIAS: tl.constexpr,
           PREC: tl.constexpr):
    """Scaled, biased logits `(BLOCK_M, BLOCK_N)` float32 of a query tile against a key tile, the
    visibility mask (geometry and tile bounds), and the bias-table rows (gathered where visible)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    vis = visible(yi[:, None], xi[:, None], yj[None, :], xj[None, :], H, W, P0, P1, P2, P3, KIND)
    vis = vis & qvalid[:, None] & kvalid[None, :]
    row = bias_row(yi[:, None], xi[:, None], yj[None, :], xj[None, :],
                   H, W, P0, P1, P2, P3, B1, B2, KIND)
    if HAS_BIAS:
        s += tl.load(Bias + row * heads + hd, mask=vis, other=0.0)
    return s, vis, row


@triton.jit
def candidate_range(lo, hi, LEN, P, KIND_AXIS: tl.constexpr):
    """Half-open plane range on one axis of the candidates of tile rows `[lo, hi]`.

    KIND_AXIS: 0 whole axis (GRID window); 1 symmetric radius P (BAND/CLIP, and NBHD backward
    with P = k - 1); 2 NATTEN forward: `[start(lo), start(hi) + k)` with P = k (group units).
    """
    if KIND_AXIS == 0:
        r0 = lo * 0
        r1 = lo * 0 + LEN
    elif KIND_AXIS == 1:
        r0 = tl.maximum(lo - P, 0)
        r1 = tl.minimum(hi + P + 1, LEN)
    else:
        r0 = tl.minimum(tl.maximum(lo - P // 2, 0), LEN - P)
        r1 = tl.minimum(tl.maximum(hi - P // 2, 0), LEN - P) + P
    return r0, r1


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def plane_plan(geom: AttnGeometry):
    """Host side: (number of planes, max plane extent (LY, LX), preferred tile width)."""
    H, W = geom.H, geom.W
    if geom.kind == GRID:
        M1, M2 = geom.grid_window
        n = -(-H // M1) * -(-W // M2)
        return n, (M1, M2), next_pow2(M2)
    if geom.kind == BAND:
        return 1, (1, H * W), 1 << 30
    if geom.kind == CLIP:
        return 1, (H, W), min(next_pow2(W), 8)
    d1, d2 = geom.nbhd_dilation
    return d1 * d2, (-(-H // d1), -(-W // d2)), min(next_pow2(-(-W // d2)), 8)


def kind_axes(kind: int, backward: bool):
    """(row-axis rule, column-axis rule) for `candidate_range`."""
    if kind == GRID:
        return 0, 0
    if kind in (BAND, CLIP):
        return 1, 1
    return (1, 1) if backward else (2, 2)


def axis_params(geom: AttnGeometry, backward: bool):
    """Radius/kernel `P` per plane axis for `candidate_range`."""
    if geom.kind == GRID:
        return 0, 0
    if geom.kind == BAND:
        return 0, geom.band_width
    if geom.kind == CLIP:
        return geom.clip_radius
    k1, k2 = geom.nbhd_kernel
    return (k1 - 1, k2 - 1) if backward else (k1, k2)


@triton.jit
def tile(pid, LYM, LXM, TX, H, W, P0, P1, P2, P3, BLOCK: tl.constexpr, KIND: tl.constexpr):
    """Program `pid`'s tile: a `QY x QX` rectangle (QX = min(TX, BLOCK)) of a plane whose extent
    is at most `(LYM, LXM)`; planes are numbered `pid // tiles_per_plane`.

    Returns the plane (extent, origin), the tile's plane coordinates `a, b` (BLOCK,), their
    validity, and the tile's inclusive row/column span clipped to the plane.
    """
    QX = tl.minimum(TX, BLOCK)
    QY = BLOCK // QX
    tiles_x = (LXM + QX - 1) // QX
    n_tiles = ((LYM + QY - 1) // QY) * tiles_x
    pl = pid // n_tiles
    t = pid % n_tiles
    LY, LX, c0, c1 = plane(pl, H, W, P0, P1, P2, P3, KIND)
    a_lo = (t // tiles_x) * QY
    b_lo = (t % tiles_x) * QX
    offs = tl.arange(0, BLOCK)
    a = a_lo + offs // QX  # (BLOCK,)
    b = b_lo + offs % QX
    valid = (a < LY) & (b < LX)
    a_hi = tl.minimum(a_lo + QY, LY) - 1
    b_hi = tl.minimum(b_lo + QX, LX) - 1
    return LY, LX, c0, c1, a, b, valid, a_lo, a_hi, b_lo, b_hi


def tiles_per_plane(geom: AttnGeometry, block: int) -> int:
    """Host twin of `tile`'s arithmetic: tiles of one plane for a tile of `block` points."""
    _, (LYM, LXM), TX = plane_plan(geom)
    qx = min(TX, block)
    qy = block // qx
    return -(-LYM // qy) * -(-LXM // qx)
