// Linear resampling of (B, N, C) token maps on the CPU, and pixel norm.
//
// Bicubic 2x upsampling and 2x2 average pooling are separable: each output row/column is a short
// weighted sum of input rows/columns. Both ops and their adjoints run through one routine over
// per-axis tap lists (destination index -> (source index, weight)); an adjoint is the same routine
// over the transposed lists, so forward and backward share every line of arithmetic. Taps
// follow F.interpolate(scale_factor=2, mode='bicubic', align_corners=False): source coordinate
// (o + 0.5) / 2 - 0.5, cubic convolution with A = -0.75, indices clamped at the border.
// OpenMP over (batch, output row); the channel loop is contiguous and vectorizes.
#include <algorithm>
#include <cmath>
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
#if TGF_X86_MULTIVERSION
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
void separable_apply(const float* x, float* out, int64_t B, int Hi, int Wi, int Ho, int Wo,
                     int64_t C, const Taps& ty, const Taps& tx, int threads) {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int oy = 0; oy < Ho; ++oy) {
      const float* xb = x + b * Hi * Wi * C;
      for (int ox = 0; ox < Wo; ++ox) {
        float* o = out + ((b * Ho + oy) * Wo + ox) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
        for (int a = ty.start[oy]; a < ty.start[oy + 1]; ++a) {
          const float* xr = xb + static_cast<int64_t>(ty.src[a]) * Wi * C;
          for (int e = tx.start[ox]; e < tx.start[ox + 1]; ++e) {
            const float w = ty.w[a] * tx.w[e];
            const float* s = xr + static_cast<int64_t>(tx.src[e]) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] += w * s[c];
          }
        }
      }
    }
  }
}

}  // namespace

void bicubic_upsample_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(x, out, B, h, w, 2 * h, 2 * w, C, taps_from_matrix(bicubic_axis(h), 2 * h, h),
                  taps_from_matrix(bicubic_axis(w), 2 * w, w), threads);
}

void bicubic_upsample_seq_adjoint_f32(const float* g, float* out, int64_t B, int64_t H, int64_t W,
                                      int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(g, out, B, 2 * h, 2 * w, h, w, C,
                  taps_from_matrix(transpose(bicubic_axis(h), 2 * h, h), h, 2 * h),
                  taps_from_matrix(transpose(bicubic_axis(w), 2 * w, w), w, 2 * w), threads);
}

void avg_pool_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W, int64_t C,
                      int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(x, out, B, h, w, h / 2, w / 2, C, taps_from_matrix(pool_axis(h), h / 2, h),
                  taps_from_matrix(pool_axis(w), w / 2, w), threads);
}

void avg_pool_seq_adjoint_f32(const float* g, float* out, int64_t B, int64_t H, int64_t W,
                              int64_t C, int threads) {
  const int h = static_cast<int>(H), w = static_cast<int>(W);
  separable_apply(g, out, B, h / 2, w / 2, h, w, C,
                  taps_from_matrix(transpose(pool_axis(h), h / 2, h), h, h / 2),
                  taps_from_matrix(transpose(pool_axis(w), w / 2, w), w, w / 2), threads);
}

// y = x / sqrt(mean(x^2) + 1e-8) per row of C; backward dx = r g - r^3 x <g, x> / C.
void pixel_norm_f32(const float* x, float* out, int64_t T, int64_t C, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / C + 1e-8));
    float* o = out + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = xr[c] * r;
  }
}

void pixel_norm_backward_f32(const float* x, const float* g, float* out, int64_t T, int64_t C,
                             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    const float* gr = g + t * C;
    double ss = 0.0, gx = 0.0;
#pragma omp simd reduction(+ : ss, gx)
    for (int64_t c = 0; c < C; ++c) {
      ss += static_cast<double>(xr[c]) * xr[c];
      gx += static_cast<double>(gr[c]) * xr[c];
    }
    const double r = 1.0 / std::sqrt(ss / C + 1e-8);
    const float a = static_cast<float>(r), bcoef = static_cast<float>(r * r * r * gx / C);
    float* o = out + t * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = a * gr[c] - bcoef * xr[c];
  }
}

}  // namespace tgf
