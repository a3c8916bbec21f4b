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

// One fused-attention call. Tensors are (B, h, N, d) views with stride(-1) == 1, given as a data
// pointer and (batch, head, token) strides in elements; slot order in `view`:
// 0 q, 1 k, 2 v, 3 out, 4 dout, 5 dq, 6 dk, 7 dv (the forward uses slots 0-3).
enum AttnSlot { Q = 0, K = 1, V = 2, O = 3, DO = 4, DQ = 5, DK = 6, DV = 7, NSLOT = 8 };
struct AttnCall {
  int dtype = 0;
  int geom[9] = {0};
  int64_t B = 0, h = 0, N = 0, d = 0;
  float scale = 1.f;
  uintptr_t ptr[NSLOT] = {0};
  int64_t sb[NSLOT] = {0}, sh[NSLOT] = {0}, sn[NSLOT] = {0};
  uintptr_t bias = 0, dbias = 0;  // float32 (rows, h); dbias zero-initialised by the caller
  uintptr_t lse = 0;              // float32 (B, h, N) contiguous
  uintptr_t delta = 0;            // float32 (B, h, N) scratch for the backward
  uintptr_t stream = 0;
  // Backward with bias: float32 (chunk, h, N, K) scratch of per-slot dS (common/neighbours.h),
  // reduced into dbias in a fixed order after each chunk of `chunk` batch elements.
  uintptr_t dslot = 0;
  int64_t chunk = 0;
};
// Argument problems come back as a message in `err` and cudaErrorInvalidValue.
int attn_fwd(const AttnCall& c, const char** err);
int attn_bwd(const AttnCall& c, const char** err);

// One sparse-logit primitive (cuda/sparse_attn.cu; slot layout common/neighbours.h):
// op 0 qk (x = a, y = b, out (B, h, N, K)), 1 av (x = p, y = v, out (B, h, N, d)),
// 2 avt (x = p, y = x, out (B, h, N, d)). x and y are views with stride(-1) == 1 given by a data
// pointer and (batch, head, token) element strides; out is contiguous. d <= kMaxSparseHeadDim.
constexpr int kMaxSparseHeadDim = 256;
struct SparseCall {
  int op = 0, dtype = 0;
  int geom[9] = {0};
  int64_t B = 0, h = 0, N = 0, d = 0, K = 0;
  uintptr_t x = 0, y = 0, out = 0;
  int64_t xs[3] = {0}, ys[3] = {0};
  uintptr_t stream = 0;
};
int sparse_attn(const SparseCall& c, const char** err);

// Resampling ops on contiguous (B, N, C) tensors; H, W as in _library.py.
int bicubic_upsample_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W,
                         int64_t C, bool adjoint, uintptr_t stream);
int avg_pool_seq(int dtype, const void* x, void* out, int64_t B, int64_t H, int64_t W, int64_t C,
                 bool adjoint, uintptr_t stream);
int pixel_norm(int dtype, const void* x, const void* g, void* out, int64_t T, int64_t C,
               uintptr_t stream);

}  // namespace cuda
}  // namespace tgf
