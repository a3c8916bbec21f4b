// Building blocks of the fused CPU attention kernels (attention_fwd.cpp, attention_bwd.cpp).
//
// One tile = up to TQ queries and the candidate keys their geometry can reach (common/tiles.h).
// Per tile the kernels gather keys (from a once-per-call transposed copy) into a small buffer,
// compute the tile's logits densely against the candidates with register-blocked loops the
// compiler turns into AVX2/AVX-512 code (TGF_ISA_DISPATCH compiles each tile function once per
// ISA and picks one at run time), and apply the exact per-pair mask and relative bias from a
// table of bias rows (-1 = masked) that GRID tiles of regular windows share.
// No -ffast-math: exp is a polynomial (exp_neg8, cpu/vec8.h) that vectorizes while keeping NaN.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>
#include "common/tiles.h"
#include "cpu/kernels.h"
#include "cpu/vec8.h"

namespace tgf {
namespace cpu_attn {

constexpr int QB = 4;    // rows per register block (queries, or keys in dk/dv)
constexpr int JB = 32;   // candidate keys are padded to a multiple of JB
constexpr int DB = 16;   // head-dim lanes per register block (value micro-kernels)
// Register blocks are QB rows x 2 vectors of the ISA copy's width VW (8 accumulators): 32 lanes
// with AVX-512, 16 with AVX2, whose 16 registers cannot hold the 4 x 32 block of AVX-512 plus
// its operands (the compiler spilled the accumulators to the stack).

// Hot helpers are force-inlined into the per-ISA entry points (TGF_ISA_DISPATCH below), so
// each copy is compiled for that ISA.
#define TGF_KERNEL_INLINE static inline __attribute__((always_inline))

#if TGF_X86_MULTIVERSION
// The best copy for this CPU, decided once: 4 = AVX-512 (x86-64-v4), 3 = AVX2+FMA (x86-64-v3),
// 1 = baseline x86-64.
inline int isa_level() {
  static const int level = __builtin_cpu_supports("x86-64-v4")   ? 4
                           : __builtin_cpu_supports("x86-64-v3") ? 3
                                                                 : 1;
  return level;
}
// Calls `name##_v4/_v3/_v1 TARGS ARGS` by isa_level() (TARGS: empty or `<T>`).
#define TGF_ISA_SELECT(name, TARGS, ARGS)          \
  do {                                             \
    const int level_ = isa_level();                \
    if (level_ == 4) name##_v4 TARGS ARGS;         \
    else if (level_ == 3) name##_v3 TARGS ARGS;    \
    else name##_v1 TARGS ARGS;                     \
  } while (0)
#define TGF_TARGET_V4 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define TGF_TARGET_V3 __attribute__((target("arch=x86-64-v3")))

// Compiles `body_fn` (a TGF_KERNEL_INLINE function) three times: AVX-512 (512-bit vectors),
// AVX2+FMA, and baseline x86-64; `name` picks the best one for this CPU at run time. No
// -march=native: the wheel runs on any x86-64.
#define TGF_ISA_DISPATCH(name, body_fn, PARAMS, ARGS)                  \
  TGF_TARGET_V4 void name##_v4 PARAMS { body_fn ARGS; }                \
  TGF_TARGET_V3 void name##_v3 PARAMS { body_fn ARGS; }                \
  void name##_v1 PARAMS { body_fn ARGS; }                              \
  void name PARAMS { TGF_ISA_SELECT(name, , ARGS); }
// The same for a template on the storage type T (cpu/lowp.h): `name<T>` picks the copy of
// `body_fn` (which names T) for this CPU.
#define TGF_ISA_DISPATCH_T(name, body_fn, PARAMS, ARGS)                \
  template <typename T> TGF_TARGET_V4 void name##_v4 PARAMS { body_fn ARGS; } \
  template <typename T> TGF_TARGET_V3 void name##_v3 PARAMS { body_fn ARGS; } \
  template <typename T> void name##_v1 PARAMS { body_fn ARGS; }        \
  template <typename T> void name PARAMS { TGF_ISA_SELECT(name, <T>, ARGS); }
// The same, passing the copy's vector width VW (floats per register: 16, 8, 4) as a second
// template argument of `body_tmpl`, so register blocks fit each ISA's register file.
#define TGF_ISA_DISPATCH_TV(name, body_tmpl, PARAMS, ARGS)             \
  template <typename T> TGF_TARGET_V4 void name##_v4 PARAMS { body_tmpl<T, 16> ARGS; } \
  template <typename T> TGF_TARGET_V3 void name##_v3 PARAMS { body_tmpl<T, 8> ARGS; } \
  template <typename T> void name##_v1 PARAMS { body_tmpl<T, 4> ARGS; } \
  template <typename T> void name PARAMS { TGF_ISA_SELECT(name, <T>, ARGS); }
#else
// Not x86-64 with GCC (cpu/platform.h): one copy, compiled for the build's target.
#define TGF_ISA_DISPATCH(name, body_fn, PARAMS, ARGS) \
  void name PARAMS { body_fn ARGS; }
#define TGF_ISA_DISPATCH_T(name, body_fn, PARAMS, ARGS) \
  template <typename T>                                 \
  void name PARAMS { body_fn ARGS; }
#define TGF_ISA_DISPATCH_TV(name, body_tmpl, PARAMS, ARGS) \
  template <typename T>                                    \
  void name PARAMS { body_tmpl<T, 8> ARGS; }
#endif

inline int round_up(int a, int m) { return (a + m - 1) / m * m; }

// n floats left uninitialized, for per-call buffers that are written before they are read:
// as zero-initialized vectors, their few MB cost a memset on fresh pages at every call.
inline std::unique_ptr<float[]> uninit_floats(size_t n) { return std::unique_ptr<float[]>(new float[n]); }

// Query tile size per geometry kind: the local kinds' 2-D tiles (2x4 for 8, 4x4 for 16; see
// common/tiles.h) stay small so that the candidate set (tile grown by k - 1 per axis) is not
// dominated by masked keys.
inline int tile_size(const Geom& g) {
  switch (g.kind) {
    case CLIP: return 8;
    case NBHD: return nbhd_kernel(g, X_AXIS) >= 5 ? 16 : 8;
    default: return 32;
  }
}

// Index part of one tile: queries, candidate keys, and the per-pair bias row (-1 where masked).
struct TileIndex {
  int nq = 0, nk = 0, nkp = 0;
  int brow_key = -1;  // grid_regular_chunk of the tile that `brow` was filled for
  long brow_gen = 0;  // incremented whenever `brow` is refilled (per-head caches check it)
  std::vector<int> q, k, brow;
  std::vector<QueryMeta> qm;
  std::vector<int> kcls, kay, kax, kby, kbx;  // key metadata, one array per field (vectorizes)
  // Candidate keys as runs of consecutive tokens: (first candidate slot, first token, length).
  struct Run { int j0, t0, len; };
  std::vector<Run> runs;

