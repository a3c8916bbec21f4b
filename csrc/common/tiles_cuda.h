// Tile-level index math for the fused attention kernels: which keys a tile of queries can see
// (and which queries a tile of keys can be seen by), as rectangles on the "tiling map".
//
// Host+device (TGF_HD), so the CPU tests (`_C_cpu.key_rect` / `_C_cpu.query_rect`) cover the exact
// arithmetic the CUDA kernels run. Every kind's visibility factorises over the two map axes
// (GRID: same window and same shift region per axis; CLIP: |dy|, |dx| bounds; NBHD: per-axis
// neighbourhoods), so a per-axis key range per query position bounds its visible keys. BAND is
// one-dimensional on the flattened index: its tiling map is 1 x N.
#pragma once
#include "common/geometry.h"

namespace tgf {

// A rectangle of tokens on the tiling map: rows [y0, y0+nr), cols [x0, x0+nc), enumerated
// row-major; token i of the rectangle is the flat index tile_token(t, Wq, i).
struct Tile {
  int y0, x0, nr, nc;
};

// The tiling map: H x W for 2-D kinds, 1 x N for BAND (whose mask lives on the flat index).
TGF_HD int tiling_rows(const Geom& g) { return g.kind == BAND ? 1 : g.H; }
TGF_HD int tiling_cols(const Geom& g) { return g.kind == BAND ? g.H * g.W : g.W; }

TGF_HD int tile_count(const Tile& t) { return t.nr * t.nc; }
TGF_HD int tile_token(const Tile& t, int Wq, int i) {
  return (t.y0 + i / t.nc) * Wq + t.x0 + i % t.nc;
}

// Inclusive range [lo, hi] of key positions along `axis` (0 = rows, 1 = cols of the tiling map)
// that can be visible to a query at position i on that axis.
TGF_HD void axis_keys(const Geom& g, int axis, int i, int& lo, int& hi) {
  const int L = axis == 0 ? tiling_rows(g) : tiling_cols(g);
  switch (g.kind) {
    case GRID: {
      const int M = axis == 0 ? g.p0 : g.p1, s = axis == 0 ? g.p2 : g.p3;
      const int ri = imod(i - s, L);                 // rolled coordinate
      const int w0 = (ri / M) * M, w1 = imin(w0 + M, L) - 1;  // window, rolled, inclusive
      int rlo = w0, rhi = w1;
      if (ri >= L - s) rlo = imax(w0, L - s);        // wrapped region: rolled [L-s, L)
      else rhi = imin(w1, L - s - 1);                // unwrapped region: rolled [0, L-s)
      lo = (rlo + s) % L;                            // one region never wraps in original coords
      hi = lo + (rhi - rlo);
      return;
    }
    case BAND:
      if (axis == 0) { lo = hi = 0; return; }
      lo = imax(i - g.p0, 0); hi = imin(i + g.p0, L - 1);
      return;
    case CLIP: {
      const int r = axis == 0 ? g.p0 : g.p1;
      lo = imax(i - r, 0); hi = imin(i + r, L - 1);
      return;
    }
    default: {  // NBHD
      const int k = axis == 0 ? g.p0 : g.p1, d = axis == 0 ? g.p2 : g.p3;
      const int st = nbhd_start(i, L, k, d), grp = i % d;
      lo = st * d + grp; hi = (st + k - 1) * d + grp;
      return;
    }
  }
}

// Does a query at position i on `axis` see some key position in [a0, a1] on that axis?
// (Exact: NBHD keys are lo, lo + d, ..., hi; the other kinds see all of [lo, hi].)
TGF_HD bool axis_sees(const Geom& g, int axis, int i, int a0, int a1) {
  int l, h;
  axis_keys(g, axis, i, l, h);
  if (l > a1 || h < a0) return false;
  if (g.kind != NBHD || l >= a0) return true;
  const int d = axis == 0 ? g.p2 : g.p3;
  const int first = l + (a0 - l + d - 1) / d * d;  // first key >= a0
  return first <= imin(a1, h);
}

// Inclusive range [lo, hi] of key positions along `axis` visible to some query position in
// [a0, a0 + n).
TGF_HD void axis_key_span(const Geom& g, int axis, int a0, int n, int& lo, int& hi) {
  lo = 1 << 30; hi = -1;
  for (int i = a0; i < a0 + n; ++i) {
    int l, h;
    axis_keys(g, axis, i, l, h);
    lo = imin(lo, l); hi = imax(hi, h);
  }
}

// Inclusive range [lo, hi] of query positions along `axis` that see some key position in
// [a0, a0 + n). NBHD is not symmetric, so the axis is scanned (L is a map side); BAND's flat axis
// (L = N, possibly large) is symmetric and uses the closed form.
TGF_HD void axis_query_span(const Geom& g, int axis, int a0, int n, int& lo, int& hi) {
  const int L = axis == 0 ? tiling_rows(g) : tiling_cols(g), a1 = a0 + n - 1;
  if (g.kind == BAND && axis == 1) { lo = imax(a0 - g.p0, 0); hi = imin(a1 + g.p0, L - 1); return; }
  lo = 1 << 30; hi = -1;
  for (int i = 0; i < L; ++i)
    if (axis_sees(g, axis, i, a0, a1)) { lo = imin(lo, i); hi = imax(hi, i); }
}

// Bounding rectangle of every key visible to some query of tile q.
TGF_HD Tile key_rect(const Geom& g, const Tile& q) {
  int y0, y1, x0, x1;
  axis_key_span(g, 0, q.y0, q.nr, y0, y1);
  axis_key_span(g, 1, q.x0, q.nc, x0, x1);
  return Tile{y0, x0, y1 - y0 + 1, x1 - x0 + 1};
}

// Bounding rectangle of every query that sees some key of tile k (the transpose of key_rect).
TGF_HD Tile query_rect(const Geom& g, const Tile& k) {
  int y0, y1, x0, x1;
  axis_query_span(g, 0, k.y0, k.nr, y0, y1);
  axis_query_span(g, 1, k.x0, k.nc, x0, x1);
  return Tile{y0, x0, y1 - y0 + 1, x1 - x0 + 1};
}

// The block tiling of the tiling map: tiles of at most `t` tokens, tq_rows x tq_cols each.
TGF_HD int tile_cols_for(const Geom& g, int t) {
  const int Wq = tiling_cols(g);
  if (g.kind == BAND) return imin(Wq, t);
  return imin(Wq, t >= 32 ? 8 : 4);
}
TGF_HD int tile_rows_for(const Geom& g, int t) { return imax(1, t / tile_cols_for(g, t)); }

// Tile number `idx` of the block tiling (row-major over tiles; partial tiles at the borders).
TGF_HD Tile block_tile(const Geom& g, int t, int idx) {
  const int Hq = tiling_rows(g), Wq = tiling_cols(g);
  const int tr = tile_rows_for(g, t), tc = tile_cols_for(g, t);
  const int ntx = (Wq + tc - 1) / tc;
  const int y0 = (idx / ntx) * tr, x0 = (idx % ntx) * tc;
  return Tile{y0, x0, imin(tr, Hq - y0), imin(tc, Wq - x0)};
}
TGF_HD int block_tile_count(const Geom& g, int t) {
  const int Hq = tiling_rows(g), Wq = tiling_cols(g);
  const int tr = tile_rows_for(g, t), tc = tile_cols_for(g, t);
  return ((Hq + tr - 1) / tr) * ((Wq + tc - 1) / tc);
}

}  // namespace tgf
