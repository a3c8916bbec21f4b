// Declarations of the CPU kernels (raw pointers, shapes, element strides; no validation here:
// transgan_fast/ops/_cpu.py checks every argument before a launch).
#pragma once
#include <cstdint>
#include "common/geometry.h"
#include "cpu/platform.h"

namespace tgf {

void pixel_shuffle_seq_f32(const float* x, const float* pos, float* out, int64_t B, int64_t H,
                           int64_t W, int64_t C, int64_t sxb, int64_t sxn, int64_t spb, int threads);
void pixel_unshuffle_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W, int64_t C,
                             int64_t sxb, int64_t sxn, int threads);

// A (B, heads, N, d) float32 view: element (b, h, n, c) at p[b*sb + h*sh + n*sn + c].
struct View {
  float* p;
  int64_t sb, sh, sn;
  float* slice(int b, int hh) const { return p + b * sb + hh * sh; }
};

// attn_fwd: out = softmax(scale q k^T + bias, masked by geom) v; lse (B, heads, N) contiguous.
// bias: nullptr or (bias_rows, heads) contiguous.
struct AttnFwdArgs {
  View q, k, v, out;
  float* lse;
  const float* bias;
  int bias_rows;
  int B, heads, N, d;
  Geom geom;
  float scale;
  int threads;
};
void attn_fwd_f32(const AttnFwdArgs& a);

// attn_bwd: writes every element of dq, dk, dv; adds into dbias (nullptr: no bias gradient).
struct AttnBwdArgs {
  View q, k, v, out, dout, dq, dk, dv;
  const float* lse;
  const float* bias;
  float* dbias;
  int bias_rows;
  int B, heads, N, d;
  Geom geom;
  float scale;
  int threads;
};
void attn_bwd_f32(const AttnBwdArgs& a);

// Sparse-logit primitives (sparse_attn.cpp; contract in transgan_fast/ops/_sparse.py). `p` is the
// contiguous (B, heads, N, K) slot tensor: the output of qk, the weights of av / avt.
//   sparse_qk_f32:  p[b,h,i,s]  = x_i . y_key(i,s)           (0 at empty slots)
//   sparse_av_f32:  out[b,h,i]  = sum_s p[i,s] x_key(i,s)
//   sparse_avt_f32: out[b,h,m]  = sum_{key(i,s)=m} p[i,s] x_i
struct SparseArgs {
  View x, y, out;  // unused views have p == nullptr
  float* p;
  int B, heads, N, d;
  Geom geom;
  int threads;
};
void sparse_qk_f32(const SparseArgs& a);
void sparse_av_f32(const SparseArgs& a);
void sparse_avt_f32(const SparseArgs& a);

// Resampling on (B, N, C) token maps (contiguous); H, W as the op's `_library` convention.
void bicubic_upsample_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads);
void bicubic_upsample_seq_adjoint_f32(const float* g, float* out, int64_t B, int64_t H, int64_t W,
                                      int64_t C, int threads);
void avg_pool_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W, int64_t C,
                      int threads);
void avg_pool_seq_adjoint_f32(const float* g, float* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads);
void pixel_norm_f32(const float* x, float* out, int64_t T, int64_t C, int threads);
void pixel_norm_backward_f32(const float* x, const float* g, float* out, int64_t T, int64_t C,
                             int threads);

}  // namespace tgf
