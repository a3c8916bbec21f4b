// pybind11 module `_C_cuda`: launchers over raw device pointers and the caller's stream.
// The CUDA runtime is linked statically, so this imports on machines without a driver; every
// launch first checks for a device and raises "no CUDA device" if there is none.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
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

// Builds an AttnCall from Python lists: geom (9 ints), dims [B, h, N, d], views as
// [ptr, stride_b, stride_h, stride_n] per tensor (q, k, v, out[, dout, dq, dk, dv]).
static tgf::cuda::AttnCall attn_call(int dtype, const std::vector<int>& geom,
                                     const std::vector<int64_t>& dims, double scale,
                                     const std::vector<int64_t>& views, const char* op) {
  if (geom.size() != 9) throw std::invalid_argument(std::string(op) + ": geom must have 9 ints");
  if (dims.size() != 4) throw std::invalid_argument(std::string(op) + ": dims must be [B, h, N, d]");
  if (views.size() % 4 != 0 || views.size() / 4 > tgf::cuda::NSLOT)
    throw std::invalid_argument(std::string(op) + ": views must be [ptr, sb, sh, sn] per tensor");
  tgf::cuda::AttnCall c;
  c.dtype = dtype;
  for (int i = 0; i < 9; ++i) c.geom[i] = geom[i];
  c.B = dims[0]; c.h = dims[1]; c.N = dims[2]; c.d = dims[3];
  c.scale = static_cast<float>(scale);
  for (size_t i = 0; i < views.size() / 4; ++i) {
    c.ptr[i] = static_cast<uintptr_t>(views[4 * i]);
    c.sb[i] = views[4 * i + 1]; c.sh[i] = views[4 * i + 2]; c.sn[i] = views[4 * i + 3];
  }
  return c;
}

static void check_attn(int err, const char* msg, const char* op) {
  if (msg) throw std::invalid_argument(std::string(op) + ": " + msg);
  check(err, op);
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

  m.def("attn_fwd",
        [](int dtype, std::vector<int> geom, std::vector<int64_t> dims, double scale,
           std::vector<int64_t> views, uintptr_t bias, uintptr_t lse, uintptr_t stream) {
          require_device("attn_fwd");
          auto c = attn_call(dtype, geom, dims, scale, views, "attn_fwd");
          c.bias = bias; c.lse = lse; c.stream = stream;
          const char* msg = nullptr;
          const int err = tgf::cuda::attn_fwd(c, &msg);
          check_attn(err, msg, "attn_fwd");
        },
        "fused attention forward; views: q, k, v, out as [ptr, sb, sh, sn]");
  m.def("attn_bwd",
        [](int dtype, std::vector<int> geom, std::vector<int64_t> dims, double scale,
           std::vector<int64_t> views, uintptr_t bias, uintptr_t dbias, uintptr_t lse,
           uintptr_t delta, uintptr_t stream, uintptr_t dslot, int64_t chunk) {
          require_device("attn_bwd");
          auto c = attn_call(dtype, geom, dims, scale, views, "attn_bwd");
          c.bias = bias; c.dbias = dbias; c.lse = lse; c.delta = delta; c.stream = stream;
          c.dslot = dslot; c.chunk = chunk;
          const char* msg = nullptr;
          const int err = tgf::cuda::attn_bwd(c, &msg);
          check_attn(err, msg, "attn_bwd");
        },
        "fused attention backward; views: q, k, v, out, dout, dq, dk, dv; delta: float32 (B,h,N) "
        "scratch; with a bias, dslot: float32 (chunk, h, N, K) scratch of per-slot dS");
  m.def("sparse_attn",
        [](int op, int dtype, std::vector<int> geom, std::vector<int64_t> dims, uintptr_t x,
           std::vector<int64_t> xs, uintptr_t y, std::vector<int64_t> ys, uintptr_t out,
           uintptr_t stream) {
          static const char* names[] = {"sparse_qk", "sparse_av", "sparse_avt"};
          const char* name = op >= 0 && op < 3 ? names[op] : "sparse_attn";
          require_device(name);
          if (geom.size() != 9) throw std::invalid_argument(std::string(name) + ": geom must have 9 ints");
          if (dims.size() != 5) throw std::invalid_argument(std::string(name) + ": dims must be [B, h, N, d, K]");
          if (xs.size() != 3 || ys.size() != 3)
            throw std::invalid_argument(std::string(name) + ": strides must be [sb, sh, sn]");
          tgf::cuda::SparseCall c;
          c.op = op; c.dtype = dtype;
          for (int i = 0; i < 9; ++i) c.geom[i] = geom[i];
          c.B = dims[0]; c.h = dims[1]; c.N = dims[2]; c.d = dims[3]; c.K = dims[4];
          c.x = x; c.y = y; c.out = out; c.stream = stream;
          for (int i = 0; i < 3; ++i) { c.xs[i] = xs[i]; c.ys[i] = ys[i]; }
          const char* msg = nullptr;
          const int err = tgf::cuda::sparse_attn(c, &msg);
          check_attn(err, msg, name);
        },
        "sparse-logit primitive: op 0 qk, 1 av, 2 avt; dims [B, h, N, d, K]; x, y strided, out contiguous");
  m.def("bicubic_upsample_seq",
        [](int dtype, uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C_,
           bool adjoint, uintptr_t stream) {
          require_device("bicubic_upsample_seq");
          check(tgf::cuda::bicubic_upsample_seq(dtype, C(x), M(out), B, H, W, C_, adjoint, stream),
                "bicubic_upsample_seq");
        },
        "bicubic x2 upsampling of a (B, H*W, C) map (adjoint: (B, 4HW, C) -> (B, HW, C))");
  m.def("avg_pool_seq",
        [](int dtype, uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C_,
           bool adjoint, uintptr_t stream) {
          require_device("avg_pool_seq");
          check(tgf::cuda::avg_pool_seq(dtype, C(x), M(out), B, H, W, C_, adjoint, stream),
                "avg_pool_seq");
        },
        "2x2 average pooling of a (B, H*W, C) map, H, W the high-res map (adjoint: the transpose)");
  m.def("pixel_norm",
        [](int dtype, uintptr_t x, uintptr_t g, uintptr_t out, int64_t T, int64_t C_, uintptr_t stream) {
          require_device("pixel_norm");
          check(tgf::cuda::pixel_norm(dtype, C(x), C(g), M(out), T, C_, stream), "pixel_norm");
        },
        "pixel norm over the last dim of T rows of C (g != 0: backward with upstream gradient g)");
}
