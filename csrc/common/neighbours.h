// Neighbour slots: the key in slot s of query i, and the other way round, the queries that see
// key m and the slot in which each holds it.
//
// C++ twin of transgan_fast/ops/neighbours.py (its docstring fixes the layout) and of
// transgan_fast/ops/_triton/sparse.py; host+device, so tests/test_neighbours_cpp.py checks on the
// CPU the arithmetic the CUDA sparse kernels (cuda/sparse_attn.cu) run.
#pragma once
#include "common/geometry.h"

namespace tgf {

// The slot layout: K = rows * cols slots; slot s is row s / cols, column s % cols of the
// neighbourhood (GRID (M1, M2), BAND (1, 2w'+1), CLIP (2r1'+1, 2r2'+1), NBHD (k1, k2)).
struct SlotGrid {
  int rows, cols;
};

TGF_HD SlotGrid slot_grid(const Geom& g) {
  switch (g.kind) {
    case GRID: return SlotGrid{g.p0, g.p1};
    case BAND: return SlotGrid{1, 2 * imin(g.p0, g.H * g.W - 1) + 1};
    case CLIP: return SlotGrid{2 * imin(g.p0, g.H - 1) + 1, 2 * imin(g.p1, g.W - 1) + 1};
    default: return SlotGrid{g.p0, g.p1};
  }
}

// K, the number of slots per query.
TGF_HD int num_slots(const Geom& g) {
  const SlotGrid sg = slot_grid(g);
  return sg.rows * sg.cols;
}

// Key token in slot s of query i, or -1 when the slot is empty.
TGF_HD int slot_key(const Geom& g, const SlotGrid& sg, int i, int s) {
  const int y = i / g.W, x = i % g.W, a = s / sg.cols, b = s % sg.cols;
  switch (g.kind) {
    case GRID: {  // the query's window in rolled coordinates, same wrap region only
      const int ry = rolled(y, g.H, g.p2), rx = rolled(x, g.W, g.p3);
      const int ky = ry / g.p0 * g.p0 + a, kx = rx / g.p1 * g.p1 + b;
      if (ky >= g.H || kx >= g.W) return -1;
      if ((ky >= g.H - g.p2) != (ry >= g.H - g.p2) || (kx >= g.W - g.p3) != (rx >= g.W - g.p3))
        return -1;
      return ((ky + g.p2) % g.H) * g.W + (kx + g.p3) % g.W;
    }
    case BAND: {
      const int k = i - (sg.cols - 1) / 2 + b;
      return k >= 0 && k < g.H * g.W ? k : -1;
    }
    case CLIP: {
      const int ky = y - (sg.rows - 1) / 2 + a, kx = x - (sg.cols - 1) / 2 + b;
      return ky >= 0 && ky < g.H && kx >= 0 && kx < g.W ? ky * g.W + kx : -1;
    }
    default: {  // NBHD: never empty
      const int ky = (nbhd_start(y, g.H, g.p0, g.p2) + a) * g.p2 + y % g.p2;
      const int kx = (nbhd_start(x, g.W, g.p1, g.p3) + b) * g.p3 + x % g.p3;
      return ky * g.W + kx;
    }
  }
}

TGF_HD int slot_key(const Geom& g, int i, int s) { return slot_key(g, slot_grid(g), i, s); }

// Slot of query i that holds key m; only meaningful when i sees m.
TGF_HD int key_slot(const Geom& g, const SlotGrid& sg, int i, int m) {
  const int y = i / g.W, x = i % g.W, ym = m / g.W, xm = m % g.W;
  switch (g.kind) {
    case GRID: {
      const int ry = rolled(y, g.H, g.p2), rx = rolled(x, g.W, g.p3);
      return (rolled(ym, g.H, g.p2) - ry / g.p0 * g.p0) * sg.cols +
             rolled(xm, g.W, g.p3) - rx / g.p1 * g.p1;
    }
    case BAND: return m - i + (sg.cols - 1) / 2;
    case CLIP: return (ym - y + (sg.rows - 1) / 2) * sg.cols + xm - x + (sg.cols - 1) / 2;
    default:
      return (ym / g.p2 - nbhd_start(y, g.H, g.p0, g.p2)) * sg.cols +
             xm / g.p3 - nbhd_start(x, g.W, g.p1, g.p3);
  }
}

// Key that query i sees at relative-bias table row r, or -1 when there is none: geometry.h's
// bias_row inverted (the offset is query minus key in the kind's bias coordinates). No table
// clamps the offset of a visible pair, so this is the one key with bias_row(g, i, key) == r.
TGF_HD int offset_key(const Geom& g, int i, int r) {
  const int dy = r / (2 * g.B2 - 1) - (g.B1 - 1), dx = r % (2 * g.B2 - 1) - (g.B2 - 1);
  const int y = i / g.W, x = i % g.W;
  int ky = y - dy, kx = x - dx;
  if (g.kind == GRID) {  // in-window offsets of rolled coordinates
    const int ry = rolled(y, g.H, g.p2), rx = rolled(x, g.W, g.p3), kry = ry - dy, krx = rx - dx;
    if (kry < 0 || krx < 0 || kry >= g.H || krx >= g.W || kry / g.p0 != ry / g.p0 ||
        krx / g.p1 != rx / g.p1)
      return -1;
    ky = (kry + g.p2) % g.H;
    kx = (krx + g.p3) % g.W;
  } else if (g.kind == NBHD) {  // offsets in dilation-group units
    ky = y - dy * g.p2;
    kx = x - dx * g.p3;
  }
  if (ky < 0 || ky >= g.H || kx < 0 || kx >= g.W) return -1;
  const int k = ky * g.W + kx;
  return visible(g, i, k) ? k : -1;
}

// NATTEN, one axis: the positions whose window holds key position `pos` are
// (lo + t) * d + pos % d for 0 <= t < count. Window starts clamp(ig - k/2, 0, Lg - k) do not
// decrease with ig, so this is an interval; a position always lies in its own window.
TGF_HD void inverse_range(int pos, int L, int k, int d, int& lo, int& count) {
  const int gm = pos / d, Lg = (L - pos % d + d - 1) / d;
  lo = gm - k + 1 <= 0 ? 0 : gm - k + 1 + k / 2;
  const int hi = gm >= Lg - k ? Lg - 1 : gm + k / 2;
  count = hi - lo + 1;
}

// The queries that see key m, enumerated t = 0 .. count - 1 in a fixed order (`seer`). GRID, BAND
// and CLIP neighbourhoods are symmetric, so those are m's own slots (some empty); NBHD has an
// exact rectangle of m's dilation group.
struct Seers {
  int m, count;
  int ly, lx, nx;  // NBHD: first query position (group units) per axis, columns of the rectangle
};

TGF_HD Seers seers(const Geom& g, const SlotGrid& sg, int m) {
  Seers r{m, sg.rows * sg.cols, 0, 0, 1};
  if (g.kind == NBHD) {
    int ny = 0;
    inverse_range(m / g.W, g.H, g.p0, g.p2, r.ly, ny);
    inverse_range(m % g.W, g.W, g.p1, g.p3, r.lx, r.nx);
    r.count = ny * r.nx;
  }
  return r;
}

// Candidate t of `r`: the query (-1 if none) and, through `slot`, where it holds key r.m.
TGF_HD int seer(const Geom& g, const SlotGrid& sg, const Seers& r, int t, int& slot) {
  int q;
  if (g.kind == NBHD) {
    const int ym = r.m / g.W, xm = r.m % g.W;
    q = ((r.ly + t / r.nx) * g.p2 + ym % g.p2) * g.W + (r.lx + t % r.nx) * g.p3 + xm % g.p3;
  } else {
    q = slot_key(g, sg, r.m, t);
  }
  slot = q >= 0 ? key_slot(g, sg, q, r.m) : -1;
  return q;
}

}  // namespace tgf
