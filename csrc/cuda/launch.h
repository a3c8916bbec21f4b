// Host-side launchers of the CUDA kernels. Each returns a cudaError_t as int (0 = success);
// bindings_cuda.cpp turns a failure into a Python exception with cudaGetErrorString().
#pragma once
#include <cstdint>

namespace tgf {
namespace cuda {

// dtype codes shared with the Python side: 0 = float32, 1 = float16, 2 = bfloat16.
int pixel_shuffle_seq(int dtype, const void* x, const void* pos, void* out, int64_t B, int64_t H,
                      int64_t W, int64_t C, int64_t sxb, int64_t sxn, int64_t spb, uintptr_t stream);
int pixel_unshuffle_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W,
                        int64_t C, int64_t sxb, int64_t sxn, uintptr_t stream);

}  // namespace cuda
}  // namespace tgf
