// Shared pieces of the fused attention kernels (attention_fwd.cu, attention_bwd.cu).
//
// Design, chosen to be right by construction:
// - A block (4 warps) owns one tile of at most `t` tokens (t = 64, 32 or 16, chosen on the host
//   from the shared-memory budget) of one (batch, head): a rectangle of the plane (the rect
//   tiling of common/tiles.h). Its candidates are the bounding rectangle of what that tile can
//   see (candidate_keys / candidate_queries), walked in chunks of `t`; every pair is masked
//   exactly with tgf::visible, so the rectangle only has to be a superset. A chunk with no visible pair is
//   skipped after one block-wide vote.
// - Every tile lives in shared memory: token rows zero-filled past the tile and head dims zero-
//   padded to dpad = roundup(d, 16), so matrix products never need bounds checks. Products are
//   `tile_mm`: nvcuda::wmma 16x16x16 with float32 accumulators for float16/bfloat16, a plain
//   float32 loop for float32. Softmax statistics, bias gather and masking are scalar float32.
#pragma once
#include <cuda_runtime.h>
#include <mma.h>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include "common/geometry.h"
#include "common/neighbours.h"
#include "common/tiles.h"
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace tgf {
namespace cuda {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

struct View {
  void* p;
  int64_t sb, sh, sn;  // element strides of batch, head, token; the head dim is contiguous
};

struct AttnParams {
  Geom g;
  int B, h, N, d, dpad, t;
  float scale;
  View v[NSLOT];
  const float* bias;
  float* dbias;
  float* lse;
  float* delta;
  // Backward with bias: per-slot dS scratch of batch elements [b0, b0 + chunk) (bias_grad.cu).
  float* dslot;
  SlotGrid sg;
  int K, b0, chunk;
};

template <typename T>
__device__ __forceinline__ T* token_row(const AttnParams& P, int slot, int b, int hh, int n) {
  const View& v = P.v[slot];
  return static_cast<T*>(v.p) + b * v.sb + hh * v.sh + static_cast<int64_t>(n) * v.sn;
}

// Bump allocator over dynamic shared memory; with base == nullptr it only measures (host side),
// so the host's byte count and the kernel's carving are the same code.
struct Carve {
  char* base;
  size_t off = 0;
  template <typename U>
  __host__ __device__ U* take(size_t n) {
    U* r = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += (n * sizeof(U) + 127) / 128 * 128;  // keep every array 128-byte aligned (wmma: 32)
    return r;
  }
};

// Leading dimensions (elements) of the shared tiles. Multiples of 8 (T) / 4 (float) as wmma
// requires; the +8/+4 skew spreads rows over shared-memory banks.
struct Lds {
  int T, P, S, O;
  __host__ __device__ Lds(int t, int dpad) : T(dpad + 8), P(t + 8), S(t + 4), O(dpad + 4) {}
};

// C[M x N] (float, row-major, ldc) = (acc ? C : 0) + A[M x K] * B[K x N].
// A_COL: A is stored column-major (element (m, k) at A[k * lda + m]), else row-major;
// B_COL: B is stored column-major (element (k, n) at B[n * ldb + k]), else row-major.
// M, N, K are multiples of 16. Every thread of the block calls it; no synchronisation inside.
template <typename T, bool A_COL, bool B_COL>
__device__ __forceinline__ void tile_mm(float* C, int ldc, const T* A, int lda, const T* B, int ldb, int M, int N,
                        int K, bool acc) {
  if constexpr (std::is_same<T, float>::value) {
    for (int e = threadIdx.x; e < M * N; e += kThreads) {
      const int m = e / N, n = e % N;
      float s = acc ? C[m * ldc + n] : 0.f;
      for (int k = 0; k < K; ++k) {
        const float a = A_COL ? A[k * lda + m] : A[m * lda + k];
        const float b = B_COL ? B[n * ldb + k] : B[k * ldb + n];
        s = fmaf(a, b, s);
      }
      C[m * ldc + n] = s;
    }
  } else {
    namespace w = nvcuda::wmma;
    using ALay = typename std::conditional<A_COL, w::col_major, w::row_major>::type;
    using BLay = typename std::conditional<B_COL, w::col_major, w::row_major>::type;
    const int warp = threadIdx.x / 32, tn = N / 16, frags = (M / 16) * tn;
    for (int f = warp; f < frags; f += kWarps) {
      const int i = f / tn, j = f % tn;
      float* cp = C + i * 16 * ldc + j * 16;
      w::fragment<w::accumulator, 16, 16, 16, float> c;
      if (acc) w::load_matrix_sync(c, cp, ldc, w::mem_row_major);
      else w::fill_fragment(c, 0.f);
#pragma unroll 1
      for (int kk = 0; kk < K; kk += 16) {
        w::fragment<w::matrix_a, 16, 16, 16, T, ALay> a;
        w::fragment<w::matrix_b, 16, 16, 16, T, BLay> b;
        w::load_matrix_sync(a, A_COL ? A + kk * lda + i * 16 : A + i * 16 * lda + kk, lda);
        w::load_matrix_sync(b, B_COL ? B + j * 16 * ldb + kk : B + kk * ldb + j * 16, ldb);
        w::mma_sync(c, a, b, c);
      }
      w::store_matrix_sync(cp, c, ldc, w::mem_row_major);
    }
  }
}

// tok[r] = flat token of row r of a chunk (or -1 past its end): points [r0, r0 + t) of `rect`,
// a rectangle of a plane with `cols` columns.
__device__ __forceinline__ void chunk_tokens(int* tok, const Rect& rect, int cols, int r0, int t) {
  const int n = rect_size(rect);
  for (int r = threadIdx.x; r < t; r += kThreads)
    tok[r] = r0 + r < n ? rect_token(rect, cols, r0 + r) : -1;
}

// dst[r][c] = tensor[token tok[r]][c] for c < d, zero elsewhere (all t x dpad entries written).
template <typename T>
__device__ __forceinline__ void load_rows(T* dst, int ld, const AttnParams& P, int slot, int b, int hh,
                          const int* tok) {
  const int d = P.d, dpad = P.dpad;
  for (int e = threadIdx.x; e < P.t * dpad; e += kThreads) {
    const int r = e / dpad, c = e % dpad, n = tok[r];
    dst[r * ld + c] = (n >= 0 && c < d) ? token_row<T>(P, slot, b, hh, n)[c] : from_f<T>(0.f);
  }
}

// load_rows, returning whether any value this thread loaded is NaN or +-Inf (combine the
// threads' answers with __syncthreads_or).
template <typename T>
__device__ __forceinline__ int load_rows_nonfinite(T* dst, int ld, const AttnParams& P, int slot, int b,
                                                   int hh, const int* tok) {
  const int d = P.d, dpad = P.dpad;
  int bad = 0;
  for (int e = threadIdx.x; e < P.t * dpad; e += kThreads) {
    const int r = e / dpad, c = e % dpad, n = tok[r];
    const T x = (n >= 0 && c < d) ? token_row<T>(P, slot, b, hh, n)[c] : from_f<T>(0.f);
    dst[r * ld + c] = x;
    bad |= !isfinite(to_f<T>(x));
  }
  return bad;
}

// O[r][c] += sum over the chunk's keys j that row r sees of P[r][j] * V[j][c] (t x dpad entries):
// the exact product for a chunk holding a NaN/Inf value, which the dense tile_mm would spread to
// every row through a masked key's zero weight (0 * NaN = NaN). Rare, so plain scalar code.
template <typename T>
__device__ __forceinline__ void pv_visible(float* O, int ldo, const T* Pm, int ldp, const T* V, int ldv,
                                           int t, int dpad, const Geom& g, const int* qtok,
                                           const int* ktok) {
  for (int e = threadIdx.x; e < t * dpad; e += kThreads) {
    const int r = e / dpad, c = e % dpad, qi = qtok[r];
    if (qi < 0) continue;
    float s = O[r * ldo + c];
    for (int j = 0; j < t; ++j) {
      const int kj = ktok[j];
      if (kj >= 0 && visible(g, qi, kj)) s = fmaf(to_f<T>(Pm[r * ldp + j]), to_f<T>(V[j * ldv + c]), s);
    }
    O[r * ldo + c] = s;
  }
}

// tensor[token tok[r]][c] = alpha * src[r][c] for valid rows, c < d.
template <typename T>
__device__ __forceinline__ void store_rows(const float* src, int ld, float alpha, const AttnParams& P, int slot,
                           int b, int hh, const int* tok) {
  const int d = P.d;
  for (int e = threadIdx.x; e < P.t * d; e += kThreads) {
    const int r = e / d, c = e % d, n = tok[r];
    if (n >= 0) token_row<T>(P, slot, b, hh, n)[c] = from_f<T>(alpha * src[r * ld + c]);
  }
}

// max that propagates NaN (fmaxf drops it: fmaxf(x, NaN) == x), so a NaN logit of a visible pair
// makes its row NaN instead of vanishing from the softmax.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The scaled, biased logit of a visible pair.
__device__ __forceinline__ float logit(const AttnParams& P, int hh, int qi, int kj, float dot) {
  float s = dot * P.scale;
  if (P.bias) s += P.bias[bias_row(P.g, qi, kj) * P.h + hh];
  return s;
}

// Host: the largest tile size in {64, 32, 16} whose shared memory fits `max_smem` bytes.
template <typename SizeFn>
inline int pick_tile(SizeFn bytes_for, size_t max_smem) {
  for (int t : {64, 32, 16})
    if (bytes_for(t) <= max_smem) return t;
  return 0;
}

// Host: argument checks shared by forward and backward; returns a message or nullptr.
const char* check_attn_call(const AttnCall& c, bool backward);
// Host: fill AttnParams from a checked call (dpad set; t left 0).
AttnParams make_params(const AttnCall& c);
// Host: opt-in shared memory per block of the current device (0 if unknown).
size_t max_smem_optin();
// Host: pass 2 of the deterministic dbias (bias_grad.cu): dbias += fixed-order sums of the
// scratch slots of `nb` batch elements, per table row and head.
cudaError_t bias_reduce(const AttnParams& P, int nb, cudaStream_t stream);

}  // namespace cuda
}  // namespace tgf
