// Neighbour slots: the K keys each query sees, in the slot order of transgan_fast/ops/neighbours.py
// (read its docstring for the layout per kind). Host/device code, like common/geometry.h.
#pragma once
#include "common/geometry.h"

namespace tgf {

// K, the number of slots per query.
TGF_HD int num_slots(const Geom& g) {
  switch (g.kind) {
    case GRID: return g.p0 * g.p1;
    case BAND: return 2 * imin(g.p0, g.H * g.W - 1) + 1;
    case CLIP: return (2 * imin(g.p0, g.H - 1) + 1) * (2 * imin(g.p1, g.W - 1) + 1);
    default: return g.p0 * g.p1;  // NBHD
  }
}

// The key token of slot s of query qi, or -1 where the slot is empty.
TGF_HD int slot_key(const Geom& g, int qi, int s) {
  const int y = qi / g.W, x = qi % g.W;
  switch (g.kind) {
    case GRID: {
      const int M1 = g.p0, M2 = g.p1, s1 = g.p2, s2 = g.p3;
      const int ry = rolled(y, g.H, s1), rx = rolled(x, g.W, s2);
      const int ky = (ry / M1) * M1 + s / M2, kx = (rx / M2) * M2 + s % M2;
      const bool ok = ky < g.H && kx < g.W && ((ky >= g.H - s1) == (ry >= g.H - s1)) &&
                      ((kx >= g.W - s2) == (rx >= g.W - s2));
      return ok ? ((ky + s1) % g.H) * g.W + (kx + s2) % g.W : -1;
    }
    case BAND: {
      const int N = g.H * g.W, key = qi - imin(g.p0, N - 1) + s;
      return key >= 0 && key < N ? key : -1;
    }
    case CLIP: {
      const int r1 = imin(g.p0, g.H - 1), r2 = imin(g.p1, g.W - 1), n2 = 2 * r2 + 1;
      const int ky = y - r1 + s / n2, kx = x - r2 + s % n2;
      return ky >= 0 && ky < g.H && kx >= 0 && kx < g.W ? ky * g.W + kx : -1;
    }
    default: {  // NBHD: never empty
      const int ky = (nbhd_start(y, g.H, g.p0, g.p2) + s / g.p1) * g.p2 + y % g.p2;
      const int kx = (nbhd_start(x, g.W, g.p1, g.p3) + s % g.p1) * g.p3 + x % g.p3;
      return ky * g.W + kx;
    }
  }
}

}  // namespace tgf