  void reserve(int TQ, int maxk) {
    q.resize(TQ);
    qm.resize(TQ);
    k.resize(maxk);
    for (std::vector<int>* f : {&kcls, &kay, &kax, &kby, &kbx}) f->resize(maxk);
    brow.resize(static_cast<size_t>(TQ) * round_up(maxk, JB));
  }

  // Fills queries, candidates and their metadata; false if the tile has no queries (partial
  // GRID windows). The pair table `brow` is filled by fill_brow_body.
  bool build_index(const Geom& g, int TQ, int t) {
    nq = tile_queries(g, TQ, t, q.data());
    if (nq == 0) return false;
    nk = tile_candidates(g, TQ, t, q.data(), nq, k.data());
    nkp = round_up(nk, JB);
    runs.clear();
    for (int j = 0; j < nk; ++j) {
      if (j > 0 && k[j] == k[j - 1] + 1) runs.back().len++;
      else runs.push_back({j, k[j], 1});
    }
    for (int j = 0; j < nk; ++j) {
      const KeyMeta m = key_meta(g, k[j]);
      kcls[j] = m.cls; kay[j] = m.ay; kax[j] = m.ax; kby[j] = m.by; kbx[j] = m.bx;
    }
    for (int i = 0; i < nq; ++i) qm[i] = query_meta(g, q[i]);
    return true;
  }
};

// brow[i, j] = bias row of (query i, candidate j) if visible, else -1 (meta_visible and
// meta_bias_row of common/tiles.h, written over arrays so the compiler vectorizes it).
TGF_KERNEL_INLINE void fill_brow_body(const Geom& g, TileIndex& ti) {
  const int lo1 = -(g.B1 - 1), hi1 = g.B1 - 1, lo2 = -(g.B2 - 1), hi2 = g.B2 - 1, w2 = 2 * g.B2 - 1;
  const int *kcls = ti.kcls.data(), *kay = ti.kay.data(), *kax = ti.kax.data();
  const int *kby = ti.kby.data(), *kbx = ti.kbx.data();
  for (int i = 0; i < ti.nq; ++i) {
    const QueryMeta m = ti.qm[i];
    int* br = ti.brow.data() + static_cast<size_t>(i) * ti.nkp;
#pragma omp simd
    for (int j = 0; j < ti.nk; ++j) {
      const bool vis = kcls[j] == m.cls && kay[j] >= m.ylo && kay[j] <= m.yhi && kax[j] >= m.xlo &&
                       kax[j] <= m.xhi;
      int dy = m.by - kby[j], dx = m.bx - kbx[j];
      dy = dy < lo1 ? lo1 : (dy > hi1 ? hi1 : dy);
      dx = dx < lo2 ? lo2 : (dx > hi2 ? hi2 : dx);
      br[j] = vis ? (dy + hi1) * w2 + (dx + hi2) : -1;
    }
    for (int j = ti.nk; j < ti.nkp; ++j) br[j] = -1;
  }
}

// S[i, :nkp] = alpha * sum_c A_i[c] * BT[c, :nkp] for the nq rows A_i (pointers, d elements).
template <int VW>
TGF_KERNEL_INLINE void logits_block(const float* const* A, int nq, int d, const float* BT, int nkp,
                                float alpha, float* S) {
  constexpr int JV = 2 * VW;  // divides JB, so nkp
  for (int i0 = 0; i0 < nq; i0 += QB) {
    const float* a[QB];
    for (int r = 0; r < QB; ++r) a[r] = A[i0 + (i0 + r < nq ? r : 0)];
    for (int jb = 0; jb < nkp; jb += JV) {
      float acc[QB][JV];
      for (int r = 0; r < QB; ++r)
        for (int jj = 0; jj < JV; ++jj) acc[r][jj] = 0.f;
      for (int c = 0; c < d; ++c) {
        const float* bt = BT + static_cast<size_t>(c) * nkp + jb;
        for (int r = 0; r < QB; ++r) {
          const float ar = a[r][c];
#pragma omp simd
          for (int jj = 0; jj < JV; ++jj) acc[r][jj] += ar * bt[jj];
        }
      }
      for (int r = 0; r < QB && i0 + r < nq; ++r) {
        float* s = S + static_cast<size_t>(i0 + r) * nkp + jb;
#pragma omp simd
        for (int jj = 0; jj < JV; ++jj) s[jj] = alpha * acc[r][jj];
      }
    }
  }
}

// O_i[:d] = rowscale[i] * sum_j P[i, j] * X_j[:] for i < nq; X_j rows readable up to dp
// (dp % DB == 0: either padded copies or original rows when d % DB == 0). R rows x CW lanes of
// accumulators per block (8 independent FMA chains either way).
template <int R, int CW>
TGF_KERNEL_INLINE void rows_times_impl(const float* P, int nq, int nkp, int nk, const float* const* X,
                                   int c0, int d, const float* rowscale, float* const* O) {
  for (int i0 = 0; i0 < nq; i0 += R) {
    const float* p[R];
    for (int r = 0; r < R; ++r) p[r] = P + static_cast<size_t>(i0 + (i0 + r < nq ? r : 0)) * nkp;
    float acc[R][CW];
    for (int r = 0; r < R; ++r)
      for (int cc = 0; cc < CW; ++cc) acc[r][cc] = 0.f;
    for (int j = 0; j < nk; ++j) {
      const float* x = X[j] + c0;
      for (int r = 0; r < R; ++r) {
        const float pr = p[r][j];
#pragma omp simd
        for (int cc = 0; cc < CW; ++cc) acc[r][cc] += pr * x[cc];
      }
    }
    const int cn = d - c0 < CW ? d - c0 : CW;
    for (int r = 0; r < R && i0 + r < nq; ++r) {
      float* o = O[i0 + r] + c0;
      for (int cc = 0; cc < cn; ++cc) o[cc] = rowscale[i0 + r] * acc[r][cc];
    }
  }
}

// True if any of the first d values of rows X_j (j < n) is NaN or +-Inf: x * 0 is NaN exactly
// then, and the sum vectorizes. A tile with such a value must not use the dense P V product,
// where a masked key's 0 weight times its NaN/Inf value would reach every row of the tile.
TGF_KERNEL_INLINE bool any_nonfinite(const float* const* X, int n, int d) {
  float z = 0.f;
  for (int j = 0; j < n; ++j) {
    const float* x = X[j];
#pragma omp simd reduction(+ : z)
    for (int c = 0; c < d; ++c) z += x[c] * 0.f;
  }
  return z != z;
}

// O_i[:d] = rowscale[i] * sum over visible j (brow[i, j] >= 0) of P[i, j] * X_j[:]: the exact
// product for tiles with non-finite values, where masked keys must contribute nothing at all.
inline void rows_times_visible(const float* P, int nq, int nkp, int nk, const float* const* X,
                               int d, const int* brow, const float* rowscale, float* const* O) {
  std::vector<float> acc(d);
  for (int i = 0; i < nq; ++i) {
    std::fill(acc.begin(), acc.end(), 0.f);
    const float* p = P + static_cast<size_t>(i) * nkp;
    const int* br = brow + static_cast<size_t>(i) * nkp;
    for (int j = 0; j < nk; ++j) {
      if (br[j] < 0) continue;
      for (int c = 0; c < d; ++c) acc[c] += p[j] * X[j][c];
    }
    for (int c = 0; c < d; ++c) O[i][c] = rowscale[i] * acc[c];
  }
}

template <int VW>
TGF_KERNEL_INLINE void rows_times_packed(const float* P, int nq, int nkp, int nk, const float* const* X,
                                     int dp, int d, const float* rowscale, float* const* O) {
  if constexpr (VW < 16) {  // dp % DB == 0, so a multiple of 2 * VW
    for (int c0 = 0; c0 < dp; c0 += 2 * VW) rows_times_impl<QB, 2 * VW>(P, nq, nkp, nk, X, c0, d, rowscale, O);
  } else if (dp % (2 * DB) == 0) {  // 8 accumulator registers: enough independent FMA chains
    for (int c0 = 0; c0 < dp; c0 += 2 * DB) rows_times_impl<QB, 2 * DB>(P, nq, nkp, nk, X, c0, d, rowscale, O);
  } else {
    for (int c0 = 0; c0 < dp; c0 += DB) rows_times_impl<2 * QB, DB>(P, nq, nkp, nk, X, c0, d, rowscale, O);
  }
}

// Acc_j[:dp] += alpha * sum_i P[i, j] * X_i[:] for j < nk (Acc rows by pointer, padded to dp).
template <int R, int CW>
TGF_KERNEL_INLINE void cols_times_impl(const float* P, int nq, int nkp, int nk, const float* const* X,
                                   int c0, float alpha, float* const* Acc) {
  for (int j0 = 0; j0 < nk; j0 += R) {
    const int nj = nk - j0 < R ? nk - j0 : R;
    float acc[R][CW];
    for (int r = 0; r < R; ++r)
      for (int cc = 0; cc < CW; ++cc) acc[r][cc] = 0.f;
    for (int i = 0; i < nq; ++i) {
      const float* x = X[i] + c0;
      const float* pi = P + static_cast<size_t>(i) * nkp + j0;
      for (int r = 0; r < R; ++r) {
        const float pr = pi[r];  // columns past nk are zero padding (nkp % JB == 0)
#pragma omp simd
        for (int cc = 0; cc < CW; ++cc) acc[r][cc] += pr * x[cc];
      }
    }
    for (int r = 0; r < nj; ++r) {
      float* a = Acc[j0 + r] + c0;
#pragma omp simd
      for (int cc = 0; cc < CW; ++cc) a[cc] += alpha * acc[r][cc];
    }
  }
}

template <int VW>
TGF_KERNEL_INLINE void cols_times_packed(const float* P, int nq, int nkp, int nk, const float* const* X,
                                     int dp, float alpha, float* const* Acc) {
  if constexpr (VW < 16) {
    for (int c0 = 0; c0 < dp; c0 += 2 * VW) cols_times_impl<QB, 2 * VW>(P, nq, nkp, nk, X, c0, alpha, Acc);
  } else if (dp % (2 * DB) == 0) {
    for (int c0 = 0; c0 < dp; c0 += 2 * DB) cols_times_impl<QB, 2 * DB>(P, nq, nkp, nk, X, c0, alpha, Acc);
  } else {
    for (int c0 = 0; c0 < dp; c0 += DB) cols_times_impl<2 * QB, DB>(P, nq, nkp, nk, X, c0, alpha, Acc);
  }
}

// Row pointers of src + idx[j] * sn for j < n as float32, readable up to dp floats: the rows
// themselves when they are float32 and d == dp, else float32 copies zero-padded to dp in buf
// (n x dp).
template <typename T>
TGF_KERNEL_INLINE void row_ptrs(const T* src, int64_t sn, const int* idx, int n, int d, int dp,
                            float* buf, const float** rows) {
  for (int j = 0; j < n; ++j) {
    const T* s = src + idx[j] * sn;
    if constexpr (std::is_same_v<T, float>) {
      if (d == dp) {
        rows[j] = s;
        continue;
      }
    }
    float* o = buf + static_cast<size_t>(j) * dp;
    load_row(s, o, d);
    for (int c = d; c < dp; ++c) o[c] = 0.f;
    rows[j] = o;
  }
}

// Rows dst + idx[j] * sn (j < n, d values) = the float32 rows src[j], rounded to T.
template <typename T>
TGF_KERNEL_INLINE void store_rows_as(const float* const* src, int n, int d, T* dst, int64_t sn,
                                     const int* idx) {
  for (int j = 0; j < n; ++j) store_row(src[j], dst + idx[j] * sn, d);
}


// Gathers the tile's candidate columns from a transposed slice XT (d x N) into dst (d x nkp),
// run by run, zero-padding columns to nkp.
TGF_KERNEL_INLINE void pack_cols_t(const float* XT, int N, const TileIndex& ti, int d, float* dst) {
  for (int c = 0; c < d; ++c) {
    const float* src = XT + static_cast<size_t>(c) * N;
    float* o = dst + static_cast<size_t>(c) * ti.nkp;
    for (const TileIndex::Run& r : ti.runs) {  // short runs (a tile or window row): no memcpy call
      const float* x = src + r.t0;
      float* y = o + r.j0;
      int j = 0;
      for (; j + 8 <= r.len; j += 8) store8(y + j, load8(x + j));
      for (; j < r.len; ++j) y[j] = x[j];
    }
    for (int j = ti.nk; j < ti.nkp; ++j) o[j] = 0.f;
  }
}

// Transposes every (batch, head) slice of a view into float32 XT (B*heads slices of d x N), in
// parallel.
template <typename T>
inline void transpose_slices(const View<T>& x, int B, int heads, int N, int d, float* XT, int threads) {
  constexpr int NB = 64;
  const int nblk = (N + NB - 1) / NB;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int sl = 0; sl < B * heads; ++sl)
    for (int blk = 0; blk < nblk; ++blk) {
      const T* src = x.slice(sl / heads, sl % heads);
      float* dst = XT + static_cast<size_t>(sl) * d * N;
      const int n1 = (blk + 1) * NB < N ? (blk + 1) * NB : N;
      int n = blk * NB;
      if constexpr (std::is_same_v<T, float>) {  // whole 8 x 8 blocks transposed in registers
        if (d % 8 == 0)
          for (; n + 8 <= n1; n += 8)
            for (int c0 = 0; c0 < d; c0 += 8) {
              v8f r[8];
              for (int i = 0; i < 8; ++i) r[i] = load8(src + (n + i) * x.sn + c0);
              transpose8(r);
              for (int cc = 0; cc < 8; ++cc) store8(dst + static_cast<size_t>(c0 + cc) * N + n, r[cc]);
            }
      }
      for (int c = 0; c < d; ++c)
        for (int m = n; m < n1; ++m) dst[static_cast<size_t>(c) * N + m] = to_f32(src[m * x.sn + c]);
    }
}

// The tile's additive logit term for one head: bias[brow] where visible, -inf where masked
// (bias == nullptr: 0 where visible). Built once per (tile, head) and shared by the batch.
TGF_KERNEL_INLINE void bias_tile(const TileIndex& ti, const float* bias, float* out) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const size_t n = static_cast<size_t>(ti.nq) * ti.nkp;
  const int* br = ti.brow.data();
  if (bias) {
    for (size_t e = 0; e < n; ++e) out[e] = br[e] >= 0 ? bias[br[e]] : ninf;
  } else {
    for (size_t e = 0; e < n; ++e) out[e] = br[e] >= 0 ? 0.f : ninf;
  }
}

