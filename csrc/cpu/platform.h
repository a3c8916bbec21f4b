// What the CPU kernels may assume about the compiler and the target, in one place.
//
// TGF_X86_MULTIVERSION: GCC on x86-64 ELF targets compiles the hot kernels once per ISA level
// (x86-64-v4 with 512-bit vectors, v3 = AVX2+FMA, baseline) and picks one at run time
// (`target`/`target_clones` attributes, `__builtin_cpu_supports`, ifunc). Everywhere else —
// aarch64, macOS, clang — the same code is compiled once for the build's target: portable, and
// still vectorized by the compiler for that target (e.g. NEON on aarch64).
//
// OpenMP is optional (CMakeLists.txt): without it the `omp parallel` pragmas are ignored, the
// kernels run serially, and the few runtime calls below answer as a single thread would.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__) && \
    __GNUC__ >= 12
#define TGF_X86_MULTIVERSION 1
#else
#define TGF_X86_MULTIVERSION 0
#endif

#if defined(_OPENMP)
#include <omp.h>
#define TGF_OPENMP 1
#else
#define TGF_OPENMP 0
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_max_threads() { return 1; }
#endif

namespace tgf {

// For `transgan-fast info`: the vector ISA the kernels run with on this CPU.
inline const char* simd_level() {
#if TGF_X86_MULTIVERSION
  return __builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4 (chosen at run time)"
         : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (chosen at run time)"
                                               : "x86-64 baseline (chosen at run time)";
#elif defined(__aarch64__)
  return "aarch64 (portable build)";
#elif defined(__x86_64__)
  return "x86-64 (portable build)";
#else
  return "portable build";
#endif
}

}  // namespace tgf
