// pixel_shuffle_seq / pixel_unshuffle_seq on the GPU: one thread per output element, indices
// from common/shuffle.h (the same maps the CPU kernels use), fused position-embedding add.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "common/shuffle.h"
#include "cuda/launch.h"

namespace tgf {
namespace cuda {
namespace {

template <typename T> __device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_f(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16(v); }

template <typename T>
__global__ void shuffle_kernel(const T* __restrict__ x, const T* __restrict__ pos, T* __restrict__ out,
                               int64_t B, int64_t H, int64_t W, int64_t C, int64_t sxb, int64_t sxn,
                               int64_t spb) {
  const int64_t C4 = C / 4, N4 = 4 * H * W;
  const int64_t total = B * N4 * C4;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = e % C4, o = (e / C4) % N4, b = e / (C4 * N4);
    const int64_t Y = o / (2 * W), X = o % (2 * W);
    const int i = Y & 1, j = X & 1;
    const int64_t t = (Y >> 1) * W + (X >> 1);
    T v = x[b * sxb + t * sxn + shuffle_in_channel(c, i, j)];
    out[e] = pos ? from_f<T>(to_f(v) + to_f(pos[b * spb + o * C4 + c])) : v;
  }
}

template <typename T>
__global__ void unshuffle_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t B, int64_t H,
                                 int64_t W, int64_t C, int64_t sxb, int64_t sxn) {
  const int64_t N = H * W, total = B * N * C;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t cin = e % C, t = (e / C) % N, b = e / (C * N);
    const int64_t c = cin / 4;
    const int i = (cin / 2) & 1, j = cin & 1;
    out[e] = x[b * sxb + shuffle_out_token(t / W, t % W, i, j, W) * sxn + c];
  }
}

int blocks_for(int64_t total) {
  int64_t b = (total + 255) / 256;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

}  // namespace

int pixel_shuffle_seq(int dtype, const void* x, const void* pos, void* out, int64_t B, int64_t H,
                      int64_t W, int64_t C, int64_t sxb, int64_t sxn, int64_t spb, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int nb = blocks_for(B * H * W * C);
#define TGF_LAUNCH(T)                                                                          \
  shuffle_kernel<T><<<nb, 256, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(pos),   \
                                       static_cast<T*>(out), B, H, W, C, sxb, sxn, spb)
  if (dtype == 0) TGF_LAUNCH(float); else if (dtype == 1) TGF_LAUNCH(__half); else TGF_LAUNCH(__nv_bfloat16);
#undef TGF_LAUNCH
  return static_cast<int>(cudaGetLastError());
}

int pixel_unshuffle_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W,
                        int64_t C, int64_t sxb, int64_t sxn, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int nb = blocks_for(B * H * W * C);
#define TGF_LAUNCH(T)                                                                          \
  unshuffle_kernel<T><<<nb, 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), B, H,  \
                                         W, C, sxb, sxn)
  if (dtype == 0) TGF_LAUNCH(float); else if (dtype == 1) TGF_LAUNCH(__half); else TGF_LAUNCH(__nv_bfloat16);
#undef TGF_LAUNCH
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace tgf
