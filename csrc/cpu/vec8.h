// Vectors of 8 floats as compiler vector types (GCC/clang `vector_size`): one register with
// AVX2, half of one with AVX-512, two with SSE2 or NEON, chosen by whichever ISA copy of a kernel
// includes them (attention_tile.h, TGF_ISA_DISPATCH). Written with `omp simd`, loops of 8 lanes
// were unrolled before the auto-vectorizer saw them and the softmax's exp stayed scalar, so the
// hot loops use these types.
#pragma once
#include <cstdint>
#include <type_traits>
#include "cpu/lowp.h"

namespace tgf {
namespace cpu_attn {

#define TGF_VEC_INLINE static inline __attribute__((always_inline))

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int v8i_u __attribute__((vector_size(32), aligned(4), may_alias));

TGF_VEC_INLINE v8f load8(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
TGF_VEC_INLINE v8i load8i(const int* p) { return *reinterpret_cast<const v8i_u*>(p); }
TGF_VEC_INLINE void store8(float* p, v8f v) { *reinterpret_cast<v8f_u*>(p) = v; }
TGF_VEC_INLINE v8f splat8(float x) { return v8f{} + x; }

// 8 consecutive values of storage type T as float32 lanes. bfloat16 widens and shifts in vector
// registers (a 16-bit shift is the whole conversion); float16 goes through lowp.h's row loader
// (F16C where the CPU has it).
template <typename T>
TGF_VEC_INLINE v8f load8_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return load8(p);
  } else if constexpr (std::is_same_v<T, bf16>) {
    typedef uint16_t u16x8 __attribute__((vector_size(16), aligned(2), may_alias));
    typedef uint32_t u32x8 __attribute__((vector_size(32)));
    const u32x8 w = __builtin_convertvector(*reinterpret_cast<const u16x8*>(p), u32x8) << 16;
    return (v8f)w;
  } else {
    float t[8];
    load_row(p, t, 8);
    return load8(t);
  }
}

// mask ? a : b lane by lane (mask lanes all ones or zero, as comparisons give).
TGF_VEC_INLINE v8f select8(v8i mask, v8f a, v8f b) {
#if defined(__clang__)
  return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask));
#else
  return mask ? a : b;
#endif
}

#if defined(__clang__)
#define TGF_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define TGF_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shuffle(a, b, v8i{i0, i1, i2, i3, i4, i5, i6, i7})
#endif

TGF_VEC_INLINE float hsum8(v8f v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// Largest lane; a NaN lane may or may not win (callers get a NaN row from the exp either way).
TGF_VEC_INLINE float hmax8(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = m > v[i] ? m : v[i];
  return m;
}

// exp(x) for x <= 0 (softmax arguments) lane by lane; exact 0 below -87, NaN stays NaN.
// Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n from the exponent
// bits; n rounded to nearest by adding and subtracting 1.5 * 2^23 (exact for |x| < 2^22).
TGF_VEC_INLINE v8f exp_neg8(v8f x) {
  const v8f lo = splat8(-87.0f), round = splat8(12582912.0f);
  const v8f xc = select8(x < lo, lo, x);
  const v8f n = (xc * 1.44269504088896341f + round) - round;
  v8f r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v8f p = splat8(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  const v8f e = select8(x < lo, v8f{}, p * (v8f)bits);
  return select8(x != x, x, e);
}

// Transposes the 8 x 8 block r[token][channel] in place into r[channel][token] (unpack,
// shuffle, then joining 128-bit halves: the compiler lowers each shuffle to one instruction).
TGF_VEC_INLINE void transpose8(v8f* r) {
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = TGF_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = TGF_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + j] = TGF_SHUFFLE8(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + j + 2] = TGF_SHUFFLE8(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  // u[k] holds channel order[k] of tokens 0-3, then channel order[k] + 4 of tokens 0-3 (u[k + 4]:
  // the same for tokens 4-7); joining 128-bit halves gives whole channels.
  const int order[4] = {0, 2, 1, 3};
  for (int k = 0; k < 4; ++k) {
    r[order[k]] = TGF_SHUFFLE8(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[order[k] + 4] = TGF_SHUFFLE8(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

}  // namespace cpu_attn
}  // namespace tgf
