// Index maps of the sequence resampling ops (shared by host and device code).
//
// Token maps are row-major sequences: token t of an H x W map is (t / W, t % W).
// pixel_shuffle_seq: output channel c at sub-pixel (i, j) of low-res token (h, w) takes input
// channel 4c + 2i + j and lands at high-res token (2h + i) * 2W + (2w + j)  (nn.PixelShuffle(2)).
#pragma once
#include <cstdint>
#include "common/macros.h"

namespace tgf {

// High-res output token of low-res token (h, w), sub-pixel (i, j); W is the low-res width.
TGF_HD int64_t shuffle_out_token(int64_t h, int64_t w, int i, int j, int64_t W) {
  return (2 * h + i) * (2 * W) + (2 * w + j);
}

// Input channel that feeds output channel c at sub-pixel (i, j).
TGF_HD int64_t shuffle_in_channel(int64_t c, int i, int j) { return 4 * c + 2 * i + j; }

}  // namespace tgf
