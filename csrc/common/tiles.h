// Tiles: which tokens one unit of kernel work owns, and which tokens on the other side it may
// pair with. The one tile header of the CPU and CUDA kernels (host+device, TGF_HD), so the CPU
// test-suite (tests/test_geometry_cpp.py) covers the arithmetic the CUDA kernels run.
//
// Vocabulary (the same words in C++, CUDA, Triton, Python and docs/kernels.md):
//   tile        the tokens one unit of work owns: queries (forward, dq) or keys (dk/dv).
//   candidates  the tokens on the other side that the tile may pair with: every pair the
//               geometry makes visible, plus masked ones; kernels still mask each pair exactly
//               (visible() / meta_visible), so candidates only have to be a superset.
//   plane       a 2-D array of tokens with its own (row, col) coordinates, in which tiles and
//               candidate sets are rectangles (Rect).
//
// Two tilings live here:
//   Rect tiling (CUDA): one plane, the map (H x W; 1 x N for BAND, whose mask lives on the flat
//     index). Tiles are t-token rectangles (rect_tile); a query tile's candidates are the bounding
//     rectangle of the keys it can see (candidate_keys), a key tile's the bounding rectangle of
//     the queries that see it (candidate_queries). Every kind's visibility factorises over the two
//     axes, so both come from per-axis ranges (axis_key_range).
//   List tiling (CPU): tiles of up to TQ queries listed token by token (tile_queries), and their
//     candidate keys (tile_candidates):
//       GRID  up to TQ tokens of one window (rolled row-major order); candidates: the window.
//       BAND  TQ consecutive tokens [i0, i1); candidates [i0 - w, i1 + w) clipped to [0, N).
//       CLIP  a list_tile_rows x list_tile_cols rectangle of the map (near-square: 2x4 for TQ 8,
//             4x4 for 16); candidates: that rectangle grown by (r1, r2), clipped to the map
//             (candidate_keys of the rect tiling).
//       NBHD  the same rectangle shape on the plane of one dilation group (group coordinates);
//             candidates: per axis, the union of the tile's neighbourhoods, start(first) ..
//             start(last) + k - 1 in group units.
//     A 2-D tile sees about half of its candidates at 7x7 (4x4 tile: 49 of 100), where a row
//     of 16 sees a third (49 of 154), so it holds more queries per gathered key.
//     Tiles partition the queries exactly (some tiles of partial windows are empty). Inside a
//     tile the exact per-pair rule is meta_visible on QueryMeta/KeyMeta, which together with the
//     candidate set is equivalent to visible() in geometry.h.
// (Triton, transgan_fast/ops/_triton/_geom.py, uses rectangles on one plane per GRID window and
// per NBHD dilation group.)
#pragma once
#include "common/geometry.h"

