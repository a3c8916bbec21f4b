// Fused attention forward (flash-style, online softmax) for every geometry kind, plus the host
// checks shared with the backward. See attention.cuh for the tiling design.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "cuda/attention.cuh"

namespace tgf {
namespace cuda {
namespace {

template <typename T>
struct FwdSmem {
  T *Q, *K, *V, *P;
  float *S, *O, *m, *l;
  int *qtok, *ktok;
  size_t bytes;
  __host__ __device__ FwdSmem(char* base, int t, int dpad) {
    const Lds ld(t, dpad);
    Carve cv{base};
    Q = cv.take<T>(t * ld.T); K = cv.take<T>(t * ld.T); V = cv.take<T>(t * ld.T);
    P = cv.take<T>(t * ld.P);
    S = cv.take<float>(t * ld.S); O = cv.take<float>(t * ld.O);
    m = cv.take<float>(t); l = cv.take<float>(t);
    qtok = cv.take<int>(t); ktok = cv.take<int>(t);
    bytes = cv.off;
  }
};

// grid: (query tiles, B * h). Writes out (B, h, N, d) and lse (B, h, N) for the block's queries.
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const AttnParams P) {
  extern __shared__ __align__(128) char smem[];
  const int t = P.t, dpad = P.dpad;
  const Lds ld(t, dpad);
  FwdSmem<T> s(smem, t, dpad);
  const Geom g = P.g;
  const int bh = blockIdx.y, b = bh / P.h, hh = bh % P.h;
  const int Wq = plane_cols(g), lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  const Rect qt = rect_tile(g, t, blockIdx.x);
  chunk_tokens(s.qtok, qt, Wq, 0, t);
  for (int r = threadIdx.x; r < t; r += kThreads) { s.m[r] = -INFINITY; s.l[r] = 0.f; }
  for (int e = threadIdx.x; e < t * ld.O; e += kThreads) s.O[e] = 0.f;
  __syncthreads();
  load_rows<T>(s.Q, ld.T, P, Q, b, hh, s.qtok);

  const Rect kr = candidate_keys(g, qt);
  const int nk = rect_size(kr);
  for (int k0 = 0; k0 < nk; k0 += t) {
    __syncthreads();  // the previous chunk is done with ktok, K, V, P
    chunk_tokens(s.ktok, kr, Wq, k0, t);
    __syncthreads();
    load_rows<T>(s.K, ld.T, P, K, b, hh, s.ktok);
    // Block-uniform: does this chunk hold a NaN/Inf value? (then P V runs over visible pairs only)
    const bool v_nonfinite = __syncthreads_or(load_rows_nonfinite<T>(s.V, ld.T, P, V, b, hh, s.ktok));
    tile_mm<T, false, true>(s.S, ld.S, s.Q, ld.T, s.K, ld.T, t, t, dpad, false);  // Q K^T
    __syncthreads();
    int any = 0;
    for (int e = threadIdx.x; e < t * t; e += kThreads) {
      const int r = e / t, c = e % t, qi = s.qtok[r], kj = s.ktok[c];
      float v = -INFINITY;
      if (qi >= 0 && kj >= 0 && visible(g, qi, kj)) {
        v = logit(P, hh, qi, kj, s.S[r * ld.S + c]);
        any = 1;
      }
      s.S[r * ld.S + c] = v;
    }
    if (!__syncthreads_or(any)) continue;  // block-uniform: no visible pair in this chunk
    // Online softmax, one warp per row: new running max, rescale O and l, P = exp(S - m).
    for (int r = warp; r < t; r += kWarps) {
      float mx = -INFINITY;
      for (int c = lane; c < t; c += 32) mx = nan_max(mx, s.S[r * ld.S + c]);
      mx = warp_max(mx);
      const float m_old = s.m[r], m_new = nan_max(m_old, mx);
      const bool empty = m_new == -INFINITY;  // nothing visible in this row yet
      const float corr = empty ? 1.f : expf(m_old - m_new);
      float sum = 0.f;
      for (int c = lane; c < t; c += 32) {
        const float p = empty ? 0.f : expf(s.S[r * ld.S + c] - m_new);
        s.P[r * ld.P + c] = from_f<T>(p);
        sum += p;
      }
      sum = warp_sum(sum);
      for (int c = lane; c < dpad; c += 32) s.O[r * ld.O + c] *= corr;
      if (lane == 0) { s.m[r] = m_new; s.l[r] = s.l[r] * corr + sum; }
    }
    __syncthreads();
    if (v_nonfinite)
      pv_visible<T>(s.O, ld.O, s.P, ld.P, s.V, ld.T, t, dpad, g, s.qtok, s.ktok);  // O += P V, exact
    else
      tile_mm<T, false, false>(s.O, ld.O, s.P, ld.P, s.V, ld.T, t, dpad, t, true);  // O += P V
  }
  __syncthreads();
  const int d = P.d;
  for (int e = threadIdx.x; e < t * d; e += kThreads) {
    const int r = e / d, c = e % d, n = s.qtok[r];
    if (n >= 0) token_row<T>(P, O, b, hh, n)[c] = from_f<T>(s.O[r * ld.O + c] / s.l[r]);
  }
  for (int r = threadIdx.x; r < t; r += kThreads)
    if (s.qtok[r] >= 0)
      P.lse[static_cast<int64_t>(bh) * P.N + s.qtok[r]] = s.m[r] + logf(s.l[r]);
}

template <typename T>
int launch_fwd(AttnParams P, cudaStream_t stream, const char** err) {
  const size_t cap = max_smem_optin();
  const int t = pick_tile([&](int tt) { return FwdSmem<T>(nullptr, tt, P.dpad).bytes; }, cap);
  if (t == 0) { *err = "attn_fwd: head dim too large for this device's shared memory"; return cudaErrorInvalidValue; }
  P.t = t;
  const size_t bytes = FwdSmem<T>(nullptr, t, P.dpad).bytes;
  cudaError_t e = cudaFuncSetAttribute(attn_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes));
  if (e != cudaSuccess) return e;
  dim3 grid(rect_tile_count(P.g, t), P.B * P.h);
  attn_fwd_kernel<T><<<grid, kThreads, bytes, stream>>>(P);
  return cudaGetLastError();
}

}  // namespace