// Builds tile t into ti, reusing the pair table when the previous tile was the same chunk of
// another regular GRID window; false if the tile has no queries.
template <typename FillFn>
inline bool build_tile_cached(const Geom& g, int TQ, int t, TileIndex& ti, FillFn fill) {
  if (!ti.build_index(g, TQ, t)) return false;
  const int key = grid_regular_chunk(g, TQ, t);
  if (!(key >= 0 && key == ti.brow_key)) {
    fill(g, ti);
    ++ti.brow_gen;
  }
  ti.brow_key = key;
  return true;
}

// The per-head bias/mask tiles of the current pair table, built lazily and kept until the
// table changes.
struct BiasTiles {
  std::vector<float> data;
  std::vector<long> gen;  // brow_gen each head's tile was built for (-1: never)
  size_t stride = 0;
  void reserve(int heads, int TQ, int maxk) {
    stride = static_cast<size_t>(TQ) * round_up(maxk, JB);
    data.resize(heads * stride);
    gen.assign(heads, -1);
  }
  const float* get(const TileIndex& ti, const float* biash, int rows, int hh) {
    float* out = data.data() + hh * stride;
    if (gen[hh] != ti.brow_gen) {
      bias_tile(ti, biash + static_cast<size_t>(hh) * rows, out);
      gen[hh] = ti.brow_gen;
    }
    return out;
  }
};

