// Linear resampling of (B, N, C) token maps on the CPU, and pixel norm.
//
// Bicubic 2x upsampling and 2x2 average pooling are separable: each output row/column is a short
// weighted sum of input rows/columns. Both ops and their adjoints run through one routine over
// per-axis tap lists (destination index -> (source index, weight)); an adjoint is the same routine
// over the transposed lists, so forward and backward share every line of arithmetic. Taps
// follow F.interpolate(scale_factor=2, mode='bicubic', align_corners=False): source coordinate
// (o + 0.5) / 2 - 0.5, cubic convolution with A = -0.75, indices clamped at the border.
// OpenMP over (batch, output row); the channel loop is contiguous and vectorizes. float32,
// bfloat16 and float16 maps; sums are float32 and each output is rounded once (cpu/lowp.h).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>
#include "cpu/kernels.h"

namespace tgf {
namespace {

struct Taps {
  std::vector<int> start;  // size n_dst + 1
  std::vector<int> src;
  std::vector<float> w;
};

// Dense (n_dst x n_src) per-axis matrix -> tap lists, merging repeated (clamped) sources.
Taps taps_from_matrix(const std::vector<double>& m, int n_dst, int n_src) {
  Taps t;
  t.start.push_back(0);
  for (int o = 0; o < n_dst; ++o) {
    for (int i = 0; i < n_src; ++i) {
      const double w = m[static_cast<size_t>(o) * n_src + i];
      if (w != 0.0) {
        t.src.push_back(i);
        t.w.push_back(static_cast<float>(w));
      }
    }
    t.start.push_back(static_cast<int>(t.src.size()));
  }
  return t;
}

double cubic_weight(double x) {  // Keys' cubic convolution kernel, A = -0.75
  const double A = -0.75;
  x = std::fabs(x);
  if (x <= 1.0) return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
  return 0.0;
}

// Per-axis bicubic matrix, (2n x n).
std::vector<double> bicubic_axis(int n) {
  std::vector<double> m(static_cast<size_t>(2 * n) * n, 0.0);
  for (int o = 0; o < 2 * n; ++o) {
    const double src = (o + 0.5) * 0.5 - 0.5;
    const int i0 = static_cast<int>(std::floor(src));
    const double t = src - i0;
    for (int a = -1; a <= 2; ++a) {
      const int i = std::min(std::max(i0 + a, 0), n - 1);
      m[static_cast<size_t>(o) * n + i] += cubic_weight(t - a);
    }
  }
  return m;
}

// Per-axis 2-to-1 average matrix, (n/2 x n).
std::vector<double> pool_axis(int n) {
  std::vector<double> m(static_cast<size_t>(n / 2) * n, 0.0);
  for (int o = 0; o < n / 2; ++o) m[static_cast<size_t>(o) * n + 2 * o] = m[static_cast<size_t>(o) * n + 2 * o + 1] = 0.5;
  return m;
}

std::vector<double> transpose(const std::vector<double>& m, int rows, int cols) {
  std::vector<double> t(m.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) t[static_cast<size_t>(c) * rows + r] = m[static_cast<size_t>(r) * cols + c];
  return t;
}

// out[b, oy*Wo + ox, :] = sum_{(iy,wy) in ty[oy]} sum_{(ix,wx) in tx[ox]} wy wx x[b, iy*Wi + ix, :]
// acc: C floats of scratch (unused when T is float: the sums go straight to out).
template <typename T>
static inline __attribute__((always_inline)) void separable_row(
    const T* x, T* out, int64_t b, int oy, int Hi, int Wi, int Ho, int Wo, int64_t C,
    const Taps& ty, const Taps& tx, float* acc) {
  const T* xb = x + b * Hi * Wi * C;
  for (int ox = 0; ox < Wo; ++ox) {
    T* orow = out + ((b * Ho + oy) * Wo + ox) * C;
    float* o = acc;
    if constexpr (std::is_same_v<T, float>) o = orow;
    for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
    for (int a = ty.start[oy]; a < ty.start[oy + 1]; ++a) {
      const T* xr = xb + static_cast<int64_t>(ty.src[a]) * Wi * C;
      for (int e = tx.start[ox]; e < tx.start[ox + 1]; ++e) {
        const float w = ty.w[a] * tx.w[e];
        const T* s = xr + static_cast<int64_t>(tx.src[e]) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += w * to_f32(s[c]);
      }
    }
    if constexpr (!std::is_same_v<T, float>) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) orow[c] = from_f32<T>(o[c]);
    }
  }
}

