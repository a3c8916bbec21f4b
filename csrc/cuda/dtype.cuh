// float <-> storage-type conversions shared by the CUDA kernels (compute is always float32).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace tgf {
namespace cuda {

template <typename T> __device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_f(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16(v); }

}  // namespace cuda
}  // namespace tgf
