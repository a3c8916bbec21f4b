"""Geometry inside the Triton kernels: lattices, token coordinates, the exact mask and bias row.

Every attention program works on one *lattice*: a rectangle of tokens addressed by lattice
coordinates `(a, b)` that contains every key any of its queries can see.

- GRID: one window, in rolled (shifted) coordinates: token `y = (wy*M1 + a + s1) mod H`.
- BAND: the whole map as one row of N tokens: token `t = b`.
- CLIP: the whole map: `(y, x) = (a, b)`.
- NBHD: one dilation group `(g1, g2)`: `y = a*d1 + g1`, `x = b*d2 + g2`.

Query tiles are `QY x QX` rectangles of a lattice; the keys a tile needs (and, for the backward,
the queries a key tile feeds) form a rectangle of the same lattice derived from the geometry, so
fully masked tiles are never visited. Inside a tile the mask and bias row are the formulas of
`geometry.py` / `csrc/common/geometry.h`, computed on the original token coordinates.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..geometry import BAND, CLIP, GRID, AttnGeometry


@triton.jit
def lattice(lat, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Extent `(LY, LX)` and origin `(c0, c1)` of lattice number `lat`."""
    if KIND == 0:  # GRID: window (wy, wx) of the rolled map; partial at the bottom/right
        nwx = (W + P1 - 1) // P1
        wy = lat // nwx
        wx = lat % nwx
        c0 = wy * P0
        c1 = wx * P1
        LY = tl.minimum(P0, H - c0)
        LX = tl.minimum(P1, W - c1)
    elif KIND == 1:  # BAND: one row of N tokens
        c0 = lat * 0
        c1 = lat * 0
        LY = lat * 0 + 1
        LX = lat * 0 + H * W
    elif KIND == 2:  # CLIP: the map
        c0 = lat * 0
        c1 = lat * 0
        LY = lat * 0 + H
        LX = lat * 0 + W
    else:  # NBHD: dilation group (g1, g2)
        c0 = lat // P3
        c1 = lat % P3
        LY = (H - c0 + P2 - 1) // P2
        LX = (W - c1 + P3 - 1) // P3
    return LY, LX, c0, c1


