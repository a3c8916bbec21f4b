// Declarations of the CPU kernels (raw pointers, shapes, element strides; no validation here:
// transgan_fast/ops/_cpu.py checks every argument before a launch).
#pragma once
#include <cstdint>

namespace tgf {

void pixel_shuffle_seq_f32(const float* x, const float* pos, float* out, int64_t B, int64_t H,
                           int64_t W, int64_t C, int64_t sxb, int64_t sxn, int64_t spb, int threads);
void pixel_unshuffle_seq_f32(const float* x, float* out, int64_t B, int64_t H, int64_t W, int64_t C,
                             int64_t sxb, int64_t sxn, int threads);

}  // namespace tgf
