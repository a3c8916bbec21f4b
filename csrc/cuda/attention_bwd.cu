// Fused attention backward: three kernels, no atomics on q/k/v gradients.
//   delta:  D_i = sum_c dO_ic O_ic                        (one warp per query row)
//   dq:     per query tile, walk its candidate keys:  dQ = scale * dS K; with a bias, dS of each
//           visible pair is stored in its neighbour slot, and bias_grad.cu sums the slots of every
//           table row in a fixed order (deterministic dbias, no atomics; batch in scratch chunks)
//   dkdv:   per key tile, walk its candidate queries:  dV = P^T dO, dK = scale * dS^T Q
// with P = exp(logit - lse) on visible pairs (0 elsewhere) and dS = P * (dO V^T - D).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "cuda/attention.cuh"

namespace tgf {
namespace cuda {
namespace {

// Shared tiles of both backward kernels. `own` is the block's tile (Q, dO for dq; K, V for dkdv),
// `other` the walked chunk; Acc1 (and Acc2 for dkdv) the float accumulators.
template <typename T>
struct BwdSmem {
  T *Q, *dO, *K, *V, *P, *dS;
  float *S, *dP, *acc1, *acc2, *lse, *D;
  int *qtok, *ktok;
  size_t bytes;
  __host__ __device__ BwdSmem(char* base, int t, int dpad, bool two_acc) {
    const Lds ld(t, dpad);
    Carve cv{base};
    Q = cv.take<T>(t * ld.T); dO = cv.take<T>(t * ld.T);
    K = cv.take<T>(t * ld.T); V = cv.take<T>(t * ld.T);
    P = two_acc ? cv.take<T>(t * ld.P) : nullptr;
    dS = cv.take<T>(t * ld.P);
    S = cv.take<float>(t * ld.S); dP = cv.take<float>(t * ld.S);
    acc1 = cv.take<float>(t * ld.O);
    acc2 = two_acc ? cv.take<float>(t * ld.O) : nullptr;
    lse = cv.take<float>(t); D = cv.take<float>(t);
    qtok = cv.take<int>(t); ktok = cv.take<int>(t);
    bytes = cv.off;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_delta_kernel(const AttnParams P) {
  const int64_t rows = static_cast<int64_t>(P.B) * P.h * P.N;
  const int lane = threadIdx.x % 32;
  for (int64_t row = (blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x) / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int n = static_cast<int>(row % P.N), bh = static_cast<int>(row / P.N);
    const T* o = token_row<T>(P, O, bh / P.h, bh % P.h, n);
    const T* go = token_row<T>(P, DO, bh / P.h, bh % P.h, n);
    float s = 0.f;
    for (int c = lane; c < P.d; c += 32) s += to_f(o[c]) * to_f(go[c]);
    s = warp_sum(s);
    if (lane == 0) P.delta[row] = s;
  }
}

// Loads Q, dO, lse and D for query chunk rows (qtok filled), K and V for key rows (ktok filled),
// computes S = Q K^T and dP = dO V^T, then P and dS on visible pairs (0 elsewhere).
// Returns the block-wide vote "some pair was visible". Ends synchronised.
template <typename T>
__device__ __forceinline__ bool pair_tiles(const AttnParams& P, BwdSmem<T>& s, const Lds& ld, int hh,
                           bool write_p, float* dslot) {
  const int t = P.t;
  tile_mm<T, false, true>(s.S, ld.S, s.Q, ld.T, s.K, ld.T, t, t, P.dpad, false);
  tile_mm<T, false, true>(s.dP, ld.S, s.dO, ld.T, s.V, ld.T, t, t, P.dpad, false);
  __syncthreads();
  int any = 0;
  for (int e = threadIdx.x; e < t * t; e += kThreads) {
    const int r = e / t, c = e % t, qi = s.qtok[r], kj = s.ktok[c];
    float p = 0.f, ds = 0.f;
    if (qi >= 0 && kj >= 0 && visible(P.g, qi, kj)) {
      p = expf(logit(P, hh, qi, kj, s.S[r * ld.S + c]) - s.lse[r]);
      ds = p * (s.dP[r * ld.S + c] - s.D[r]);
      if (dslot) dslot[static_cast<int64_t>(qi) * P.K + key_slot(P.g, P.sg, qi, kj)] = ds;
      any = 1;
    }
    if (write_p) s.P[r * ld.P + c] = from_f<T>(p);
    s.dS[r * ld.P + c] = from_f<T>(ds);
  }
  return __syncthreads_or(any) != 0;
}

// Query-row statistics of a chunk (lse and D; 0 for rows past the chunk).
template <typename T>
__device__ __forceinline__ void load_row_stats(const AttnParams& P, BwdSmem<T>& s, int bh) {
  for (int r = threadIdx.x; r < P.t; r += kThreads) {
    const int n = s.qtok[r];
    const int64_t i = static_cast<int64_t>(bh) * P.N + n;
    s.lse[r] = n >= 0 ? P.lse[i] : 0.f;
    s.D[r] = n >= 0 ? P.delta[i] : 0.f;
  }
}

// grid: (query tiles, B * h).
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_dq_kernel(const AttnParams P) {
  extern __shared__ __align__(128) char smem[];
  const int t = P.t, dpad = P.dpad;
  const Lds ld(t, dpad);
  BwdSmem<T> s(smem, t, dpad, false);
  const int bh = blockIdx.y, b = P.b0 + bh / P.h, hh = bh % P.h, Wq = plane_cols(P.g);
  float* dslot = P.dslot ? P.dslot + static_cast<int64_t>(bh) * P.N * P.K : nullptr;  // chunk-local

  const Rect qt = rect_tile(P.g, t, blockIdx.x);
  chunk_tokens(s.qtok, qt, Wq, 0, t);
  for (int e = threadIdx.x; e < t * ld.O; e += kThreads) s.acc1[e] = 0.f;
  __syncthreads();
  load_rows<T>(s.Q, ld.T, P, Q, b, hh, s.qtok);
  load_rows<T>(s.dO, ld.T, P, DO, b, hh, s.qtok);
  load_row_stats(P, s, b * P.h + hh);

  const Rect kr = candidate_keys(P.g, qt);
  const int nk = rect_size(kr);
  for (int k0 = 0; k0 < nk; k0 += t) {
    __syncthreads();
    chunk_tokens(s.ktok, kr, Wq, k0, t);
    __syncthreads();
    load_rows<T>(s.K, ld.T, P, K, b, hh, s.ktok);
    load_rows<T>(s.V, ld.T, P, V, b, hh, s.ktok);
    __syncthreads();
    if (!pair_tiles(P, s, ld, hh, false, dslot)) continue;
    tile_mm<T, false, false>(s.acc1, ld.O, s.dS, ld.P, s.K, ld.T, t, dpad, t, true);  // dQ += dS K
  }
  __syncthreads();
  store_rows<T>(s.acc1, ld.O, P.scale, P, DQ, b, hh, s.qtok);
}

// grid: (key tiles, B * h).
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_dkdv_kernel(const AttnParams P) {
  extern __shared__ __align__(128) char smem[];
  const int t = P.t, dpad = P.dpad;
  const Lds ld(t, dpad);
  BwdSmem<T> s(smem, t, dpad, true);
  const int bh = blockIdx.y, b = bh / P.h, hh = bh % P.h, Wq = plane_cols(P.g);

  const Rect kt = rect_tile(P.g, t, blockIdx.x);
  chunk_tokens(s.ktok, kt, Wq, 0, t);
  for (int e = threadIdx.x; e < t * ld.O; e += kThreads) { s.acc1[e] = 0.f; s.acc2[e] = 0.f; }
  __syncthreads();
  load_rows<T>(s.K, ld.T, P, K, b, hh, s.ktok);
  load_rows<T>(s.V, ld.T, P, V, b, hh, s.ktok);

  const Rect qr = candidate_queries(P.g, kt);
  const int nq = rect_size(qr);
  for (int q0 = 0; q0 < nq; q0 += t) {
    __syncthreads();
    chunk_tokens(s.qtok, qr, Wq, q0, t);
    __syncthreads();
    load_rows<T>(s.Q, ld.T, P, Q, b, hh, s.qtok);
    load_rows<T>(s.dO, ld.T, P, DO, b, hh, s.qtok);
    load_row_stats(P, s, bh);
    __syncthreads();
    if (!pair_tiles(P, s, ld, hh, true, nullptr)) continue;
    // P and dS are [query][key] row-major, i.e. P^T and dS^T column-major.
    tile_mm<T, true, false>(s.acc2, ld.O, s.P, ld.P, s.dO, ld.T, t, dpad, t, true);  // dV += P^T dO
    tile_mm<T, true, false>(s.acc1, ld.O, s.dS, ld.P, s.Q, ld.T, t, dpad, t, true);  // dK += dS^T Q
  }
  __syncthreads();
  store_rows<T>(s.acc1, ld.O, P.scale, P, DK, b, hh, s.ktok);
  store_rows<T>(s.acc2, ld.O, 1.f, P, DV, b, hh, s.ktok);
}

template <typename T, typename Kern>
cudaError_t launch_tiled(Kern kernel, AttnParams P, bool two_acc, int nbatch, cudaStream_t stream,
                         const char** err) {
  const size_t cap = max_smem_optin();
  const int t = pick_tile([&](int tt) { return BwdSmem<T>(nullptr, tt, P.dpad, two_acc).bytes; }, cap);
  if (t == 0) { *err = "attn_bwd: head dim too large for this device's shared memory"; return cudaErrorInvalidValue; }
  P.t = t;
  const size_t bytes = BwdSmem<T>(nullptr, t, P.dpad, two_acc).bytes;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(rect_tile_count(P.g, t), nbatch * P.h), kThreads, bytes, stream>>>(P);
  return cudaGetLastError();
}

template <typename T>
int launch_bwd(const AttnParams& P, cudaStream_t stream, const char** err) {
  const int64_t rows = static_cast<int64_t>(P.B) * P.h * P.N;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  attn_delta_kernel<T><<<static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16), kThreads, 0, stream>>>(P);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (!P.dslot) {
    e = launch_tiled<T>(attn_dq_kernel<T>, P, false, P.B, stream, err);
  } else {  // each chunk's slots are reduced into dbias before the next chunk overwrites them
    for (int b0 = 0; b0 < P.B && e == cudaSuccess; b0 += P.chunk) {
      AttnParams C = P;
      C.b0 = b0;
      const int nb = P.B - b0 < P.chunk ? P.B - b0 : P.chunk;
      e = launch_tiled<T>(attn_dq_kernel<T>, C, false, nb, stream, err);
      if (e == cudaSuccess) e = bias_reduce(C, nb, stream);
    }
  }
  if (e != cudaSuccess) return e;
  return launch_tiled<T>(attn_dkdv_kernel<T>, P, true, P.B, stream, err);
}

}  // namespace

int attn_bwd(const AttnCall& c, const char** err) {
  if ((*err = check_attn_call(c, true))) return cudaErrorInvalidValue;
  if (c.bias && (!c.dslot || c.chunk < 1)) {
    *err = "attn_bwd: bias given without a dS slot scratch (dslot, chunk >= 1)";
    return cudaErrorInvalidValue;
  }
  AttnParams P = make_params(c);
  P.sg = slot_grid(P.g);
  P.K = P.sg.rows * P.sg.cols;
  P.dslot = c.bias ? reinterpret_cast<float*>(c.dslot) : nullptr;
  P.chunk = static_cast<int>(c.chunk < c.B ? c.chunk : c.B);
  P.b0 = 0;
  auto s = reinterpret_cast<cudaStream_t>(c.stream);
  if (c.dtype == 0) return launch_bwd<float>(P, s, err);
  if (c.dtype == 1) return launch_bwd<__half>(P, s, err);
  return launch_bwd<__nv_bfloat16>(P, s, err);
}

}  // namespace cuda
}  // namespace tgf
