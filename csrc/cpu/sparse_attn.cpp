// Sparse-logit primitives on the CPU (float32, bfloat16 or float16 tensors, float32 arithmetic:
// cpu/lowp.h): qk, av and av-transpose over each query's K
// neighbour slots (common/neighbours.h; contract in transgan_fast/ops/_sparse.py).
//
// The (N, K) slot table and its inverse (for every key, the (query, slot) pairs that point at it,
// in ascending order) are built once per geometry; each call runs OpenMP over (batch, head, row
// tiles), or (batch, head, window) for GRID. Every output row is written by one thread from a fixed order of
// terms, so results are deterministic; empty slots are never read.
#include <omp.h>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>
#include "common/neighbours.h"
#include "cpu/attention_tile.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

constexpr int ROWS = 64;  // rows (queries or keys) per parallel work item

// The slot table (N x K keys, -1 = empty) and its inverse in CSR form: the entries i*K + s with
// key(i, s) == m are inv[start[m] .. start[m+1]), ascending.
struct SlotTables {
  std::vector<int> keys, start, inv;
};

std::shared_ptr<const SlotTables> build_tables(const Geom& g, int K, int threads) {
  auto t = std::make_shared<SlotTables>();
  const int N = g.H * g.W;
  t->keys.resize(static_cast<size_t>(N) * K);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int i = 0; i < N; ++i)
    for (int s = 0; s < K; ++s) t->keys[static_cast<size_t>(i) * K + s] = slot_key(g, i, s);
  t->start.assign(N + 1, 0);
  for (int key : t->keys)
    if (key >= 0) ++t->start[key + 1];
  for (int m = 0; m < N; ++m) t->start[m + 1] += t->start[m];
  t->inv.resize(t->start[N]);
  std::vector<int> fill(t->start.begin(), t->start.end() - 1);
  for (size_t e = 0; e < t->keys.size(); ++e)
    if (t->keys[e] >= 0) t->inv[fill[t->keys[e]]++] = static_cast<int>(e);
  return t;
}

// Tables are built once per geometry (a model has a handful) and shared by every later call; the
// index math costs as much as a kernel call on large maps. Calls may come from several threads.
std::shared_ptr<const SlotTables> slot_tables(const Geom& g, int K, int threads) {
  static std::mutex mu;
  static std::map<std::array<int, 9>, std::shared_ptr<const SlotTables>> cache;
  const std::array<int, 9> key{g.H, g.W, g.kind, g.p0, g.p1, g.p2, g.p3, g.B1, g.B2};  // all 9 ints
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  return cache[key] = build_tables(g, K, threads);
}

template <typename T>
TGF_KERNEL_INLINE void qk_rows_body(const T* a, int64_t san, const T* b, int64_t sbn,
                                    const int* keys, int K, int d, int i0, int i1, T* out) {
  for (int i = i0; i < i1; ++i) {
    const T* ar = a + i * san;
    const int* kr = keys + static_cast<size_t>(i) * K;
    T* o = out + static_cast<size_t>(i) * K;
    for (int s = 0; s < K; ++s) {
      const int key = kr[s];
      if (key < 0) { o[s] = from_f32<T>(0.f); continue; }
      const T* br = b + key * sbn;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int c = 0; c < d; ++c) acc += to_f32(ar[c]) * to_f32(br[c]);
      o[s] = from_f32<T>(acc);
    }
  }
}
TGF_ISA_DISPATCH_T(qk_rows, qk_rows_body<T>,
                   (const T* a, int64_t san, const T* b, int64_t sbn, const int* keys, int K,
                    int d, int i0, int i1, T* out),
                   (a, san, b, sbn, keys, K, d, i0, i1, out))

// out row i = sum over slots s of p[i, s] * v[key(i, s)]; acc: d floats of scratch.
template <typename T>
TGF_KERNEL_INLINE void av_rows_body(const T* p, const T* v, int64_t svn, const int* keys, int K,
                                    int d, int i0, int i1, T* out, int64_t son, float* acc) {
  for (int i = i0; i < i1; ++i) {
    for (int c = 0; c < d; ++c) acc[c] = 0.f;
    const int* kr = keys + static_cast<size_t>(i) * K;
    const T* pr = p + static_cast<size_t>(i) * K;
    for (int s = 0; s < K; ++s) {
      const int key = kr[s];
      if (key < 0) continue;
      const float w = to_f32(pr[s]);
      const T* vr = v + key * svn;
#pragma omp simd
      for (int c = 0; c < d; ++c) acc[c] += w * to_f32(vr[c]);
    }
    T* o = out + i * son;
#pragma omp simd
    for (int c = 0; c < d; ++c) o[c] = from_f32<T>(acc[c]);
  }
}
TGF_ISA_DISPATCH_T(av_rows, av_rows_body<T>,
                   (const T* p, const T* v, int64_t svn, const int* keys, int K, int d, int i0,
                    int i1, T* out, int64_t son, float* acc),
                   (p, v, svn, keys, K, d, i0, i1, out, son, acc))

