// Tiling of masked attention by geometry: which queries form a tile and which keys it can see.
//
// A tile is a small set of queries whose visible keys all lie in one compact candidate set, so a
// kernel computes logits only against those candidates and never touches keys that the geometry
// masks for the whole tile; cost grows as N * (keys per query), not N^2. Per kind:
//   GRID  a tile is up to TQ tokens of one window (rolled row-major order); candidates: the window.
//   BAND  TQ consecutive tokens [i0, i1); candidates [i0 - w, i1 + w) clipped to [0, N).
//   CLIP  TQ consecutive tokens of one map row; candidates: rows y-r1..y+r1 x cols x0-r2..x1+r2.
//   NBHD  TQ tokens of one row and one column-dilation group, consecutive in group index;
//         candidates: the k1 neighbourhood rows x the union of the tile's column neighbourhoods.
// Tiles partition the queries exactly (every query in one tile; some tiles of partial windows
// are empty). Inside a tile, the exact per-pair rule is `meta_visible` on `QueryMeta`/`KeyMeta`,
// which together with the tile's candidate set is equivalent to `visible()` in geometry.h
// (tests compare the kernels against the dense reference mask).
// Pure index math, usable from host and device code.
#pragma once
#include "common/geometry.h"

namespace tgf {

TGF_HD int cdiv(int a, int b) { return (a + b - 1) / b; }

// Number of tiles of the geometry for tile size TQ.
TGF_HD int tile_count(const Geom& g, int TQ) {
  switch (g.kind) {
    case GRID: return cdiv(g.H, g.p0) * cdiv(g.W, g.p1) * cdiv(g.p0 * g.p1, TQ);
    case BAND: return cdiv(g.H * g.W, TQ);
    case CLIP: return g.H * cdiv(g.W, TQ);
    default: return g.H * g.p3 * cdiv(cdiv(g.W, g.p3), TQ);  // NBHD
  }
}

// Upper bound on the candidate keys of any tile.
TGF_HD int tile_max_keys(const Geom& g, int TQ) {
  switch (g.kind) {
    case GRID: return g.p0 * g.p1;
    case BAND: return imin(g.H * g.W, TQ + 2 * g.p0);
    case CLIP: return imin(2 * g.p0 + 1, g.H) * imin(TQ + 2 * g.p1, g.W);
    default: return g.p0 * imin(TQ + g.p1 - 1, cdiv(g.W, g.p3));
  }
}

// GRID helpers: window (wy, wx) real extent and token of in-window index l.
TGF_HD int grid_win_rows(const Geom& g, int wy) { return imin(g.p0, g.H - wy * g.p0); }
TGF_HD int grid_win_cols(const Geom& g, int wx) { return imin(g.p1, g.W - wx * g.p1); }
TGF_HD int grid_token(const Geom& g, int wy, int wx, int cols, int l) {
  int ry = wy * g.p0 + l / cols, rx = wx * g.p1 + l % cols;
  return ((ry + g.p2) % g.H) * g.W + (rx + g.p3) % g.W;
}

// Visiting order of tiles: GRID tiles go chunk-major (the same chunk of every window in a row),
// so consecutive tiles of regular windows share their mask/bias table (grid_regular_chunk).
TGF_HD int tile_visit(const Geom& g, int TQ, int u) {
  if (g.kind != GRID) return u;
  const int chunks = cdiv(g.p0 * g.p1, TQ), nwin = cdiv(g.H, g.p0) * cdiv(g.W, g.p1);
  return (u % nwin) * chunks + u / nwin;
}

// For a GRID tile whose window is full and lies in one shift region, the in-window chunk index
// (its per-pair mask and bias rows depend on nothing else); -1 for every other tile.
TGF_HD int grid_regular_chunk(const Geom& g, int TQ, int t) {
  if (g.kind != GRID) return -1;
  const int chunks = cdiv(g.p0 * g.p1, TQ), nwx = cdiv(g.W, g.p1);
  const int win = t / chunks, wy = win / nwx, wx = win % nwx;
  if (grid_win_rows(g, wy) != g.p0 || grid_win_cols(g, wx) != g.p1) return -1;
  const int by = g.H - g.p2, bx = g.W - g.p3;  // first wrapped rolled row / column
  if (wy * g.p0 < by && by < (wy + 1) * g.p0) return -1;
  if (wx * g.p1 < bx && bx < (wx + 1) * g.p1) return -1;
  return t % chunks;
}

// Writes the tile's query tokens into q (at most TQ) and returns how many.
TGF_HD int tile_queries(const Geom& g, int TQ, int t, int* q) {
  int n = 0;
  switch (g.kind) {
    case GRID: {
      int chunks = cdiv(g.p0 * g.p1, TQ), nwx = cdiv(g.W, g.p1);
      int win = t / chunks, c = t % chunks, wy = win / nwx, wx = win % nwx;
      int rows = grid_win_rows(g, wy), cols = grid_win_cols(g, wx);
      int l1 = imin((c + 1) * TQ, rows * cols);
      for (int l = c * TQ; l < l1; ++l) q[n++] = grid_token(g, wy, wx, cols, l);
      return n;
    }
    case BAND: {
      int i1 = imin((t + 1) * TQ, g.H * g.W);
      for (int i = t * TQ; i < i1; ++i) q[n++] = i;
      return n;
    }
    case CLIP: {
      int chunks = cdiv(g.W, TQ), y = t / chunks, x0 = (t % chunks) * TQ;
      int x1 = imin(x0 + TQ, g.W);
      for (int x = x0; x < x1; ++x) q[n++] = y * g.W + x;
      return n;
    }
    default: {  // NBHD
      int chunks = cdiv(cdiv(g.W, g.p3), TQ);
      int y = t / (g.p3 * chunks), r = t % (g.p3 * chunks), gx = r / chunks, c = r % chunks;
      int Lg = (g.W - gx + g.p3 - 1) / g.p3;
      int i1 = imin((c + 1) * TQ, Lg);
      for (int i = c * TQ; i < i1; ++i) q[n++] = y * g.W + i * g.p3 + gx;
      return n;
    }
  }
}

// Writes the candidate keys of the tile whose queries are q[0..nq) (nq >= 1) into k; returns
// how many (at most tile_max_keys).
TGF_HD int tile_keys(const Geom& g, int TQ, int t, const int* q, int nq, int* k) {
  int n = 0;
  switch (g.kind) {
    case GRID: {
      int chunks = cdiv(g.p0 * g.p1, TQ), nwx = cdiv(g.W, g.p1);
      int win = t / chunks, wy = win / nwx, wx = win % nwx;
      int rows = grid_win_rows(g, wy), cols = grid_win_cols(g, wx);
      for (int l = 0; l < rows * cols; ++l) k[n++] = grid_token(g, wy, wx, cols, l);
      return n;
    }
    case BAND: {
      int j0 = imax(q[0] - g.p0, 0), j1 = imin(q[nq - 1] + g.p0 + 1, g.H * g.W);
      for (int j = j0; j < j1; ++j) k[n++] = j;
      return n;
    }
    case CLIP: {
      int y = q[0] / g.W, xa = q[0] % g.W, xb = q[nq - 1] % g.W;
      int y0 = imax(y - g.p0, 0), y1 = imin(y + g.p0, g.H - 1);
      int x0 = imax(xa - g.p1, 0), x1 = imin(xb + g.p1, g.W - 1);
      for (int yy = y0; yy <= y1; ++yy)
        for (int x = x0; x <= x1; ++x) k[n++] = yy * g.W + x;
      return n;
    }
    default: {  // NBHD
      int y = q[0] / g.W, xa = q[0] % g.W, xb = q[nq - 1] % g.W, gy = y % g.p2, gx = xa % g.p3;
      int sy = nbhd_start(y, g.H, g.p0, g.p2);
      int sxa = nbhd_start(xa, g.W, g.p1, g.p3), sxb = nbhd_start(xb, g.W, g.p1, g.p3);
      for (int ty = 0; ty < g.p0; ++ty) {
        int yy = (sy + ty) * g.p2 + gy;
        for (int ix = sxa; ix < sxb + g.p1; ++ix) k[n++] = yy * g.W + ix * g.p3 + gx;
      }
      return n;
    }
  }
}

// Per-token coordinates that turn visibility inside a tile into a few integer comparisons:
// key j is visible to query i iff cls matches and (ay, ax) of j lies in i's box; the bias row
// comes from the difference of (by, bx).
struct QueryMeta { int cls, ylo, yhi, xlo, xhi, by, bx; };
struct KeyMeta { int cls, ay, ax, by, bx; };

TGF_HD void grid_rolled(const Geom& g, int t, int& ry, int& rx) {
  ry = rolled(t / g.W, g.H, g.p2);
  rx = rolled(t % g.W, g.W, g.p3);
}

TGF_HD KeyMeta key_meta(const Geom& g, int t) {
  int y = t / g.W, x = t % g.W;
  switch (g.kind) {
    case GRID: {
      int ry, rx;
      grid_rolled(g, t, ry, rx);
      // Same window is guaranteed by the tile; the region (wrap status) must match.
      return {(ry >= g.H - g.p2) * 2 + (rx >= g.W - g.p3), 0, 0, ry % g.p0, rx % g.p1};
    }
    case BAND: return {0, t, 0, y, x};
    case CLIP: return {0, y, x, y, x};
    default: return {(y % g.p2) * g.p3 + x % g.p3, y / g.p2, x / g.p3, y / g.p2, x / g.p3};
  }
}

TGF_HD QueryMeta query_meta(const Geom& g, int t) {
  int y = t / g.W, x = t % g.W;
  switch (g.kind) {
    case GRID: {
      KeyMeta m = key_meta(g, t);
      return {m.cls, 0, 0, 0, 0, m.by, m.bx};
    }
    case BAND: return {0, t - g.p0, t + g.p0, 0, 0, y, x};
    case CLIP: return {0, y - g.p0, y + g.p0, x - g.p1, x + g.p1, y, x};
    default: {
      int sy = nbhd_start(y, g.H, g.p0, g.p2), sx = nbhd_start(x, g.W, g.p1, g.p3);
      return {(y % g.p2) * g.p3 + x % g.p3, sy, sy + g.p0 - 1, sx, sx + g.p1 - 1, y / g.p2, x / g.p3};
    }
  }
}

TGF_HD bool meta_visible(const QueryMeta& q, int kcls, int kay, int kax) {
  return kcls == q.cls && kay >= q.ylo && kay <= q.yhi && kax >= q.xlo && kax <= q.xhi;
}

TGF_HD int meta_bias_row(const Geom& g, int qby, int qbx, int kby, int kbx) {
  int dy = imin(imax(qby - kby, -(g.B1 - 1)), g.B1 - 1);
  int dx = imin(imax(qbx - kbx, -(g.B2 - 1)), g.B2 - 1);
  return (dy + g.B1 - 1) * (2 * g.B2 - 1) + (dx + g.B2 - 1);
}

}  // namespace tgf
