// Sequence resampling on the GPU: bicubic x2 upsampling and its adjoint, 2x2 average pooling and
// its adjoint, pixel norm and its backward. (B, N, C) contiguous tensors; compute in float32.
// Both adjoints are gathers (no atomics): each output element sums the input elements whose
// forward stencil touches it, found by scanning a small window that provably contains them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "cuda/dtype.cuh"
#include "cuda/launch.h"

namespace tgf {
namespace cuda {
namespace {

constexpr float kCubicA = -0.75f;  // PyTorch's bicubic coefficient

// The 4 source rows (clamped into [0, L)) and weights of output row Y of a x2 upsampling with
// align_corners=False: src = (Y + 0.5) / 2 - 0.5, not clamped before the floor (as PyTorch).
__device__ __forceinline__ void cubic_taps(int Y, int L, int idx[4], float w[4]) {
  const float src = 0.5f * Y - 0.25f;
  const float f = floorf(src), t = src - f;
  const int i0 = static_cast<int>(f);
  const float A = kCubicA;
  const float x0 = t + 1.f, x1 = t, x2 = 1.f - t, x3 = 2.f - t;
  w[0] = ((A * x0 - 5.f * A) * x0 + 8.f * A) * x0 - 4.f * A;
  w[1] = ((A + 2.f) * x1 - (A + 3.f)) * x1 * x1 + 1.f;
  w[2] = ((A + 2.f) * x2 - (A + 3.f)) * x2 * x2 + 1.f;
  w[3] = ((A * x3 - 5.f * A) * x3 + 8.f * A) * x3 - 4.f * A;
  for (int m = 0; m < 4; ++m) idx[m] = min(max(i0 - 1 + m, 0), L - 1);
}

// Weight with which output row Y reads source row y (sum over taps that clamp onto y).
__device__ __forceinline__ float cubic_weight(int Y, int L, int y) {
  int idx[4]; float w[4];
  cubic_taps(Y, L, idx, w);
  float s = 0.f;
  for (int m = 0; m < 4; ++m) s += idx[m] == y ? w[m] : 0.f;
  return s;
}

int blocks_for(int64_t total) {
  const int64_t b = (total + 255) / 256;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

#define TGF_GRID_LOOP(e, total) \
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < (total); e += (int64_t)gridDim.x * blockDim.x)

// x (B, H*W, C) -> out (B, 4HW, C).
template <typename T>
__global__ void bicubic_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t B, int H, int W, int64_t C) {
  const int64_t N4 = 4LL * H * W;
  TGF_GRID_LOOP(e, B * N4 * C) {
    const int64_t c = e % C, o = (e / C) % N4, b = e / (C * N4);
    const int Y = static_cast<int>(o / (2 * W)), X = static_cast<int>(o % (2 * W));
    int iy[4], ix[4]; float wy[4], wx[4];
    cubic_taps(Y, H, iy, wy);
    cubic_taps(X, W, ix, wx);
    const T* xb = x + b * H * W * C + c;
    float s = 0.f;
    for (int m = 0; m < 4; ++m) {
      float r = 0.f;
      for (int n = 0; n < 4; ++n) r += wx[n] * to_f(xb[(static_cast<int64_t>(iy[m]) * W + ix[n]) * C]);
      s += wy[m] * r;
    }
    out[e] = from_f<T>(s);
  }
}

// Adjoint: g (B, 4HW, C) -> out (B, HW, C). Output rows Y that read source row y lie in
// [2y - 6, 2y + 7] (taps span src - 2 .. src + 2, src = Y/2 - 0.25; clamping only adds rows at
// the borders, which that window already reaches).
template <typename T>
__global__ void bicubic_adj_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t B, int H, int W, int64_t C) {
  const int64_t N = static_cast<int64_t>(H) * W, W2 = 2 * W;
  TGF_GRID_LOOP(e, B * N * C) {
    const int64_t c = e % C, t = (e / C) % N, b = e / (C * N);
    const int y = static_cast<int>(t / W), x = static_cast<int>(t % W);
    const T* gb = g + b * 4 * N * C + c;
    float s = 0.f;
    for (int Y = max(2 * y - 6, 0); Y <= min(2 * y + 7, 2 * H - 1); ++Y) {
      const float wy = cubic_weight(Y, H, y);
      if (wy == 0.f) continue;
      float r = 0.f;
      for (int X = max(2 * x - 6, 0); X <= min(2 * x + 7, 2 * W - 1); ++X) {
        const float wx = cubic_weight(X, W, x);
        if (wx != 0.f) r += wx * to_f(gb[(Y * W2 + X) * C]);
      }
      s += wy * r;
    }
    out[e] = from_f<T>(s);
  }
}

// x (B, H*W, C), H, W even -> out (B, HW/4, C).
template <typename T>
__global__ void pool_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t B, int H, int W, int64_t C) {
  const int h = H / 2, w = W / 2;
  const int64_t No = static_cast<int64_t>(h) * w;
  TGF_GRID_LOOP(e, B * No * C) {
    const int64_t c = e % C, o = (e / C) % No, b = e / (C * No);
    const int64_t y = o / w, xx = o % w;
    const T* xb = x + b * H * W * C + c;
    const int64_t t0 = (2 * y) * W + 2 * xx;
    const float s = to_f(xb[t0 * C]) + to_f(xb[(t0 + 1) * C]) + to_f(xb[(t0 + W) * C]) +
                    to_f(xb[(t0 + W + 1) * C]);
    out[e] = from_f<T>(0.25f * s);
  }
}

