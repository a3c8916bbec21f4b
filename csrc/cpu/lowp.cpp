// The check behind lowp.h's portable float16 conversions (run by the tests through _C_cpu).
#include <initializer_list>
#include "cpu/lowp.h"

namespace tgf {

long f16_portable_mismatches() {
#if TGF_X86_MULTIVERSION
  long bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {  // every float16 value, NaNs bit for bit
    if (f32_bits(f16_to_f32_portable(static_cast<uint16_t>(h))) != f32_bits(to_f32(f16{static_cast<uint16_t>(h)})))
      ++bad;
  }
  // float32 -> float16 over a sweep of every exponent (ties, subnormals, overflow, NaN, Inf)
  for (uint32_t e = 0; e < 256; ++e)
    for (uint32_t m = 0; m < (1u << 23); m += 4093) {
      for (uint32_t s : {0u, 0x80000000u}) {
        const float f = bits_f32(s | (e << 23) | m);
        for (float g : {f, bits_f32(f32_bits(f) | 0x1000u), bits_f32((f32_bits(f) & ~0x1fffu) | 0x1000u)})
          if (f32_to_f16_portable(g) != from_f32<f16>(g).bits) ++bad;
      }
    }
  return bad;
#else
  return 0;
#endif
}

}  // namespace tgf
