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
    case GRID: return SlotGrid{grid_window(g, Y_AXIS), grid_window(g, X_AXIS)};
    case BAND: return SlotGrid{1, 2 * imin(band_width(g), g.H * g.W - 1) + 1};
    case CLIP:
      return SlotGrid{2 * imin(clip_radius(g, Y_AXIS), g.H - 1) + 1,
                      2 * imin(clip_radius(g, X_AXIS), g.W - 1) + 1};
    default: return SlotGrid{nbhd_kernel(g, Y_AXIS), nbhd_kernel(g, X_AXIS)};
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
      const int ry = grid_rolled(g, Y_AXIS, y), rx = grid_rolled(g, X_AXIS, x);
      const int M1 = grid_window(g, Y_AXIS), M2 = grid_window(g, X_AXIS);
      const int ky = ry / M1 * M1 + a, kx = rx / M2 * M2 + b;
      if (ky >= g.H || kx >= g.W) return -1;
      if (grid_wrapped(g, Y_AXIS, ky) != grid_wrapped(g, Y_AXIS, ry) ||
          grid_wrapped(g, X_AXIS, kx) != grid_wrapped(g, X_AXIS, rx))
        return -1;
      return grid_unrolled(g, Y_AXIS, ky) * g.W + grid_unrolled(g, X_AXIS, kx);
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
      const int d1 = nbhd_dilation(g, Y_AXIS), d2 = nbhd_dilation(g, X_AXIS);
      const int ky = (nbhd_start(g, Y_AXIS, y) + a) * d1 + y % d1;
      const int kx = (nbhd_start(g, X_AXIS, x) + b) * d2 + x % d2;
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
      const int M1 = grid_window(g, Y_AXIS), M2 = grid_window(g, X_AXIS);
      const int ry = grid_rolled(g, Y_AXIS, y), rx = grid_rolled(g, X_AXIS, x);
      return (grid_rolled(g, Y_AXIS, ym) - ry / M1 * M1) * sg.cols +
             grid_rolled(g, X_AXIS, xm) - rx / M2 * M2;
    }
    case BAND: return m - i + (sg.cols - 1) / 2;
    case CLIP: return (ym - y + (sg.rows - 1) / 2) * sg.cols + xm - x + (sg.cols - 1) / 2;
    default:
      return (ym / nbhd_dilation(g, Y_AXIS) - nbhd_start(g, Y_AXIS, y)) * sg.cols +
             xm / nbhd_dilation(g, X_AXIS) - nbhd_start(g, X_AXIS, x);
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
    const int ry = grid_rolled(g, Y_AXIS, y), rx = grid_rolled(g, X_AXIS, x);
    const int kry = ry - dy, krx = rx - dx;
    const int M1 = grid_window(g, Y_AXIS), M2 = grid_window(g, X_AXIS);
    if (kry < 0 || krx < 0 || kry >= g.H || krx >= g.W || kry / M1 != ry / M1 || krx / M2 != rx / M2)
      return -1;
    ky = grid_unrolled(g, Y_AXIS, kry);
    kx = grid_unrolled(g, X_AXIS, krx);
  } else if (g.kind == NBHD) {  // offsets in dilation-group units
    ky = y - dy * nbhd_dilation(g, Y_AXIS);
    kx = x - dx * nbhd_dilation(g, X_AXIS);
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
    inverse_range(m / g.W, g.H, nbhd_kernel(g, Y_AXIS), nbhd_dilation(g, Y_AXIS), r.ly, ny);
    inverse_range(m % g.W, g.W, nbhd_kernel(g, X_AXIS), nbhd_dilation(g, X_AXIS), r.lx, r.nx);
    r.count = ny * r.nx;
  }
  return r;
}

// Candidate t of `r`: the query (-1 if none) and, through `slot`, where it holds key r.m.
TGF_HD int seer(const Geom& g, const SlotGrid& sg, const Seers& r, int t, int& slot) {
  int q;
  if (g.kind == NBHD) {
    const int ym = r.m / g.W, xm = r.m % g.W;
    const int d1 = nbhd_dilation(g, Y_AXIS), d2 = nbhd_dilation(g, X_AXIS);
    q = ((r.ly + t / r.nx) * d1 + ym % d1) * g.W + (r.lx + t % r.nx) * d2 + xm % d2;
  } else {
    q = slot_key(g, sg, r.m, t);
  }
  slot = q >= 0 ? key_slot(g, sg, q, r.m) : -1;
  return q;
}

}  // namespace tgf