// Adjoint: g (B, HW/4, C) -> out (B, H*W, C): each high-res token gets a quarter of its cell's g.
template <typename T>
__global__ void pool_adj_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t B, int H, int W, int64_t C) {
  const int64_t N = static_cast<int64_t>(H) * W;
  const int w = W / 2;
  TGF_GRID_LOOP(e, B * N * C) {
    const int64_t c = e % C, t = (e / C) % N, b = e / (C * N);
    const int64_t o = (t / W / 2) * w + (t % W) / 2;
    out[e] = from_f<T>(0.25f * to_f(g[(b * (N / 4) + o) * C + c]));
  }
}

// One warp per row of C: y = x * r, r = (mean(x^2) + 1e-8)^-1/2; with g: dx = r g - x r^3 (g.x) / C.
template <typename T>
__global__ void pixel_norm_kernel(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ out,
                                  int64_t rows, int64_t C) {
  const int lane = threadIdx.x % 32, wpb = blockDim.x / 32;
  for (int64_t row = blockIdx.x * (int64_t)wpb + threadIdx.x / 32; row < rows; row += (int64_t)gridDim.x * wpb) {
    const T* xr = x + row * C;
    float ss = 0.f, gx = 0.f;
    for (int64_t c = lane; c < C; c += 32) {
      const float v = to_f(xr[c]);
      ss += v * v;
      if (g) gx += v * to_f(g[row * C + c]);
    }
    for (int o = 16; o > 0; o >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
      gx += __shfl_xor_sync(0xffffffffu, gx, o);
    }
    const float r = 1.f / sqrtf(ss / static_cast<float>(C) + 1e-8f);
    const float k = r * r * r * gx / static_cast<float>(C);
    for (int64_t c = lane; c < C; c += 32) {
      const float v = to_f(xr[c]);
      out[row * C + c] = from_f<T>(g ? r * to_f(g[row * C + c]) - v * k : v * r);
    }
  }
}

template <template <typename> class Launch, typename... Args>
int by_dtype(int dtype, Args... args) {
  if (dtype == 0) Launch<float>::run(args...);
  else if (dtype == 1) Launch<__half>::run(args...);
  else if (dtype == 2) Launch<__nv_bfloat16>::run(args...);
  else return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

template <typename T> struct BicubicL {
  static void run(const void* x, void* out, int64_t B, int H, int W, int64_t C, bool adj, cudaStream_t s) {
    if (adj) bicubic_adj_kernel<T><<<blocks_for(B * H * W * C), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), B, H, W, C);
    else bicubic_kernel<T><<<blocks_for(4 * B * H * W * C), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), B, H, W, C);
  }
};
template <typename T> struct PoolL {
  static void run(const void* x, void* out, int64_t B, int H, int W, int64_t C, bool adj, cudaStream_t s) {
    if (adj) pool_adj_kernel<T><<<blocks_for(B * H * W * C), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), B, H, W, C);
    else pool_kernel<T><<<blocks_for(B * H * W * C / 4), 256, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), B, H, W, C);
  }
};
template <typename T> struct NormL {
  static void run(const void* x, const void* g, void* out, int64_t rows, int64_t C, cudaStream_t s) {
    const int64_t blocks = (rows + 7) / 8;
    pixel_norm_kernel<T><<<static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(g), static_cast<T*>(out), rows, C);
  }
};

}  // namespace

int bicubic_upsample_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W,
                         int64_t C, bool adjoint, uintptr_t stream) {
  if (B < 1 || H < 1 || W < 1 || C < 1 || 4 * H * W > (1LL << 31)) return static_cast<int>(cudaErrorInvalidValue);
  return by_dtype<BicubicL>(dtype, x, out, B, static_cast<int>(H), static_cast<int>(W), C, adjoint,
                            reinterpret_cast<cudaStream_t>(stream));
}

int avg_pool_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W, int64_t C,
                 bool adjoint, uintptr_t stream) {
  if (B < 1 || H < 2 || W < 2 || H % 2 || W % 2 || C < 1) return static_cast<int>(cudaErrorInvalidValue);
  return by_dtype<PoolL>(dtype, x, out, B, static_cast<int>(H), static_cast<int>(W), C, adjoint,
                         reinterpret_cast<cudaStream_t>(stream));
}

int pixel_norm(int dtype, const void* x, const void* g, void* out, int64_t T, int64_t C, uintptr_t stream) {
  if (T < 0 || C < 1) return static_cast<int>(cudaErrorInvalidValue);
  if (T == 0) return 0;
  return by_dtype<NormL>(dtype, x, g, out, T, C, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace cuda
}  // namespace tgf
