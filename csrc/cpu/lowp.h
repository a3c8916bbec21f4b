// Storage types of the CPU kernels: float32, bfloat16 and float16 (docs/ops.md §4, §5).
//
// The kernels are templates on the storage type T of their tensors. Whatever T is, they compute in
// float32: reduced-precision values are converted to float32 where a tile is gathered (or a row is
// read) and rounded once where a result is stored; softmax statistics (max, log-sum-exp), the bias
// table and its gradient stay float32. `bf16` and `f16` wrap the 16 bits torch stores, so the
// kernels see distinct types for the two formats.
//
// bfloat16 -> float32 is a 16-bit shift; float32 -> bfloat16 rounds to nearest even (NaN stays a
// quiet NaN). float16 uses GCC's _Float16 on x86-64 (the F16C instructions vcvtph2ps/vcvtps2ph in
// the x86-64-v3/v4 copies of the kernels, a libgcc routine in the baseline copy); elsewhere the
// portable bit conversions below, which `f16_portable_mismatches` checks against _Float16 in tests.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#include "cpu/platform.h"
#if TGF_X86_MULTIVERSION
#include <immintrin.h>
#endif

namespace tgf {

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

#define TGF_CVT_INLINE static inline __attribute__((always_inline))
#define TGF_CVT_SPEC inline __attribute__((always_inline))

TGF_CVT_INLINE float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
TGF_CVT_INLINE uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// Portable float16 <-> float32 (round to nearest even; Inf, NaN and subnormals exact).
TGF_CVT_INLINE float f16_to_f32_portable(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  uint32_t o;
  if (em >= 0x7c00u) {
    o = (em << 13) | 0x7f800000u | (em > 0x7c00u ? 0x00400000u : 0u);  // Inf; NaN made quiet
  } else if (em >= 0x0400u) {
    o = (em << 13) + ((127u - 15u) << 23);  // normal
  } else {
    // subnormal or zero: em * 2^-24, exact in float32
    return bits_f32(sign | f32_bits(static_cast<float>(em) * 5.9604644775390625e-8f));
  }
  return bits_f32(sign | o);
}

TGF_CVT_INLINE uint16_t f32_to_f16_portable(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to Inf (or is Inf)
  if (a < 0x38800000u) {
    // below the smallest normal: let float32 addition do the rounding to a multiple of 2^-24
    const float r = bits_f32(a) + 0.5f;  // 0.5 = 2^-1: the sum's ulp is 2^-24
    return static_cast<uint16_t>(sign | (f32_bits(r) - 0x3f000000u));
  }
  const uint32_t odd = (a >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((a + 0xc8000fffu + odd) >> 13));  // rebias, round, shift
}

TGF_CVT_INLINE float to_f32(float x) { return x; }
TGF_CVT_INLINE float to_f32(bf16 x) { return bits_f32(static_cast<uint32_t>(x.bits) << 16); }
TGF_CVT_INLINE float to_f32(f16 x) {
#if TGF_X86_MULTIVERSION
  _Float16 h;
  std::memcpy(&h, &x.bits, 2);
  return static_cast<float>(h);
#else
  return f16_to_f32_portable(x.bits);
#endif
}

template <typename T> TGF_CVT_SPEC T from_f32(float x);
template <> TGF_CVT_SPEC float from_f32<float>(float x) { return x; }
template <> TGF_CVT_SPEC bf16 from_f32<bf16>(float x) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return bf16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
template <> TGF_CVT_SPEC f16 from_f32<f16>(float x) {
#if TGF_X86_MULTIVERSION
  const _Float16 h = static_cast<_Float16>(x);
  f16 r;
  std::memcpy(&r.bits, &h, 2);
  return r;
#else
  return f16{f32_to_f16_portable(x)};
#endif
}

// Whole rows: n values of T <-> float32. float16 rows use F16C's 8-wide conversions where the CPU
// has them (GCC does not vectorize _Float16 conversions), checked once at run time; bfloat16
// rows vectorize as written.
#if TGF_X86_MULTIVERSION
__attribute__((target("avx,f16c"))) inline void f16_row_f16c(const f16* s, float* o, int n) {
  int c = 0;
  for (; c + 8 <= n; c += 8)
    _mm256_storeu_ps(o + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c))));
  for (; c < n; ++c) o[c] = _cvtsh_ss(s[c].bits);
}
__attribute__((target("avx,f16c"))) inline void f16_store_f16c(const float* s, f16* o, int n) {
  int c = 0;
  for (; c + 8 <= n; c += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c),
                     _mm256_cvtps_ph(_mm256_loadu_ps(s + c), _MM_FROUND_TO_NEAREST_INT));
  for (; c < n; ++c) o[c].bits = _cvtss_sh(s[c], _MM_FROUND_TO_NEAREST_INT);
}
inline bool cpu_has_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return yes;
}
#endif

template <typename T>
TGF_CVT_SPEC void load_row(const T* s, float* o, int n) {
#if TGF_X86_MULTIVERSION
  if constexpr (std::is_same_v<T, f16>) {
    if (cpu_has_f16c()) return f16_row_f16c(s, o, n);
  }
#endif
#pragma omp simd
  for (int c = 0; c < n; ++c) o[c] = to_f32(s[c]);
}

template <typename T>
TGF_CVT_SPEC void store_row(const float* s, T* o, int n) {
#if TGF_X86_MULTIVERSION
  if constexpr (std::is_same_v<T, f16>) {
    if (cpu_has_f16c()) return f16_store_f16c(s, o, n);
  }
#endif
#pragma omp simd
  for (int c = 0; c < n; ++c) o[c] = from_f32<T>(s[c]);
}

// For tests: how many of the 65536 float16 values, and of a sweep of float32 values, the portable
// conversions get wrong against the compiler's _Float16 (0 where _Float16 is not used: nothing to
// compare).
long f16_portable_mismatches();

}  // namespace tgf
