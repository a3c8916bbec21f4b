// pixel_shuffle_seq / pixel_unshuffle_seq on the CPU: one pass over tokens, OpenMP across them.
//
// Forward writes each output token's C/4 channels contiguously (the output is the big side);
// the inner loop gathers input channels 4c + 2i + j with a fixed stride of 4, which the compiler
// vectorizes, and fuses the position-embedding add.
#include <cstdint>
#include "common/shuffle.h"
#include "cpu/kernels.h"

namespace tgf {

void pixel_shuffle_seq_f32(const float* x, const float* pos, float* out, int64_t B, int64_t H,
                           int64_t W, int64_t C, int64_t sxb, int64_t sxn, int64_t spb,
                           int threads) {
  const int64_t C4 = C / 4, N = H * W;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < N; ++t) {
      const int64_t h = t / W, w = t % W;
      const float* xin = x + b * sxb + t * sxn;
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          const int64_t o = shuffle_out_token(h, w, i, j, W);
          float* dst = out + (b * 4 * N + o) * C4;
          const float* src = xin + shuffle_in_channel(0, i, j);
          if (pos) {
            const float* p = pos + b * spb + o * C4;
            for (int64_t c = 0; c < C4; ++c) dst[c] = src[4 * c] + p[c];
          } else {
            for (int64_t c = 0; c < C4; ++c) dst[c] = src[4 * c];
          }
        }
      }
    }
  }
}

void pixel_unshuffle_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W,
                             int64_t C, int64_t sxb, int64_t sxn, int threads) {
  // x: high-res (2H x 2W) map with C/4 channels; out: low-res (H x W) map with C channels.
  const int64_t C4 = C / 4, N = H * W;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < N; ++t) {
      const int64_t h = t / W, w = t % W;
      float* dst = out + (b * N + t) * C;
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          const float* src = x + b * sxb + shuffle_out_token(h, w, i, j, W) * sxn;
          float* d = dst + shuffle_in_channel(0, i, j);
          for (int64_t c = 0; c < C4; ++c) d[4 * c] = src[c];
        }
      }
    }
  }
}

}  // namespace tgf