// One copy of the row loop per storage type and ISA level (chosen at run time on x86-64/GCC).
#if TGF_X86_MULTIVERSION
#define TGF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TGF_CLONES
#endif
#define TGF_SEPARABLE_ROW(T, name)                                                            \
  TGF_CLONES void name(const T* x, T* out, int64_t b, int oy, int Hi, int Wi, int Ho, int Wo, \
                       int64_t C, const Taps& ty, const Taps& tx, float* acc) {               \
    separable_row<T>(x, out, b, oy, Hi, Wi, Ho, Wo, C, ty, tx, acc);                         \
  }
TGF_SEPARABLE_ROW(float, separable_row_f32)
TGF_SEPARABLE_ROW(bf16, separable_row_bf16)
TGF_SEPARABLE_ROW(f16, separable_row_f16)

template <typename T>
void separable_apply(const T* x, T* out, int64_t B, int Hi, int Wi, int Ho, int Wo, int64_t C,
                     const Taps& ty, const Taps& tx, int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> acc(std::is_same_v<T, float> ? 0 : C);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int oy = 0; oy < Ho; ++oy) {
        if constexpr (std::is_same_v<T, float>)
          separable_row_f32(x, out, b, oy, Hi, Wi, Ho, Wo, C, ty, tx, acc.data());
        else if constexpr (std::is_same_v<T, bf16>)
          separable_row_bf16(x, out, b, oy, Hi, Wi, Ho, Wo, C, ty, tx, acc.data());
        else
          separable_row_f16(x, out, b, oy, Hi, Wi, Ho, Wo, C, ty, tx, acc.data());
      }
    }
  }
}

}  // namespace

template <typename T>
void bicubic_upsample_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(x, out, B, h, w, 2 * h, 2 * w, C, taps_from_matrix(bicubic_axis(h), 2 * h, h),
                  taps_from_matrix(bicubic_axis(w), 2 * w, w), threads);
}

template <typename T>
void bicubic_upsample_seq_adjoint(const T* g, T* out, int64_t B, int64_t H, int64_t W,
                                      int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(g, out, B, 2 * h, 2 * w, h, w, C,
                  taps_from_matrix(transpose(bicubic_axis(h), 2 * h, h), h, 2 * h),
                  taps_from_matrix(transpose(bicubic_axis(w), 2 * w, w), w, 2 * w), threads);
}

template <typename T>
void avg_pool_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                      int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(x, out, B, h, w, h / 2, w / 2, C, taps_from_matrix(pool_axis(h), h / 2, h),
                  taps_from_matrix(pool_axis(w), w / 2, w), threads);
}

template <typename T>
void avg_pool_seq_adjoint(const T* g, T* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(g, out, B, h / 2, w / 2, h, w, C,
                  taps_from_matrix(transpose(pool_axis(h), h / 2, h), h, h / 2),
                  taps_from_matrix(transpose(pool_axis(w), w / 2, w), w, w / 2), threads);
}

// y = x / sqrt(mean(x^2) + 1e-8) per row of C; backward dx = r g - r^3 x <g, x> / C.
template <typename T>
void pixel_norm(const T* x, T* out, int64_t rows, int64_t C, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const T* xr = x + t * C;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) {
      const double xc = to_f32(xr[c]);
      ss += xc * xc;
    }
    const float r = static_cast<float>(1.0 / std::sqrt(ss / C + 1e-8));
    T* o = out + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = from_f32<T>(to_f32(xr[c]) * r);
  }
}

template <typename T>
void pixel_norm_backward(const T* x, const T* g, T* out, int64_t rows, int64_t C, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const T* xr = x + t * C;
    const T* gr = g + t * C;
    double ss = 0.0, gx = 0.0;
#pragma omp simd reduction(+ : ss, gx)
    for (int64_t c = 0; c < C; ++c) {
      const double xc = to_f32(xr[c]);
      ss += xc * xc;
      gx += static_cast<double>(to_f32(gr[c])) * xc;
    }
    const double r = 1.0 / std::sqrt(ss / C + 1e-8);
    const float a = static_cast<float>(r), bcoef = static_cast<float>(r * r * r * gx / C);
    T* o = out + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = from_f32<T>(a * to_f32(gr[c]) - bcoef * to_f32(xr[c]));
  }
}

#define TGF_INSTANTIATE(T)                                                                         \
  template void bicubic_upsample_seq<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int);     \
  template void bicubic_upsample_seq_adjoint<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t,   \
                                                int);                                              \
  template void avg_pool_seq<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int);             \
  template void avg_pool_seq_adjoint<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int);     \
  template void pixel_norm<T>(const T*, T*, int64_t, int64_t, int);                                 \
  template void pixel_norm_backward<T>(const T*, const T*, T*, int64_t, int64_t, int);
TGF_INSTANTIATE(float)
TGF_INSTANTIATE(bf16)
TGF_INSTANTIATE(f16)
#undef TGF_INSTANTIATE

}  // namespace tgf
