// Attention geometry: which key each query sees and which relative-bias row it adds.
//
// C++ twin of transgan_fast/ops/geometry.py (read its docstring for the definitions); usable
// from host and device code, so the CPU test-suite also covers the arithmetic the CUDA kernels use.
// The Python side passes the geometry as 9 ints: [H, W, kind, p0, p1, p2, p3, B1, B2]
// (`geom_from_list`). What p0..p3 mean depends on the kind; read them only through the named
// accessors below (grid_window, grid_shift, band_width, clip_radius, nbhd_kernel, nbhd_dilation),
// the one place that layout is written in C++. docs/kernels.md has the whole picture.
#pragma once
#include <cstdint>
#include "common/macros.h"

namespace tgf {

enum Kind : int { GRID = 0, BAND = 1, CLIP = 2, NBHD = 3 };

// Map axes: every per-axis accessor takes one of these.
enum Axis : int { Y_AXIS = 0, X_AXIS = 1 };

struct Geom {
  int H, W, kind;
  int p0, p1, p2, p3;  // kind-dependent parameters: use the accessors below
  int B1, B2;          // relative-bias table half-size: (2*B1-1)*(2*B2-1) rows
};

// The 9-int list of AttnGeometry.as_list() (transgan_fast/ops/geometry.py).
TGF_HD Geom geom_from_list(const int* g) {
  return Geom{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
}

// ---- Named geometry parameters, per kind (axis: Y_AXIS = rows, X_AXIS = columns). -----------
// GRID: windows (M1, M2) with cyclic shift (s1, s2)             p = (M1, M2, s1, s2)
TGF_HD int grid_window(const Geom& g, int axis) { return axis == Y_AXIS ? g.p0 : g.p1; }
TGF_HD int grid_shift(const Geom& g, int axis) { return axis == Y_AXIS ? g.p2 : g.p3; }
// BAND: |i - j| <= width on the flat index                       p = (width, 0, 0, 0)
TGF_HD int band_width(const Geom& g) { return g.p0; }
// CLIP: |dy| <= r1, |dx| <= r2                                   p = (r1, r2, 0, 0)
TGF_HD int clip_radius(const Geom& g, int axis) { return axis == Y_AXIS ? g.p0 : g.p1; }
// NBHD: NATTEN kernel (k1, k2) and dilation (d1, d2)             p = (k1, k2, d1, d2)
TGF_HD int nbhd_kernel(const Geom& g, int axis) { return axis == Y_AXIS ? g.p0 : g.p1; }
TGF_HD int nbhd_dilation(const Geom& g, int axis) { return axis == Y_AXIS ? g.p2 : g.p3; }
// Rows of the relative-bias table.
TGF_HD int bias_table_rows(const Geom& g) { return (2 * g.B1 - 1) * (2 * g.B2 - 1); }
// Map side along an axis.
TGF_HD int map_len(const Geom& g, int axis) { return axis == Y_AXIS ? g.H : g.W; }

TGF_HD int imod(int a, int m) { int r = a % m; return r < 0 ? r + m : r; }
TGF_HD int imin(int a, int b) { return a < b ? a : b; }
TGF_HD int imax(int a, int b) { return a > b ? a : b; }
TGF_HD int iabs(int a) { return a < 0 ? -a : a; }

// What is wrong with a geometry the kernels are handed, or nullptr when it is valid for N tokens
// (the Python constructors in geometry.py check the same with fuller messages).
inline const char* geom_error(const Geom& g, int64_t N, bool has_bias) {
  if (g.H < 1 || g.W < 1 || static_cast<int64_t>(g.H) * g.W != N)
    return "geometry H * W must equal the token count N";
  switch (g.kind) {
    case GRID:
      for (int ax = Y_AXIS; ax <= X_AXIS; ++ax)
        if (grid_window(g, ax) < 1 || grid_window(g, ax) > map_len(g, ax) ||
            grid_shift(g, ax) < 0 || grid_shift(g, ax) >= grid_window(g, ax))
          return "grid geometry needs 1 <= window <= hw and 0 <= shift < window";
      break;
    case BAND: if (band_width(g) < 0) return "band width must be >= 0"; break;
    case CLIP:
      if (clip_radius(g, Y_AXIS) < 0 || clip_radius(g, X_AXIS) < 0) return "clip radii must be >= 0";
      break;
    case NBHD:
      for (int ax = Y_AXIS; ax <= X_AXIS; ++ax)
        if (nbhd_kernel(g, ax) < 1 || nbhd_dilation(g, ax) < 1 ||
            nbhd_kernel(g, ax) * nbhd_dilation(g, ax) > map_len(g, ax))
          return "neighbourhood geometry needs k, dilation >= 1 and k * dilation <= hw";
      break;
    default: return "geometry kind must be 0..3";
  }
  if (has_bias && (g.B1 < 1 || g.B2 < 1)) return "bias table half-size must be >= 1";
  return nullptr;
}

// NATTEN: first key (in dilation-group units) of the neighbourhood of position i on an axis.
TGF_HD int nbhd_start(int i, int L, int k, int d) {
  int grp = i % d, ig = i / d;
  int Lg = (L - grp + d - 1) / d;
  return imin(imax(ig - k / 2, 0), Lg - k);
}
// The same for position i on `axis` of geometry g.
TGF_HD int nbhd_start(const Geom& g, int axis, int i) {
  return nbhd_start(i, map_len(g, axis), nbhd_kernel(g, axis), nbhd_dilation(g, axis));
}

// Rolled (shifted-window) coordinate of y on an axis of length L with shift s.
TGF_HD int rolled(int y, int L, int s) { return imod(y - s, L); }
// GRID: rolled coordinate of map position i on `axis`, and back.
TGF_HD int grid_rolled(const Geom& g, int axis, int i) {
  return rolled(i, map_len(g, axis), grid_shift(g, axis));
}
TGF_HD int grid_unrolled(const Geom& g, int axis, int r) {
  return (r + grid_shift(g, axis)) % map_len(g, axis);
}
// GRID: does rolled position r lie in the wrapped region of `axis` (Swin's shift mask)?
TGF_HD bool grid_wrapped(const Geom& g, int axis, int r) {
  return r >= map_len(g, axis) - grid_shift(g, axis);
}

// Does query token qi see key token kj?
TGF_HD bool visible(const Geom& g, int qi, int kj) {
  const int yi = qi / g.W, xi = qi % g.W, yj = kj / g.W, xj = kj % g.W;
  switch (g.kind) {
    case GRID: {
      const int ryi = grid_rolled(g, Y_AXIS, yi), rxi = grid_rolled(g, X_AXIS, xi);
      const int ryj = grid_rolled(g, Y_AXIS, yj), rxj = grid_rolled(g, X_AXIS, xj);
      const int M1 = grid_window(g, Y_AXIS), M2 = grid_window(g, X_AXIS);
      if (ryi / M1 != ryj / M1 || rxi / M2 != rxj / M2) return false;
      return grid_wrapped(g, Y_AXIS, ryi) == grid_wrapped(g, Y_AXIS, ryj) &&
             grid_wrapped(g, X_AXIS, rxi) == grid_wrapped(g, X_AXIS, rxj);
    }
    case BAND:
      return iabs(qi - kj) <= band_width(g);
    case CLIP:
      return iabs(yi - yj) <= clip_radius(g, Y_AXIS) && iabs(xi - xj) <= clip_radius(g, X_AXIS);
    default: {  // NBHD
      const int d1 = nbhd_dilation(g, Y_AXIS), d2 = nbhd_dilation(g, X_AXIS);
      if (yi % d1 != yj % d1 || xi % d2 != xj % d2) return false;
      const int sy = nbhd_start(g, Y_AXIS, yi), sx = nbhd_start(g, X_AXIS, xi);
      const int gy = yj / d1, gx = xj / d2;
      return gy >= sy && gy < sy + nbhd_kernel(g, Y_AXIS) && gx >= sx &&
             gx < sx + nbhd_kernel(g, X_AXIS);
    }
  }
}

// Position of map coordinate c on `axis` in the kind's bias coordinates: GRID in-window rolled
// offset, NBHD dilation-group index, else the coordinate itself.
TGF_HD int bias_coord(const Geom& g, int axis, int c) {
  if (g.kind == GRID) return grid_rolled(g, axis, c) % grid_window(g, axis);
  if (g.kind == NBHD) return c / nbhd_dilation(g, axis);
  return c;
}

// Relative-bias table row of the bias-coordinate offset (query - key) = (dy, dx), clamped to the
// table.
TGF_HD int offset_bias_row(const Geom& g, int dy, int dx) {
  dy = imin(imax(dy, -(g.B1 - 1)), g.B1 - 1);
  dx = imin(imax(dx, -(g.B2 - 1)), g.B2 - 1);
  return (dy + g.B1 - 1) * (2 * g.B2 - 1) + (dx + g.B2 - 1);
}

// Relative-bias table row for (query qi, key kj); only meaningful where visible().
TGF_HD int bias_row(const Geom& g, int qi, int kj) {
  const int yi = qi / g.W, xi = qi % g.W, yj = kj / g.W, xj = kj % g.W;
  return offset_bias_row(g, bias_coord(g, Y_AXIS, yi) - bias_coord(g, Y_AXIS, yj),
                         bias_coord(g, X_AXIS, xi) - bias_coord(g, X_AXIS, xj));
}

}  // namespace tgf
