// Declarations of the CPU kernels (raw pointers, shapes, element strides; no validation here:
// transgan_fast/ops/_cpu.py checks every argument before a launch).
//
// Every kernel is a template on the storage type T of its tensors (float, bf16 or f16 of
// cpu/lowp.h), instantiated for the three in its source file; it computes in float32 whatever T
// is. Softmax statistics (lse), the bias table and its gradient are float32 for every T.
#pragma once
#include <cstdint>
#include "common/geometry.h"
#include "cpu/lowp.h"
#include "cpu/platform.h"

namespace tgf {

template <typename T>
void pixel_shuffle_seq(const T* x, const T* pos, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                       int64_t sxb, int64_t sxn, int64_t spb, int threads);
template <typename T>
void pixel_unshuffle_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                         int64_t sxb, int64_t sxn, int threads);

// A (B, heads, N, d) view: element (b, h, n, c) at p[b*sb + h*sh + n*sn + c].
template <typename T>
struct View {
  T* p;
  int64_t sb, sh, sn;
  T* slice(int b, int hh) const { return p + b * sb + hh * sh; }
};

// attn_fwd: out = softmax(scale q k^T + bias, masked by geom) v; lse (B, heads, N) contiguous.
// bias: nullptr or (bias_rows, heads) contiguous.
template <typename T>
struct AttnFwdArgs {
  View<T> q, k, v, out;
  float* lse;
  const float* bias;
  int bias_rows;
  int B, heads, N, d;
  Geom geom;
  float scale;
  int threads;
};
template <typename T>
void attn_fwd(const AttnFwdArgs<T>& a);

// attn_bwd: writes every element of dq, dk, dv; adds into dbias (nullptr: no bias gradient).
template <typename T>
struct AttnBwdArgs {
  View<T> q, k, v, out, dout, dq, dk, dv;
  const float* lse;
  const float* bias;
  float* dbias;
  int bias_rows;
  int B, heads, N, d;
  Geom geom;
  float scale;
  int threads;
};
template <typename T>
void attn_bwd(const AttnBwdArgs<T>& a);

// Sparse-logit primitives (sparse_attn.cpp; contract in transgan_fast/ops/_sparse.py). `p` is the
// contiguous (B, heads, N, K) slot tensor: the output of qk, the weights of av / avt.
//   sparse_qk:  p[b,h,i,s]  = x_i . y_key(i,s)           (0 at empty slots)
//   sparse_av:  out[b,h,i]  = sum_s p[i,s] x_key(i,s)
//   sparse_avt: out[b,h,m]  = sum_{key(i,s)=m} p[i,s] x_i
template <typename T>
struct SparseArgs {
  View<T> x, y, out;  // unused views have p == nullptr
  T* p;
  int B, heads, N, d;
  Geom geom;
  int threads;
};
template <typename T> void sparse_qk(const SparseArgs<T>& a);
template <typename T> void sparse_av(const SparseArgs<T>& a);
template <typename T> void sparse_avt(const SparseArgs<T>& a);

// Resampling on (B, N, C) token maps (contiguous); H, W as the op's `_library` convention.
template <typename T>
void bicubic_upsample_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C, int threads);
template <typename T>
void bicubic_upsample_seq_adjoint(const T* g, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                                  int threads);
template <typename T>
void avg_pool_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C, int threads);
template <typename T>
void avg_pool_seq_adjoint(const T* g, T* out, int64_t B, int64_t H, int64_t W, int64_t C, int threads);
template <typename T>
void pixel_norm(const T* x, T* out, int64_t rows, int64_t C, int threads);
template <typename T>
void pixel_norm_backward(const T* x, const T* g, T* out, int64_t rows, int64_t C, int threads);

}  // namespace tgf
