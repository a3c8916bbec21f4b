// Sparse-logit primitives over each query's K neighbour slots (layout: common/neighbours.h):
//   qk:  out[i, s] = a_i . b_key(i,s)                   (0 at empty slots)
//   av:  out[i, :] = sum_s p[i, s] v_key(i,s)
//   avt: out[m, :] = sum over (i, s) with key(i,s) = m of p[i, s] x_i
// One warp per output row, four rows per block. Keys are computed from the geometry, never read
// from an index tensor: the warp walks slots (or, for avt, the queries that see key m) 32 at a
// time, each lane resolving one, then broadcasts them with shuffles while its lanes sweep the head
// dim (lane c holds columns c, c + 32, ...: coalesced row reads). avt is a gather over `seers`, so
// every row is written once in a fixed order: no atomics, same bits every run. Empty slots are
// never loaded. Accumulation is float32 whatever the storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include "common/neighbours.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace tgf {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;            // one warp per row
constexpr int kMaxCols = kMaxSparseHeadDim / 32;  // columns per lane

struct SparseParams {
  Geom g;
  SlotGrid sg;
  int h, N, K, d;
  int64_t rows;                             // B * h * N
  const void* x;                            // qk: a; av, avt: p
  const void* y;                            // qk: b; av: v; avt: x
  void* out;                                // contiguous (B, h, N, K) or (B, h, N, d)
  int64_t xs[3], ys[3];                     // element strides of batch, head, token
};

template <typename T>
__device__ __forceinline__ const T* row_of(const void* base, const int64_t* st, int b, int hh, int n) {
  return static_cast<const T*>(base) + b * st[0] + hh * st[1] + static_cast<int64_t>(n) * st[2];
}

// Warp `row` -> (batch, head, token).
__device__ __forceinline__ void split_row(const SparseParams& P, int64_t row, int& b, int& hh, int& n) {
  n = static_cast<int>(row % P.N);
  const int64_t bh = row / P.N;
  b = static_cast<int>(bh / P.h);
  hh = static_cast<int>(bh % P.h);
}

__device__ __forceinline__ int64_t first_row() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
}
__device__ __forceinline__ int64_t row_step() {
  return static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
}

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) sparse_qk_kernel(const SparseParams P) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = first_row(); row < P.rows; row += row_step()) {
    int b, hh, i;
    split_row(P, row, b, hh, i);
    const T* a = row_of<T>(P.x, P.xs, b, hh, i);
    float ar[kMaxCols];
#pragma unroll
    for (int j = 0; j < kMaxCols; ++j) {
      const int c = lane + 32 * j;
      ar[j] = c < P.d ? to_f(a[c]) : 0.f;
    }
    T* out = static_cast<T*>(P.out) + row * P.K;
    for (int s0 = 0; s0 < P.K; s0 += 32) {
      const int mykey = s0 + lane < P.K ? slot_key(P.g, P.sg, i, s0 + lane) : -1;
      float mine = 0.f;
      const int n = min(32, P.K - s0);
      for (int j = 0; j < n; ++j) {
        const int key = __shfl_sync(0xffffffffu, mykey, j);
        if (key < 0) continue;                       // warp-uniform: empty slot, nothing read
        const T* br = row_of<T>(P.y, P.ys, b, hh, key);
        float part = 0.f;
#pragma unroll
        for (int jj = 0; jj < kMaxCols; ++jj) {
          const int c = lane + 32 * jj;
          if (c < P.d) part = fmaf(ar[jj], to_f(br[c]), part);
        }
        for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (lane == j) mine = part;
      }
      if (s0 + lane < P.K) out[s0 + lane] = from_f<T>(mine);
    }
  }
}