namespace tgf {

TGF_HD int cdiv(int a, int b) { return (a + b - 1) / b; }

// =============================== Rect tiling (CUDA) ==========================================

// A rectangle of a plane: rows [y0, y0 + rows), cols [x0, x0 + cols), enumerated row-major.
struct Rect {
  int y0, x0, rows, cols;
};

// The plane of the rect tiling: H x W for 2-D kinds, 1 x N for BAND.
TGF_HD int plane_rows(const Geom& g) { return g.kind == BAND ? 1 : g.H; }
TGF_HD int plane_cols(const Geom& g) { return g.kind == BAND ? g.H * g.W : g.W; }
TGF_HD int plane_len(const Geom& g, int axis) {
  return axis == Y_AXIS ? plane_rows(g) : plane_cols(g);
}

TGF_HD int rect_size(const Rect& r) { return r.rows * r.cols; }
// Flat token of point i (row-major) of rectangle r of a plane with `cols` columns.
TGF_HD int rect_token(const Rect& r, int cols, int i) {
  return (r.y0 + i / r.cols) * cols + r.x0 + i % r.cols;
}

// Inclusive range [lo, hi] of key positions along `axis` of the plane that can be visible to a
// query at position i on that axis.
TGF_HD void axis_key_range(const Geom& g, int axis, int i, int& lo, int& hi) {
  const int L = plane_len(g, axis);
  switch (g.kind) {
    case GRID: {
      const int M = grid_window(g, axis), s = grid_shift(g, axis);
      const int ri = grid_rolled(g, axis, i);
      const int w0 = (ri / M) * M, w1 = imin(w0 + M, L) - 1;  // window, rolled, inclusive
      int rlo = w0, rhi = w1;
      if (grid_wrapped(g, axis, ri)) rlo = imax(w0, L - s);    // wrapped region: rolled [L-s, L)
      else rhi = imin(w1, L - s - 1);                          // unwrapped region: rolled [0, L-s)
      lo = grid_unrolled(g, axis, rlo);                        // one region never wraps on the map
      hi = lo + (rhi - rlo);
      return;
    }
    case BAND:
      if (axis == Y_AXIS) { lo = hi = 0; return; }
      lo = imax(i - band_width(g), 0); hi = imin(i + band_width(g), L - 1);
      return;
    case CLIP: {
      const int r = clip_radius(g, axis);
      lo = imax(i - r, 0); hi = imin(i + r, L - 1);
      return;
    }
    default: {  // NBHD
      const int k = nbhd_kernel(g, axis), d = nbhd_dilation(g, axis);
      const int st = nbhd_start(g, axis, i), grp = i % d;
      lo = st * d + grp; hi = (st + k - 1) * d + grp;
      return;
    }
  }
}

// Does a query at position i on `axis` see some key position in [a0, a1] on that axis?
// (Exact: NBHD keys are lo, lo + d, ..., hi; the other kinds see all of [lo, hi].)
TGF_HD bool axis_sees(const Geom& g, int axis, int i, int a0, int a1) {
  int l, h;
  axis_key_range(g, axis, i, l, h);
  if (l > a1 || h < a0) return false;
  if (g.kind != NBHD || l >= a0) return true;
  const int d = nbhd_dilation(g, axis);
  const int first = l + (a0 - l + d - 1) / d * d;  // first key >= a0
  return first <= imin(a1, h);
}

// Inclusive range [lo, hi] of key positions along `axis` visible to some query position in
// [a0, a0 + n).
TGF_HD void axis_candidate_keys(const Geom& g, int axis, int a0, int n, int& lo, int& hi) {
  lo = 1 << 30; hi = -1;
  for (int i = a0; i < a0 + n; ++i) {
    int l, h;
    axis_key_range(g, axis, i, l, h);
    lo = imin(lo, l); hi = imax(hi, h);
  }
}

// Inclusive range [lo, hi] of query positions along `axis` that see some key position in
// [a0, a0 + n). NBHD is not symmetric, so the axis is scanned (L is a map side); BAND's flat axis
// (L = N, possibly large) is symmetric and uses the closed form.
TGF_HD void axis_candidate_queries(const Geom& g, int axis, int a0, int n, int& lo, int& hi) {
  const int L = plane_len(g, axis), a1 = a0 + n - 1;
  if (g.kind == BAND && axis == X_AXIS) {
    lo = imax(a0 - band_width(g), 0); hi = imin(a1 + band_width(g), L - 1);
    return;
  }
  lo = 1 << 30; hi = -1;
  for (int i = 0; i < L; ++i)
    if (axis_sees(g, axis, i, a0, a1)) { lo = imin(lo, i); hi = imax(hi, i); }
}

// Candidates of query tile q: the bounding rectangle of every key some query of q sees.
TGF_HD Rect candidate_keys(const Geom& g, const Rect& q) {
  int y0, y1, x0, x1;
  axis_candidate_keys(g, Y_AXIS, q.y0, q.rows, y0, y1);
  axis_candidate_keys(g, X_AXIS, q.x0, q.cols, x0, x1);
  return Rect{y0, x0, y1 - y0 + 1, x1 - x0 + 1};
}

// Candidates of key tile k: the bounding rectangle of every query that sees some key of k
// (the transpose of candidate_keys).
TGF_HD Rect candidate_queries(const Geom& g, const Rect& k) {
  int y0, y1, x0, x1;
  axis_candidate_queries(g, Y_AXIS, k.y0, k.rows, y0, y1);
  axis_candidate_queries(g, X_AXIS, k.x0, k.cols, x0, x1);
  return Rect{y0, x0, y1 - y0 + 1, x1 - x0 + 1};
}

// Shape of the tiles of at most `t` tokens: rect_tile_rows x rect_tile_cols.
TGF_HD int rect_tile_cols(const Geom& g, int t) {
  if (g.kind == BAND) return imin(plane_cols(g), t);
  return imin(plane_cols(g), t >= 32 ? 8 : 4);
}
TGF_HD int rect_tile_rows(const Geom& g, int t) { return imax(1, t / rect_tile_cols(g, t)); }

// Tile number `idx` of the rect tiling (row-major over tiles; partial tiles at the borders).
TGF_HD Rect rect_tile(const Geom& g, int t, int idx) {
  const int tr = rect_tile_rows(g, t), tc = rect_tile_cols(g, t);
  const int ntx = cdiv(plane_cols(g), tc);
  const int y0 = (idx / ntx) * tr, x0 = (idx % ntx) * tc;
  return Rect{y0, x0, imin(tr, plane_rows(g) - y0), imin(tc, plane_cols(g) - x0)};
}
TGF_HD int rect_tile_count(const Geom& g, int t) {
  return cdiv(plane_rows(g), rect_tile_rows(g, t)) * cdiv(plane_cols(g), rect_tile_cols(g, t));
}

// =============================== List tiling (CPU) ===========================================

// GRID windows: how many per axis, the real length of window w (partial at the bottom/right),
// and the map token of in-window index l (rolled row-major) of window (wy, wx) with `cols`
// columns.
TGF_HD int grid_window_count(const Geom& g, int axis) {
  return cdiv(map_len(g, axis), grid_window(g, axis));
}
TGF_HD int grid_window_len(const Geom& g, int axis, int w) {
  return imin(grid_window(g, axis), map_len(g, axis) - w * grid_window(g, axis));
}
TGF_HD int grid_window_token(const Geom& g, int wy, int wx, int cols, int l) {
  const int ry = wy * grid_window(g, Y_AXIS) + l / cols, rx = wx * grid_window(g, X_AXIS) + l % cols;
  return grid_unrolled(g, Y_AXIS, ry) * g.W + grid_unrolled(g, X_AXIS, rx);
}
TGF_HD int grid_window_area(const Geom& g) { return grid_window(g, Y_AXIS) * grid_window(g, X_AXIS); }

// NBHD: length of dilation group `grp` of `axis`.
TGF_HD int nbhd_group_len(const Geom& g, int axis, int grp) {
  return cdiv(map_len(g, axis) - grp, nbhd_dilation(g, axis));
}

// CLIP and NBHD list tiles: the plane (the map for CLIP, one dilation group for NBHD), its
// largest extent, and the tile shape: near-square, list_tile_rows x list_tile_cols <= TQ.
TGF_HD int list_plane_count(const Geom& g) {
  return g.kind == NBHD ? nbhd_dilation(g, Y_AXIS) * nbhd_dilation(g, X_AXIS) : 1;
}
TGF_HD int list_plane_len(const Geom& g, int axis) {
  return g.kind == NBHD ? cdiv(map_len(g, axis), nbhd_dilation(g, axis)) : map_len(g, axis);
}
TGF_HD int list_tile_cols(const Geom& g, int TQ) {
  int c = 1;
  while (c * c < TQ) c *= 2;
  return imin(c, imin(TQ, list_plane_len(g, X_AXIS)));
}
TGF_HD int list_tile_rows(const Geom& g, int TQ) { return imax(1, TQ / list_tile_cols(g, TQ)); }
TGF_HD int list_tiles_per_plane(const Geom& g, int TQ) {
  return cdiv(list_plane_len(g, Y_AXIS), list_tile_rows(g, TQ)) *
         cdiv(list_plane_len(g, X_AXIS), list_tile_cols(g, TQ));
}

// CLIP / NBHD tile t: its plane's dilation group (gy, gx) ((0, 0) for CLIP) and its rectangle in
// plane coordinates, clipped to the plane (empty when the plane is shorter than the largest).
struct PlaneTile {
  int gy, gx;
  Rect r;
};
TGF_HD PlaneTile list_plane_tile(const Geom& g, int TQ, int t) {
  const int per = list_tiles_per_plane(g, TQ), pl = t / per, u = t % per;
  const int tr = list_tile_rows(g, TQ), tc = list_tile_cols(g, TQ);
  const int ntx = cdiv(list_plane_len(g, X_AXIS), tc);
  PlaneTile p{0, 0, Rect{(u / ntx) * tr, (u % ntx) * tc, 0, 0}};
  int ly = g.H, lx = g.W;
  if (g.kind == NBHD) {
    p.gy = pl / nbhd_dilation(g, X_AXIS);
    p.gx = pl % nbhd_dilation(g, X_AXIS);
    ly = nbhd_group_len(g, Y_AXIS, p.gy);
    lx = nbhd_group_len(g, X_AXIS, p.gx);
  }
  p.r.rows = imax(0, imin(tr, ly - p.r.y0));
  p.r.cols = imax(0, imin(tc, lx - p.r.x0));
  return p;
}

// Number of tiles of the geometry for tile size TQ.
TGF_HD int tile_count(const Geom& g, int TQ) {
  switch (g.kind) {
    case GRID:
      return grid_window_count(g, Y_AXIS) * grid_window_count(g, X_AXIS) *
             cdiv(grid_window_area(g), TQ);
    case BAND: return cdiv(g.H * g.W, TQ);
    default: return list_plane_count(g) * list_tiles_per_plane(g, TQ);  // CLIP, NBHD
  }
}

// Upper bound on the candidates of any tile.
TGF_HD int tile_max_candidates(const Geom& g, int TQ) {
  switch (g.kind) {
    case GRID: return grid_window_area(g);
    case BAND: return imin(g.H * g.W, TQ + 2 * band_width(g));
    case CLIP:
      return imin(list_tile_rows(g, TQ) + 2 * clip_radius(g, Y_AXIS), g.H) *
             imin(list_tile_cols(g, TQ) + 2 * clip_radius(g, X_AXIS), g.W);
    default:
      return imin(list_tile_rows(g, TQ) + nbhd_kernel(g, Y_AXIS) - 1, list_plane_len(g, Y_AXIS)) *
             imin(list_tile_cols(g, TQ) + nbhd_kernel(g, X_AXIS) - 1, list_plane_len(g, X_AXIS));
  }
}

// Visiting order of tiles: GRID tiles go chunk-major (the same chunk of every window in a row),
// so consecutive tiles of regular windows share their mask/bias table (grid_regular_chunk).
TGF_HD int tile_visit(const Geom& g, int TQ, int u) {
  if (g.kind != GRID) return u;
  const int chunks = cdiv(grid_window_area(g), TQ);
  const int nwin = grid_window_count(g, Y_AXIS) * grid_window_count(g, X_AXIS);
  return (u % nwin) * chunks + u / nwin;
}

// For a GRID tile whose window is full and lies in one shift region, the in-window chunk index
// (its per-pair mask and bias rows depend on nothing else); -1 for every other tile.
TGF_HD int grid_regular_chunk(const Geom& g, int TQ, int t) {
  if (g.kind != GRID) return -1;
  const int chunks = cdiv(grid_window_area(g), TQ), nwx = grid_window_count(g, X_AXIS);
  const int win = t / chunks, w[2] = {win / nwx, win % nwx};
  for (int ax = Y_AXIS; ax <= X_AXIS; ++ax) {
    const int M = grid_window(g, ax);
    if (grid_window_len(g, ax, w[ax]) != M) return -1;
    const int b = map_len(g, ax) - grid_shift(g, ax);  // first wrapped rolled position
    if (w[ax] * M < b && b < (w[ax] + 1) * M) return -1;
  }
  return t % chunks;
}

// Writes the queries of tile t into q (at most TQ) and returns how many.
TGF_HD int tile_queries(const Geom& g, int TQ, int t, int* q) {
  int n = 0;
  switch (g.kind) {
    case GRID: {
      const int chunks = cdiv(grid_window_area(g), TQ), nwx = grid_window_count(g, X_AXIS);
      const int win = t / chunks, c = t % chunks, wy = win / nwx, wx = win % nwx;
      const int rows = grid_window_len(g, Y_AXIS, wy), cols = grid_window_len(g, X_AXIS, wx);
      const int l1 = imin((c + 1) * TQ, rows * cols);
      for (int l = c * TQ; l < l1; ++l) q[n++] = grid_window_token(g, wy, wx, cols, l);
      return n;
    }
    case BAND: {
      const int i1 = imin((t + 1) * TQ, g.H * g.W);
      for (int i = t * TQ; i < i1; ++i) q[n++] = i;
      return n;
    }
    default: {  // CLIP, NBHD: a rectangle of the plane, row-major
      const PlaneTile p = list_plane_tile(g, TQ, t);
      const int d1 = g.kind == NBHD ? nbhd_dilation(g, Y_AXIS) : 1;
      const int d2 = g.kind == NBHD ? nbhd_dilation(g, X_AXIS) : 1;
      for (int a = p.r.y0; a < p.r.y0 + p.r.rows; ++a)
        for (int b = p.r.x0; b < p.r.x0 + p.r.cols; ++b) q[n++] = (a * d1 + p.gy) * g.W + b * d2 + p.gx;
      return n;
    }
  }
}

// Writes the candidate keys of tile t, whose queries are q[0..nq) (nq >= 1), into k; returns
// how many (at most tile_max_candidates).
TGF_HD int tile_candidates(const Geom& g, int TQ, int t, const int* q, int nq, int* k) {
  int n = 0;
  switch (g.kind) {
    case GRID: {
      const int chunks = cdiv(grid_window_area(g), TQ), nwx = grid_window_count(g, X_AXIS);
      const int win = t / chunks, wy = win / nwx, wx = win % nwx;
      const int rows = grid_window_len(g, Y_AXIS, wy), cols = grid_window_len(g, X_AXIS, wx);
      for (int l = 0; l < rows * cols; ++l) k[n++] = grid_window_token(g, wy, wx, cols, l);
      return n;
    }
    case BAND: {
      const int j0 = imax(q[0] - band_width(g), 0);
      const int j1 = imin(q[nq - 1] + band_width(g) + 1, g.H * g.W);
      for (int j = j0; j < j1; ++j) k[n++] = j;
      return n;
    }
    case CLIP: {  // the tile's rectangle grown by the radii: the rect tiling's candidate_keys
      const Rect c = candidate_keys(g, list_plane_tile(g, TQ, t).r);
      for (int i = 0; i < rect_size(c); ++i) k[n++] = rect_token(c, g.W, i);
      return n;
    }
    default: {  // NBHD: per axis, start(first) .. start(last) + k - 1 of the tile's group
      const int d1 = nbhd_dilation(g, Y_AXIS), d2 = nbhd_dilation(g, X_AXIS);
      const int ya = q[0] / g.W, xa = q[0] % g.W, yb = q[nq - 1] / g.W, xb = q[nq - 1] % g.W;
      const int sya = nbhd_start(g, Y_AXIS, ya), syb = nbhd_start(g, Y_AXIS, yb);
      const int sxa = nbhd_start(g, X_AXIS, xa), sxb = nbhd_start(g, X_AXIS, xb);
      for (int iy = sya; iy < syb + nbhd_kernel(g, Y_AXIS); ++iy)
        for (int ix = sxa; ix < sxb + nbhd_kernel(g, X_AXIS); ++ix)
          k[n++] = (iy * d1 + ya % d1) * g.W + ix * d2 + xa % d2;
      return n;
    }
  }
}

// Per-token coordinates that turn visibility inside a tile into a few integer comparisons:
// key j is visible to query i iff cls matches and (ay, ax) of j lies in i's box; the bias row
// comes from the difference of (by, bx) (offset_bias_row).
struct QueryMeta { int cls, ylo, yhi, xlo, xhi, by, bx; };
struct KeyMeta { int cls, ay, ax, by, bx; };

TGF_HD KeyMeta key_meta(const Geom& g, int t) {
  const int y = t / g.W, x = t % g.W;
  const int by = bias_coord(g, Y_AXIS, y), bx = bias_coord(g, X_AXIS, x);
  switch (g.kind) {
    case GRID: {
      // Same window is guaranteed by the tile; the region (wrap status) must match.
      const int wy = grid_wrapped(g, Y_AXIS, grid_rolled(g, Y_AXIS, y));
      const int wx = grid_wrapped(g, X_AXIS, grid_rolled(g, X_AXIS, x));
      return {wy * 2 + wx, 0, 0, by, bx};
    }
    case BAND: return {0, t, 0, by, bx};
    case CLIP: return {0, y, x, by, bx};
    default: {  // NBHD: the dilation class, and group coordinates (= bias coordinates)
      const int d1 = nbhd_dilation(g, Y_AXIS), d2 = nbhd_dilation(g, X_AXIS);
      return {(y % d1) * d2 + x % d2, by, bx, by, bx};
    }
  }
}

TGF_HD QueryMeta query_meta(const Geom& g, int t) {
  const int y = t / g.W, x = t % g.W;
  const KeyMeta m = key_meta(g, t);
  switch (g.kind) {
    case GRID: return {m.cls, 0, 0, 0, 0, m.by, m.bx};
    case BAND: return {0, t - band_width(g), t + band_width(g), 0, 0, m.by, m.bx};
    case CLIP: {
      const int r1 = clip_radius(g, Y_AXIS), r2 = clip_radius(g, X_AXIS);
      return {0, y - r1, y + r1, x - r2, x + r2, m.by, m.bx};
    }
    default: {
      const int sy = nbhd_start(g, Y_AXIS, y), sx = nbhd_start(g, X_AXIS, x);
      return {m.cls, sy, sy + nbhd_kernel(g, Y_AXIS) - 1, sx, sx + nbhd_kernel(g, X_AXIS) - 1,
              m.by, m.bx};
    }
  }
}

TGF_HD bool meta_visible(const QueryMeta& q, int kcls, int kay, int kax) {
  return kcls == q.cls && kay >= q.ylo && kay <= q.yhi && kax >= q.xlo && kax <= q.xhi;
}

TGF_HD int meta_bias_row(const Geom& g, int qby, int qbx, int kby, int kbx) {
  return offset_bias_row(g, qby - kby, qbx - kbx);
}

}  // namespace tgf
