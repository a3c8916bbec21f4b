// Attention geometry: which key each query sees and which relative-bias row it adds.
//
// C++ twin of transgan_fast/ops/geometry.py (read its docstring for the definitions); usable
// from host and device code, so the CPU test-suite also covers the arithmetic the CUDA kernels use.
// The Python side passes the geometry as 9 ints: [H, W, kind, p0, p1, p2, p3, B1, B2].
#pragma once
#include <cstdint>
#include "common/macros.h"

namespace tgf {

enum Kind : int { GRID = 0, BAND = 1, CLIP = 2, NBHD = 3 };

struct Geom {
  int H, W, kind;
  int p0, p1, p2, p3;  // GRID: M1, M2, s1, s2 | BAND: width | CLIP: r1, r2 | NBHD: k1, k2, d1, d2
  int B1, B2;          // relative-bias table half-size: (2*B1-1)*(2*B2-1) rows
};

TGF_HD int imod(int a, int m) { int r = a % m; return r < 0 ? r + m : r; }
TGF_HD int imin(int a, int b) { return a < b ? a : b; }
TGF_HD int imax(int a, int b) { return a > b ? a : b; }
TGF_HD int iabs(int a) { return a < 0 ? -a : a; }

// NATTEN: first key (in dilation-group units) of the neighbourhood of position i on an axis.
TGF_HD int nbhd_start(int i, int L, int k, int d) {
  int g = i % d, ig = i / d;
  int Lg = (L - g + d - 1) / d;
  return imin(imax(ig - k / 2, 0), Lg - k);
}

// Rolled (shifted-window) coordinate of y on an axis of length L with shift s.
TGF_HD int rolled(int y, int L, int s) { return imod(y - s, L); }

// Does query token qi see key token kj?
TGF_HD bool visible(const Geom& g, int qi, int kj) {
  int yi = qi / g.W, xi = qi % g.W, yj = kj / g.W, xj = kj % g.W;
  switch (g.kind) {
    case GRID: {
      int ryi = rolled(yi, g.H, g.p2), rxi = rolled(xi, g.W, g.p3);
      int ryj = rolled(yj, g.H, g.p2), rxj = rolled(xj, g.W, g.p3);
      if (ryi / g.p0 != ryj / g.p0 || rxi / g.p1 != rxj / g.p1) return false;
      return ((ryi >= g.H - g.p2) == (ryj >= g.H - g.p2)) &&
             ((rxi >= g.W - g.p3) == (rxj >= g.W - g.p3));
    }
    case BAND:
      return iabs(qi - kj) <= g.p0;
    case CLIP:
      return iabs(yi - yj) <= g.p0 && iabs(xi - xj) <= g.p1;
    default: {  // NBHD
      if (yi % g.p2 != yj % g.p2 || xi % g.p3 != xj % g.p3) return false;
      int sy = nbhd_start(yi, g.H, g.p0, g.p2), sx = nbhd_start(xi, g.W, g.p1, g.p3);
      int gy = yj / g.p2, gx = xj / g.p3;
      return gy >= sy && gy < sy + g.p0 && gx >= sx && gx < sx + g.p1;
    }
  }
}

// Relative-bias table row for (query qi, key kj); only meaningful where visible().
TGF_HD int bias_row(const Geom& g, int qi, int kj) {
  int yi = qi / g.W, xi = qi % g.W, yj = kj / g.W, xj = kj % g.W;
  int cyi = yi, cxi = xi, cyj = yj, cxj = xj;
  if (g.kind == GRID) {
    cyi = rolled(yi, g.H, g.p2) % g.p0; cxi = rolled(xi, g.W, g.p3) % g.p1;
    cyj = rolled(yj, g.H, g.p2) % g.p0; cxj = rolled(xj, g.W, g.p3) % g.p1;
  } else if (g.kind == NBHD) {
    cyi = yi / g.p2; cxi = xi / g.p3; cyj = yj / g.p2; cxj = xj / g.p3;
  }
  int dy = imin(imax(cyi - cyj, -(g.B1 - 1)), g.B1 - 1);
  int dx = imin(imax(cxi - cxj, -(g.B2 - 1)), g.B2 - 1);
  return (dy + g.B1 - 1) * (2 * g.B2 - 1) + (dx + g.B2 - 1);
}

}  // namespace tgf
