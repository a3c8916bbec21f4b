// Sparse-logit primitives on the CPU (float32): qk, av and av-transpose over each query's K
// neighbour slots (common/neighbours.h; contract in transgan_fast/ops/_sparse.py).
//
// Each call builds the (N, K) slot table once (and, for avt, its inverse: for every key the
// (query, slot) pairs that point at it, in ascending order), then runs OpenMP over
// (batch, head, row tiles). Every output row is written by one thread from a fixed order of
// terms, so results are deterministic; empty slots are never read.
#include <omp.h>
#include <vector>
#include "common/neighbours.h"
#include "cpu/attention_tile.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

constexpr int ROWS = 64;  // rows (queries or keys) per parallel work item

std::vector<int> slot_table(const Geom& g, int K, int threads) {
  const int N = g.H * g.W;
  std::vector<int> keys(static_cast<size_t>(N) * K);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int i = 0; i < N; ++i)
    for (int s = 0; s < K; ++s) keys[static_cast<size_t>(i) * K + s] = slot_key(g, i, s);
  return keys;
}

// Inverse table in CSR form: the entries i*K + s with key(i, s) == m are
// inv[start[m] .. start[m+1]), ascending.
void inverse_table(const std::vector<int>& keys, int N, std::vector<int>& start, std::vector<int>& inv) {
  start.assign(N + 1, 0);
  for (int key : keys)
    if (key >= 0) ++start[key + 1];
  for (int m = 0; m < N; ++m) start[m + 1] += start[m];
  inv.resize(start[N]);
  std::vector<int> fill(start.begin(), start.end() - 1);
  for (size_t e = 0; e < keys.size(); ++e)
    if (keys[e] >= 0) inv[fill[keys[e]]++] = static_cast<int>(e);
}

TGF_KERNEL_INLINE void qk_rows_body(const float* a, int64_t san, const float* b, int64_t sbn,
                                    const int* keys, int K, int d, int i0, int i1, float* out) {
  for (int i = i0; i < i1; ++i) {
    const float* ar = a + i * san;
    const int* kr = keys + static_cast<size_t>(i) * K;
    float* o = out + static_cast<size_t>(i) * K;
    for (int s = 0; s < K; ++s) {
      const int key = kr[s];
      if (key < 0) { o[s] = 0.f; continue; }
      const float* br = b + key * sbn;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int c = 0; c < d; ++c) acc += ar[c] * br[c];
      o[s] = acc;
    }
  }
}
TGF_ISA_DISPATCH(qk_rows, qk_rows_body,
                 (const float* a, int64_t san, const float* b, int64_t sbn, const int* keys, int K,
                  int d, int i0, int i1, float* out),
                 (a, san, b, sbn, keys, K, d, i0, i1, out))

// out row i = sum over slots s of p[i, s] * v[key(i, s)].
TGF_KERNEL_INLINE void av_rows_body(const float* p, const float* v, int64_t svn, const int* keys,
                                    int K, int d, int i0, int i1, float* out, int64_t son) {
  for (int i = i0; i < i1; ++i) {
    float* o = out + i * son;
    for (int c = 0; c < d; ++c) o[c] = 0.f;
    const int* kr = keys + static_cast<size_t>(i) * K;
    const float* pr = p + static_cast<size_t>(i) * K;
    for (int s = 0; s < K; ++s) {
      const int key = kr[s];
      if (key < 0) continue;
      const float w = pr[s];
      const float* vr = v + key * svn;
#pragma omp simd
      for (int c = 0; c < d; ++c) o[c] += w * vr[c];
    }
  }
}
TGF_ISA_DISPATCH(av_rows, av_rows_body,
                 (const float* p, const float* v, int64_t svn, const int* keys, int K, int d, int i0,
                  int i1, float* out, int64_t son),
                 (p, v, svn, keys, K, d, i0, i1, out, son))

// out row m = sum over the inverse entries e = i*K + s of key m of p[e] * x[i].
TGF_KERNEL_INLINE void avt_rows_body(const float* p, const float* x, int64_t sxn, const int* start,
                                     const int* inv, int K, int d, int m0, int m1, float* out,
                                     int64_t son) {
  for (int m = m0; m < m1; ++m) {
    float* o = out + m * son;
    for (int c = 0; c < d; ++c) o[c] = 0.f;
    for (int t = start[m]; t < start[m + 1]; ++t) {
      const int e = inv[t];
      const float w = p[e];
      const float* xr = x + (e / K) * sxn;
#pragma omp simd
      for (int c = 0; c < d; ++c) o[c] += w * xr[c];
    }
  }
}
TGF_ISA_DISPATCH(avt_rows, avt_rows_body,
                 (const float* p, const float* x, int64_t sxn, const int* start, const int* inv,
                  int K, int d, int m0, int m1, float* out, int64_t son),
                 (p, x, sxn, start, inv, K, d, m0, m1, out, son))

}  // namespace

void sparse_qk_f32(const SparseArgs& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const std::vector<int> keys = slot_table(a.geom, K, a.threads);
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t u = 0; u < work; ++u) {
    const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
    const int b = bh / a.heads, hh = bh % a.heads;
    qk_rows(a.x.slice(b, hh), a.x.sn, a.y.slice(b, hh), a.y.sn, keys.data(), K, a.d, t * ROWS,
            std::min(N, (t + 1) * ROWS), a.p + static_cast<size_t>(bh) * N * K);
  }
}

void sparse_av_f32(const SparseArgs& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const std::vector<int> keys = slot_table(a.geom, K, a.threads);
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t u = 0; u < work; ++u) {
    const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
    const int b = bh / a.heads, hh = bh % a.heads;
    av_rows(a.p + static_cast<size_t>(bh) * N * K, a.x.slice(b, hh), a.x.sn, keys.data(), K, a.d,
            t * ROWS, std::min(N, (t + 1) * ROWS), a.out.slice(b, hh), a.out.sn);
  }
}

void sparse_avt_f32(const SparseArgs& a) {
  const int K = num_slots(a.geom), N = a.N, tiles = (N + ROWS - 1) / ROWS;
  const std::vector<int> keys = slot_table(a.geom, K, a.threads);
  std::vector<int> start, inv;
  inverse_table(keys, N, start, inv);
  const int64_t work = static_cast<int64_t>(a.B) * a.heads * tiles;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int64_t u = 0; u < work; ++u) {
    const int t = static_cast<int>(u % tiles), bh = static_cast<int>(u / tiles);
    const int b = bh / a.heads, hh = bh % a.heads;
    avt_rows(a.p + static_cast<size_t>(bh) * N * K, a.x.slice(b, hh), a.x.sn, start.data(),
             inv.data(), K, a.d, t * ROWS, std::min(N, (t + 1) * ROWS), a.out.slice(b, hh),
             a.out.sn);
  }
}

}  // namespace tgf
