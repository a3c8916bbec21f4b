// pybind11 module `_C_cuda`: launchers over raw device pointers and the caller's stream.
// The CUDA runtime is linked statically, so this imports on machines without a driver; every
// launch first checks for a device and raises "no CUDA device" if there is none.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>
#include "cuda/launch.h"

namespace py = pybind11;

#ifndef TGF_CUDA_ARCHS
#define TGF_CUDA_ARCHS "unknown"
#endif

static int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

static void require_device(const char* op) {
  if (device_count() <= 0)
    throw std::runtime_error(std::string(op) + ": no CUDA device (module built for " TGF_CUDA_ARCHS ")");
}

static void check(int err, const char* op) {
  if (err != 0)
    throw std::runtime_error(std::string(op) + ": CUDA launch failed: " +
                             cudaGetErrorString(static_cast<cudaError_t>(err)));
}

static const void* C(uintptr_t p) { return reinterpret_cast<const void*>(p); }
static void* M(uintptr_t p) { return reinterpret_cast<void*>(p); }

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "transgan_fast CUDA kernels; no libtorch dependency";
  m.def("device_count", &device_count, "CUDA devices visible (0 without driver or device)");
  m.def("archs", []() { return std::string(TGF_CUDA_ARCHS); }, "architectures compiled in");

  m.def("pixel_shuffle_seq",
        [](int dtype, uintptr_t x, uintptr_t pos, uintptr_t out, int64_t B, int64_t H, int64_t W,
           int64_t C_, int64_t sxb, int64_t sxn, int64_t spb, uintptr_t stream) {
          require_device("pixel_shuffle_seq");
          check(tgf::cuda::pixel_shuffle_seq(dtype, C(x), C(pos), M(out), B, H, W, C_, sxb, sxn, spb,
                                             stream), "pixel_shuffle_seq");
        });
  m.def("pixel_unshuffle_seq",
        [](int dtype, uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C_,
           int64_t sxb, int64_t sxn, uintptr_t stream) {
          require_device("pixel_unshuffle_seq");
          check(tgf::cuda::pixel_unshuffle_seq(dtype, C(x), M(out), B, H, W, C_, sxb, sxn, stream),
                "pixel_unshuffle_seq");
        });
}