// out row m = sum over the inverse entries e = i*K + s of key m of p[e] * x[i]; acc: d floats.
template <typename T>
TGF_KERNEL_INLINE void avt_rows_body(const T* p, const T* x, int64_t sxn, const int* start,
                                     const int* inv, int K, int d, int m0, int m1, T* out,
                                     int64_t son, float* acc) {
  for (int m = m0; m < m1; ++m) {
    for (int c = 0; c < d; ++c) acc[c] = 0.f;
    for (int t = start[m]; t < start[m + 1]; ++t) {
      const int e = inv[t];
      const float w = to_f32(p[e]);
      const T* xr = x + (e / K) * sxn;
#pragma omp simd
      for (int c = 0; c < d; ++c) acc[c] += w * to_f32(xr[c]);
    }
    T* o = out + m * son;
#pragma omp simd
    for (int c = 0; c < d; ++c) o[c] = from_f32<T>(acc[c]);
  }
}
TGF_ISA_DISPATCH_T(avt_rows, avt_rows_body<T>,
                   (const T* p, const T* x, int64_t sxn, const int* start, const int* inv,
                    int K, int d, int m0, int m1, T* out, int64_t son, float* acc),
                   (p, x, sxn, start, inv, K, d, m0, m1, out, son, acc))

// GRID geometries: all queries of a window share its slot -> token map (slot s is window position
// s), so per (batch, head, window) qk is the window's Q K^T, computed as axpys over the slots
// (no horizontal sums) against the window's keys transposed, and avt is P^T X accumulated in the
// window's rows; then empty slots are zeroed (qk) or skipped (avt). Windows partition the tokens,
// so each output row still has one writer and a fixed order of terms.
struct GridWindows {
  int M1, M2, L, nwy, nwx;
  explicit GridWindows(const Geom& g)
      : M1(grid_window(g, Y_AXIS)), M2(grid_window(g, X_AXIS)), L(grid_window_area(g)),
        nwy(grid_window_count(g, Y_AXIS)), nwx(grid_window_count(g, X_AXIS)) {}
  int count() const { return nwy * nwx; }
  // Token at position s of window w, or -1 where the position is off the map.
  void tokens(const Geom& g, int w, int* tok) const {
    const int wy = w / nwx, wx = w % nwx;
    for (int s = 0; s < L; ++s) {
      const int ry = wy * M1 + s / M2, rx = wx * M2 + s % M2;
      tok[s] = ry < g.H && rx < g.W ? grid_unrolled(g, Y_AXIS, ry) * g.W + grid_unrolled(g, X_AXIS, rx) : -1;
    }
  }
};

// scratch: (d + 1) * L floats (the window's keys transposed, one float32 output row).
template <typename T>
TGF_KERNEL_INLINE void qk_window_body(const T* a, int64_t san, const T* b, int64_t sbn,
                                      const int* keys, const int* tok, int L, int d, float* KT,
                                      T* out) {
  for (int c = 0; c < d; ++c)
    for (int s = 0; s < L; ++s) KT[c * L + s] = tok[s] >= 0 ? to_f32(b[tok[s] * sbn + c]) : 0.f;
  float* o = KT + static_cast<size_t>(d) * L;
  for (int r = 0; r < L; ++r) {
    const int i = tok[r];
    if (i < 0) continue;
    const T* ar = a + i * san;
    for (int s = 0; s < L; ++s) o[s] = 0.f;
    for (int c = 0; c < d; ++c) {
      const float x = to_f32(ar[c]);
      const float* kt = KT + c * L;
#pragma omp simd
      for (int s = 0; s < L; ++s) o[s] += x * kt[s];
    }
    const int* kr = keys + static_cast<size_t>(i) * L;
    T* orow = out + static_cast<size_t>(i) * L;
#pragma omp simd
    for (int s = 0; s < L; ++s) orow[s] = from_f32<T>(kr[s] >= 0 ? o[s] : 0.f);
  }
}
TGF_ISA_DISPATCH_T(qk_window, qk_window_body<T>,
                   (const T* a, int64_t san, const T* b, int64_t sbn, const int* keys,
                    const int* tok, int L, int d, float* KT, T* out),
                   (a, san, b, sbn, keys, tok, L, d, KT, out))

template <typename T>
TGF_KERNEL_INLINE void avt_window_body(const T* p, const T* x, int64_t sxn, const int* keys,
                                       const int* tok, int L, int d, float* acc, T* out,
                                       int64_t son) {
  for (int t = 0; t < L * d; ++t) acc[t] = 0.f;
  for (int r = 0; r < L; ++r) {
    const int i = tok[r];
    if (i < 0) continue;
    const T* xr = x + i * sxn;
    const T* pr = p + static_cast<size_t>(i) * L;
    const int* kr = keys + static_cast<size_t>(i) * L;
    float* xf = acc + static_cast<size_t>(L) * d;  // the row x_i in float32
#pragma omp simd
    for (int c = 0; c < d; ++c) xf[c] = to_f32(xr[c]);
    for (int s = 0; s < L; ++s) {
      if (kr[s] < 0) continue;
      const float w = to_f32(pr[s]);
      float* ar = acc + s * d;
#pragma omp simd
      for (int c = 0; c < d; ++c) ar[c] += w * xf[c];
    }
  }
  for (int s = 0; s < L; ++s)
    if (tok[s] >= 0)
      for (int c = 0; c < d; ++c) out[tok[s] * son + c] = from_f32<T>(acc[s * d + c]);
}
TGF_ISA_DISPATCH_T(avt_window, avt_window_body<T>,
                   (const T* p, const T* x, int64_t sxn, const int* keys, const int* tok,
                    int L, int d, float* acc, T* out, int64_t son),
                   (p, x, sxn, keys, tok, L, d, acc, out, son))