// Shared by av and avt: out row = sum over up to `count` terms t of w_t * y[row_t], where lane l of
// a 32-term chunk resolves term t0 + l into (row_t, w_t) with `term` (row -1: no term).
template <typename T, typename Term>
__device__ __forceinline__ void weighted_rows(const SparseParams& P, int b, int hh, int count, T* out,
                                              Term term) {
  const int lane = threadIdx.x % 32;
  float acc[kMaxCols];
#pragma unroll
  for (int j = 0; j < kMaxCols; ++j) acc[j] = 0.f;
  for (int t0 = 0; t0 < count; t0 += 32) {
    int myrow = -1;
    float myw = 0.f;
    if (t0 + lane < count) term(t0 + lane, myrow, myw);
    const int n = min(32, count - t0);
    for (int j = 0; j < n; ++j) {
      const int r = __shfl_sync(0xffffffffu, myrow, j);
      const float w = __shfl_sync(0xffffffffu, myw, j);
      if (r < 0) continue;                           // warp-uniform
      const T* yr = row_of<T>(P.y, P.ys, b, hh, r);
#pragma unroll
      for (int jj = 0; jj < kMaxCols; ++jj) {
        const int c = lane + 32 * jj;
        if (c < P.d) acc[jj] = fmaf(w, to_f(yr[c]), acc[jj]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxCols; ++j) {
    const int c = lane + 32 * j;
    if (c < P.d) out[c] = from_f<T>(acc[j]);
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) sparse_av_kernel(const SparseParams P) {
  for (int64_t row = first_row(); row < P.rows; row += row_step()) {
    int b, hh, i;
    split_row(P, row, b, hh, i);
    const T* p = row_of<T>(P.x, P.xs, b, hh, i);
    weighted_rows<T>(P, b, hh, P.K, static_cast<T*>(P.out) + row * P.d,
                     [&](int s, int& key, float& w) {
                       key = slot_key(P.g, P.sg, i, s);
                       if (key >= 0) w = to_f(p[s]);
                     });
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) sparse_avt_kernel(const SparseParams P) {
  for (int64_t row = first_row(); row < P.rows; row += row_step()) {
    int b, hh, m;
    split_row(P, row, b, hh, m);
    const Seers who = seers(P.g, P.sg, m);
    weighted_rows<T>(P, b, hh, who.count, static_cast<T*>(P.out) + row * P.d,
                     [&](int t, int& q, float& w) {
                       int slot = 0;
                       q = seer(P.g, P.sg, who, t, slot);
                       if (q >= 0) w = to_f(row_of<T>(P.x, P.xs, b, hh, q)[slot]);
                     });
  }
}

const char* check_sparse_call(const SparseCall& c) {
  if (c.op < 0 || c.op > 2) return "sparse_attn: op must be 0 (qk), 1 (av) or 2 (avt)";
  if (c.dtype < 0 || c.dtype > 2) return "sparse_attn: dtype code must be 0, 1 or 2";
  if (c.B < 1 || c.h < 1 || c.N < 1) return "sparse_attn: B, heads and N must be >= 1";
  if (c.d < 1 || c.d > kMaxSparseHeadDim) return "sparse_attn: head dim must be in 1..256";
  if (const char* e = geom_error(geom_from_list(c.geom), c.N, false)) return e;
  if (!c.x || !c.y || !c.out) return "sparse_attn: null tensor pointer";
  return nullptr;
}

template <typename T>
cudaError_t launch_sparse(const SparseCall& c, const SparseParams& P) {
  const int64_t want = (P.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int blocks = static_cast<int>(want < (1 << 20) ? want : (1 << 20));  // grid-stride beyond
  auto s = reinterpret_cast<cudaStream_t>(c.stream);
  if (c.op == 0) sparse_qk_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, s>>>(P);
  else if (c.op == 1) sparse_av_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, s>>>(P);
  else sparse_avt_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, s>>>(P);
  return cudaGetLastError();
}

}  // namespace

int sparse_attn(const SparseCall& c, const char** err) {
  if ((*err = check_sparse_call(c))) return cudaErrorInvalidValue;
  SparseParams P{};
  P.g = geom_from_list(c.geom);
  P.sg = slot_grid(P.g);
  if (static_cast<int64_t>(P.sg.rows) * P.sg.cols != c.K) {
    *err = "sparse_attn: K does not match the geometry's slot count";
    return cudaErrorInvalidValue;
  }
  P.h = static_cast<int>(c.h); P.N = static_cast<int>(c.N);
  P.K = static_cast<int>(c.K); P.d = static_cast<int>(c.d);
  P.rows = c.B * c.h * c.N;
  P.x = reinterpret_cast<const void*>(c.x);
  P.y = reinterpret_cast<const void*>(c.y);
  P.out = reinterpret_cast<void*>(c.out);
  for (int i = 0; i < 3; ++i) { P.xs[i] = c.xs[i]; P.ys[i] = c.ys[i]; }
  if (c.dtype == 0) return launch_sparse<float>(c, P);
  if (c.dtype == 1) return launch_sparse<__half>(c, P);
  return launch_sparse<__nv_bfloat16>(c, P);
}

}  // namespace cuda
}  // namespace tgf
