// pixel_shuffle_seq / pixel_unshuffle_seq on the CPU: one pass over tokens, OpenMP across them.
//
// Forward writes each output token's C/4 channels contiguously (the output is the big side);
// the inner loop gathers input channels 4c + 2i + j with a fixed stride of 4, which the compiler
// vectorizes, and fuses the position-embedding add (in float32, rounded once, for bfloat16 and
// float16 maps: cpu/lowp.h).
#include <cstdint>
#include "common/shuffle.h"
#include "cpu/kernels.h"

namespace tgf {

template <typename T>
void pixel_shuffle_seq(const T* x, const T* pos, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                       int64_t sxb, int64_t sxn, int64_t spb, int threads) {
  const int64_t C4 = C / 4, N = H * W;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < N; ++t) {
      const int64_t h = t / W, w = t % W;
      const T* xin = x + b * sxb + t * sxn;
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          const int64_t o = shuffle_out_token(h, w, i, j, W);
          T* dst = out + (b * 4 * N + o) * C4;
          const T* src = xin + shuffle_in_channel(0, i, j);
          if (pos) {
            const T* p = pos + b * spb + o * C4;
            for (int64_t c = 0; c < C4; ++c) dst[c] = from_f32<T>(to_f32(src[4 * c]) + to_f32(p[c]));
          } else {
            for (int64_t c = 0; c < C4; ++c) dst[c] = src[4 * c];
          }
        }
      }
    }
  }
}

template <typename T>
void pixel_unshuffle_seq(const T* x, T* out, int64_t B, int64_t H, int64_t W, int64_t C,
                         int64_t sxb, int64_t sxn, int threads) {
  // x: high-res (2H x 2W) map with C/4 channels; out: low-res (H x W) map with C channels.
  const int64_t C4 = C / 4, N = H * W;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < N; ++t) {
      const int64_t h = t / W, w = t % W;
      T* dst = out + (b * N + t) * C;
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          const T* src = x + b * sxb + shuffle_out_token(h, w, i, j, W) * sxn;
          T* d = dst + shuffle_in_channel(0, i, j);
          for (int64_t c = 0; c < C4; ++c) d[4 * c] = src[c];
        }
      }
    }
  }
}

#define TGF_INSTANTIATE(T)                                                                       \
  template void pixel_shuffle_seq<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t,  \
                                     int64_t, int64_t, int64_t, int);                             \
  template void pixel_unshuffle_seq<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                       int64_t, int);
TGF_INSTANTIATE(float)
TGF_INSTANTIATE(bf16)
TGF_INSTANTIATE(f16)
#undef TGF_INSTANTIATE

}  // namespace tgf