// Runs fn(b, hh, bh, tok, scratch) over (batch, head, window) with per-thread scratch floats.
template <typename T, typename Fn>
void for_grid_windows(const SparseArgs<T>& a, size_t scratch_floats, Fn fn) {
  const GridWindows gw(a.geom);
  std::vector<int> toks(static_cast<size_t>(gw.count()) * gw.L);
  for (int w = 0; w < gw.count(); ++w) gw.tokens(a.geom, w, toks.data() + static_cast<size_t>(w) * gw.L);
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * gw.count();
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> scratch(scratch_floats);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < work; ++u) {
      const int w = static_cast<int>(u % gw.count()), bh = static_cast<int>(u / gw.count());
      fn(bh / a.heads, bh % a.heads, bh, toks.data() + static_cast<size_t>(w) * gw.L, scratch.data());
    }
  }
}

}  // namespace

template <typename T>
void sparse_qk(const SparseArgs<T>& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const auto tables = slot_tables(a.geom, K, a.threads);
  const std::vector<int>& keys = tables->keys;
  if (a.geom.kind == GRID) {
    for_grid_windows(a, static_cast<size_t>(a.d + 1) * K, [&](int b, int hh, int bh, const int* tok, float* KT) {
      qk_window(a.x.slice(b, hh), a.x.sn, a.y.slice(b, hh), a.y.sn, keys.data(), tok, K, a.d, KT,
                a.p + static_cast<size_t>(bh) * N * K);
    });
    return;
  }
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t u = 0; u < work; ++u) {
    const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
    const int b = bh / a.heads, hh = bh % a.heads;
    qk_rows(a.x.slice(b, hh), a.x.sn, a.y.slice(b, hh), a.y.sn, keys.data(), K, a.d, t * ROWS,
            std::min(N, (t + 1) * ROWS), a.p + static_cast<size_t>(bh) * N * K);
  }
}

template <typename T>
void sparse_av(const SparseArgs<T>& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const auto tables = slot_tables(a.geom, K, a.threads);
  const std::vector<int>& keys = tables->keys;
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> acc(a.d);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < work; ++u) {
      const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
      const int b = bh / a.heads, hh = bh % a.heads;
      av_rows(a.p + static_cast<size_t>(bh) * N * K, a.x.slice(b, hh), a.x.sn, keys.data(), K, a.d,
              t * ROWS, std::min(N, (t + 1) * ROWS), a.out.slice(b, hh), a.out.sn, acc.data());
    }
  }
}

template <typename T>
void sparse_avt(const SparseArgs<T>& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const auto tables = slot_tables(a.geom, K, a.threads);
  const std::vector<int>& keys = tables->keys;
  if (a.geom.kind == GRID) {
    for_grid_windows(a, static_cast<size_t>(a.d) * (K + 1), [&](int b, int hh, int bh, const int* tok, float* acc) {
      avt_window(a.p + static_cast<size_t>(bh) * N * K, a.x.slice(b, hh), a.x.sn, keys.data(), tok,
                 K, a.d, acc, a.out.slice(b, hh), a.out.sn);
    });
    return;
  }
  const std::vector<int>&start = tables->start, &inv = tables->inv;
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<float> acc(a.d);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < work; ++u) {
      const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
      const int b = bh / a.heads, hh = bh % a.heads;
      avt_rows(a.p + static_cast<size_t>(bh) * N * K, a.x.slice(b, hh), a.x.sn, start.data(),
               inv.data(), K, a.d, t * ROWS, std::min(N, (t + 1) * ROWS), a.out.slice(b, hh),
               a.out.sn, acc.data());
    }
  }
}

template void sparse_qk<float>(const SparseArgs<float>&);
template void sparse_qk<bf16>(const SparseArgs<bf16>&);
template void sparse_qk<f16>(const SparseArgs<f16>&);
template void sparse_av<float>(const SparseArgs<float>&);
template void sparse_av<bf16>(const SparseArgs<bf16>&);
template void sparse_av<f16>(const SparseArgs<f16>&);
template void sparse_avt<float>(const SparseArgs<float>&);
template void sparse_avt<bf16>(const SparseArgs<bf16>&);
template void sparse_avt<f16>(const SparseArgs<f16>&);

}  // namespace tgf