@triton.jit
def coords(a, b, c0, c1, H, W, P0, P1, P2, P3, KIND: tl.constexpr):
    """Map-coordinates `(y, x)` of lattice points `(a, b)` (valid points only are meaningful)."""
    if KIND == 0:
        y = (c0 + a + P2) % H
        x = (c1 + b + P3) % W
    elif KIND == 1:
        y = b // W
        x = b % W
    elif KIND == 2:
        y = a
        x = b
    else:
        y = a * P2 + c0
        x = b * P3 + c1
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
        ryi = (yi - P2 + H) % H
        rxi = (xi - P3 + W) % W
        ryj = (yj - P2 + H) % H
        rxj = (xj - P3 + W) % W
        ok = ((ryi // P0) == (ryj // P0)) & ((rxi // P1) == (rxj // P1))
        ok = ok & ((ryi >= H - P2) == (ryj >= H - P2)) & ((rxi >= W - P3) == (rxj >= W - P3))
    elif KIND == 1:
        ok = tl.abs((yi * W + xi) - (yj * W + xj)) <= P0
    elif KIND == 2:
        ok = (tl.abs(yi - yj) <= P0) & (tl.abs(xi - xj) <= P1)
    else:
        sy = nbhd_start(yi, H, P0, P2)
        sx = nbhd_start(xi, W, P1, P3)
        gy = yj // P2
        gx = xj // P3
        ok = ((yi % P2) == (yj % P2)) & ((xi % P3) == (xj % P3))
        ok = ok & (gy >= sy) & (gy < sy + P0) & (gx >= sx) & (gx < sx + P1)
    return ok


@triton.jit
def bias_row(yi, xi, yj, xj, H, W, P0, P1, P2, P3, B1, B2, KIND: tl.constexpr):
    """Relative-bias table row of (query, key): `geometry.bias_index`, elementwise."""
    if KIND == 0:
        cyi = ((yi - P2 + H) % H) % P0
        cxi = ((xi - P3 + W) % W) % P1
        cyj = ((yj - P2 + H) % H) % P0
        cxj = ((xj - P3 + W) % W) % P1
    elif KIND == 3:
        cyi = yi // P2
        cxi = xi // P3
        cyj = yj // P2
        cxj = xj // P3
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
    """Points `idx` (a block of flat indices) of the lattice rectangle starting at `(ra0, rb0)` with
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
def partner_range(lo, hi, LEN, P, KIND_AXIS: tl.constexpr):
    """Half-open lattice range on one axis that rows `[lo, hi]` of a tile can pair with.

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


def lattice_plan(geom: AttnGeometry):
    """Host side: (number of lattices, max lattice extent (LY, LX), preferred tile width)."""
    H, W = geom.H, geom.W
    if geom.kind == GRID:
        M1, M2 = geom.p[0], geom.p[1]
        n = -(-H // M1) * -(-W // M2)
        return n, (M1, M2), next_pow2(M2)
    if geom.kind == BAND:
        return 1, (1, H * W), 1 << 30
    if geom.kind == CLIP:
        return 1, (H, W), min(next_pow2(W), 8)
    d1, d2 = geom.p[2], geom.p[3]
    return d1 * d2, (-(-H // d1), -(-W // d2)), min(next_pow2(-(-W // d2)), 8)


def kind_axes(kind: int, backward: bool):
    """(row-axis rule, column-axis rule) for `partner_range`, and the radius per axis."""
    if kind == GRID:
        return 0, 0
    if kind in (BAND, CLIP):
        return 1, 1
    return (1, 1) if backward else (2, 2)


def axis_params(geom: AttnGeometry, backward: bool):
    """Radius/kernel `P` per lattice axis for `partner_range`."""
    if geom.kind == GRID:
        return 0, 0
    if geom.kind == BAND:
        return 0, geom.p[0]
    if geom.kind == CLIP:
        return geom.p[0], geom.p[1]
    k1, k2 = geom.p[0], geom.p[1]
    return (k1 - 1, k2 - 1) if backward else (k1, k2)


@triton.jit
def tile(pid, LYM, LXM, TX, H, W, P0, P1, P2, P3, BLOCK: tl.constexpr, KIND: tl.constexpr):
    """Program `pid`'s tile: a `QY x QX` rectangle (QX = min(TX, BLOCK)) of a lattice whose extent
    is at most `(LYM, LXM)`; lattices are numbered `pid // tiles_per_lattice`.

    Returns the lattice (extent, origin), the tile's lattice coordinates `a, b` (BLOCK,), their
    validity, and the tile's inclusive row/column span clipped to the lattice.
    """
    QX = tl.minimum(TX, BLOCK)
    QY = BLOCK // QX
    tiles_x = (LXM + QX - 1) // QX
    n_tiles = ((LYM + QY - 1) // QY) * tiles_x
    lat = pid // n_tiles
    t = pid % n_tiles
    LY, LX, c0, c1 = lattice(lat, H, W, P0, P1, P2, P3, KIND)
    a_lo = (t // tiles_x) * QY
    b_lo = (t % tiles_x) * QX
    offs = tl.arange(0, BLOCK)
    a = a_lo + offs // QX  # (BLOCK,)
    b = b_lo + offs % QX
    valid = (a < LY) & (b < LX)
    a_hi = tl.minimum(a_lo + QY, LY) - 1
    b_hi = tl.minimum(b_lo + QX, LX) - 1
    return LY, LX, c0, c1, a, b, valid, a_lo, a_hi, b_lo, b_hi


def tiles_per_lattice(geom: AttnGeometry, block: int) -> int:
    """Host twin of `tile`'s arithmetic: tiles of one lattice for a tile of `block` points."""
    _, (LYM, LXM), TX = lattice_plan(geom)
    qx = min(TX, block)
    qy = block // qx
    return -(-LYM // qy) * -(-LXM // qx)