size_t max_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
  return static_cast<size_t>(v);
}

const char* check_attn_call(const AttnCall& c, bool backward) {
  if (c.dtype < 0 || c.dtype > 2) return "attention: dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16)";
  if (c.d < 1 || c.d > 256) return "attention: head dim d must be in 1..256";
  if (c.B < 1 || c.h < 1 || c.B * c.h > 65535) return "attention: B * heads must be in 1..65535";
  if (const char* e = geom_error(geom_from_list(c.geom), c.N, c.bias != 0)) return e;
  const int slots = backward ? NSLOT : 4;
  for (int i = 0; i < slots; ++i)
    if (!c.ptr[i]) return "attention: null tensor pointer";
  if (!c.lse) return "attention: null lse pointer";
  if (backward && !c.delta) return "attention: null delta scratch pointer";
  if (backward && c.bias && !c.dbias) return "attention: bias given without a dbias buffer";
  return nullptr;
}

AttnParams make_params(const AttnCall& c) {
  AttnParams P{};
  P.g = geom_from_list(c.geom);
  P.B = static_cast<int>(c.B); P.h = static_cast<int>(c.h); P.N = static_cast<int>(c.N);
  P.d = static_cast<int>(c.d); P.dpad = (P.d + 15) / 16 * 16; P.t = 0;
  P.scale = c.scale;
  for (int i = 0; i < NSLOT; ++i)
    P.v[i] = View{reinterpret_cast<void*>(c.ptr[i]), c.sb[i], c.sh[i], c.sn[i]};
  P.bias = reinterpret_cast<const float*>(c.bias);
  P.dbias = reinterpret_cast<float*>(c.dbias);
  P.lse = reinterpret_cast<float*>(c.lse);
  P.delta = reinterpret_cast<float*>(c.delta);
  return P;
}

int attn_fwd(const AttnCall& c, const char** err) {
  if ((*err = check_attn_call(c, false))) return cudaErrorInvalidValue;
  const AttnParams P = make_params(c);
  auto s = reinterpret_cast<cudaStream_t>(c.stream);
  if (c.dtype == 0) return launch_fwd<float>(P, s, err);
  if (c.dtype == 1) return launch_fwd<__half>(P, s, err);
  return launch_fwd<__nv_bfloat16>(P, s, err);
}

}  // namespace cuda
}  // namespace tgf