// Tile size of both passes: a GRID tile covers a whole (small) window, so the window's keys are
// gathered once per (batch, head) instead of once per chunk of queries (forward: 1.44x at
// 128x128, d=64), and every key's dk/dv rows are accumulated by one tile while they are in cache
// instead of being revisited by each chunk (backward). Larger windows and the local kinds use
// `tile_size`.
inline int tile_size_window(const Geom& g) {
  if (g.kind == GRID && grid_window_area(g) <= 256) return grid_window_area(g);
  return tile_size(g);
}

// CLIP forward on the map plane, per window offset (attention_local_fwd.cpp); false when the
// geometry is not one it handles (then the tile kernel runs).
template <typename T>
bool local_fwd_plane(const AttnFwdArgs<T>& a);

// Per-head contiguous copy of the (rows, heads) bias table: out[h * rows + r].
inline std::vector<float> bias_by_head(const float* bias, int rows, int heads) {
  std::vector<float> t(bias ? static_cast<size_t>(rows) * heads : 0);
  if (bias)
    for (int r = 0; r < rows; ++r)
      for (int hh = 0; hh < heads; ++hh) t[static_cast<size_t>(hh) * rows + r] = bias[r * heads + hh];
  return t;
}

}  // namespace cpu_attn
}  // namespace tgf
