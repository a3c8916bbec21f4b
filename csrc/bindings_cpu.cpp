// pybind11 module `_C_cpu`: thin launchers over raw pointers. Pointers arrive as integers
// (tensor.data_ptr()); the Python side validates devices, dtypes, shapes and strides.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cstdint>
#include <string>
#include "common/geometry.h"
#include "common/neighbours.h"
#include "common/tiles.h"
#include "cpu/kernels.h"

namespace py = pybind11;

template <typename T>
static T* P(uintptr_t p) { return reinterpret_cast<T*>(p); }

// A view as [data_ptr, stride(0), stride(1), stride(2)] (element strides of (B, h, N, d)).
template <typename T>
static tgf::View<T> V(const std::vector<int64_t>& t) {
  return tgf::View<T>{reinterpret_cast<T*>(static_cast<uintptr_t>(t[0])), t[1], t[2], t[3]};
}

static tgf::Geom G(const std::vector<int>& g) {
  return tgf::geom_from_list(g.data());
}

// The kernels of one storage type T, named `<kernel><suffix>` (suffix _f32, _bf16, _f16).
template <typename T>
static void def_kernels(py::module_& m, const std::string& sfx) {
  auto name = [&sfx](const char* base) { return std::string(base) + sfx; };
  m.def(name("pixel_shuffle_seq").c_str(),
        [](uintptr_t x, uintptr_t pos, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C,
           int64_t sxb, int64_t sxn, int64_t spb, int threads) {
          py::gil_scoped_release nogil;
          tgf::pixel_shuffle_seq<T>(P<const T>(x), P<const T>(pos), P<T>(out), B, H, W, C, sxb, sxn,
                                    spb, threads);
        });
  m.def(name("pixel_unshuffle_seq").c_str(),
        [](uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t sxb,
           int64_t sxn, int threads) {
          py::gil_scoped_release nogil;
          tgf::pixel_unshuffle_seq<T>(P<const T>(x), P<T>(out), B, H, W, C, sxb, sxn, threads);
        });

  m.def(name("attn_fwd").c_str(),
        [](std::vector<int64_t> q, std::vector<int64_t> k, std::vector<int64_t> v,
           std::vector<int64_t> out, uintptr_t lse, uintptr_t bias, int bias_rows, int B, int heads,
           int N, int d, std::vector<int> geom, float scale, int threads) {
          tgf::AttnFwdArgs<T> a{V<T>(q), V<T>(k), V<T>(v), V<T>(out), P<float>(lse),
                                P<const float>(bias), bias_rows, B, heads, N, d, G(geom), scale,
                                threads};
          py::gil_scoped_release nogil;
          tgf::attn_fwd<T>(a);
        });
  m.def(name("attn_bwd").c_str(),
        [](std::vector<int64_t> q, std::vector<int64_t> k, std::vector<int64_t> v,
           std::vector<int64_t> out, std::vector<int64_t> dout, std::vector<int64_t> dq,
           std::vector<int64_t> dk, std::vector<int64_t> dv, uintptr_t lse, uintptr_t bias,
           uintptr_t dbias, int bias_rows, int B, int heads, int N, int d, std::vector<int> geom,
           float scale, int threads) {
          tgf::AttnBwdArgs<T> a{V<T>(q), V<T>(k), V<T>(v), V<T>(out), V<T>(dout), V<T>(dq),
                                V<T>(dk), V<T>(dv), P<const float>(lse), P<const float>(bias),
                                P<float>(dbias), bias_rows, B, heads, N, d, G(geom), scale, threads};
          py::gil_scoped_release nogil;
          tgf::attn_bwd<T>(a);
        });

  // Sparse-logit primitives: x, y, out as views (empty list: unused), p the (B, h, N, K) slots.
  auto sparse_op = [&m, &name](const char* base, void (*fn)(const tgf::SparseArgs<T>&)) {
    m.def(name(base).c_str(), [fn](std::vector<int64_t> x, std::vector<int64_t> y,
                                   std::vector<int64_t> out, uintptr_t p, int B, int heads, int N,
                                   int d, std::vector<int> geom, int threads) {
      const tgf::View<T> none{nullptr, 0, 0, 0};
      tgf::SparseArgs<T> a{x.empty() ? none : V<T>(x), y.empty() ? none : V<T>(y),
                           out.empty() ? none : V<T>(out), P<T>(p), B, heads, N, d, G(geom), threads};
      py::gil_scoped_release nogil;
      fn(a);
    });
  };
  sparse_op("sparse_qk", tgf::sparse_qk<T>);
  sparse_op("sparse_av", tgf::sparse_av<T>);
  sparse_op("sparse_avt", tgf::sparse_avt<T>);

  // Resampling on contiguous (B, N, C) maps; H, W follow the `_library` convention of each op.
  using MapFn = void (*)(const T*, T*, int64_t, int64_t, int64_t, int64_t, int);
  auto map_op = [&m, &name](const char* base, MapFn fn) {
    m.def(name(base).c_str(), [fn](uintptr_t x, uintptr_t out, int64_t B, int64_t H, int64_t W,
                                   int64_t C, int threads) {
      py::gil_scoped_release nogil;
      fn(P<const T>(x), P<T>(out), B, H, W, C, threads);
    });
  };
  map_op("bicubic_upsample_seq", tgf::bicubic_upsample_seq<T>);
  map_op("bicubic_upsample_seq_adjoint", tgf::bicubic_upsample_seq_adjoint<T>);
  map_op("avg_pool_seq", tgf::avg_pool_seq<T>);
  map_op("avg_pool_seq_adjoint", tgf::avg_pool_seq_adjoint<T>);
  m.def(name("pixel_norm").c_str(), [](uintptr_t x, uintptr_t out, int64_t rows, int64_t C, int threads) {
    py::gil_scoped_release nogil;
    tgf::pixel_norm<T>(P<const T>(x), P<T>(out), rows, C, threads);
  });
  m.def(name("pixel_norm_backward").c_str(),
        [](uintptr_t x, uintptr_t g, uintptr_t out, int64_t rows, int64_t C, int threads) {
          py::gil_scoped_release nogil;
          tgf::pixel_norm_backward<T>(P<const T>(x), P<const T>(g), P<T>(out), rows, C, threads);
        });
}

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "transgan_fast CPU kernels (OpenMP when built with it); no libtorch dependency";

  // How this module was built and what it runs with here (`transgan-fast info`).
  m.def("build_info", [] {
    py::dict d;
    d["openmp"] = static_cast<bool>(TGF_OPENMP);
    d["max_threads"] = omp_get_max_threads();
    d["simd"] = tgf::simd_level();
    return d;
  });

  m.def("f16_portable_mismatches", &tgf::f16_portable_mismatches);
  def_kernels<float>(m, "_f32");
  def_kernels<tgf::bf16>(m, "_bf16");
  def_kernels<tgf::f16>(m, "_f16");
  // The slot table of common/neighbours.h (row-major N x K), for tests against neighbours.py.
  m.def("neighbour_keys", [](std::vector<int> g) {
    const tgf::Geom G_ = G(g);
    const int N = G_.H * G_.W, K = tgf::num_slots(G_);
    std::vector<int> t(static_cast<size_t>(N) * K);
    for (int i = 0; i < N; ++i)
      for (int s = 0; s < K; ++s) t[static_cast<size_t>(i) * K + s] = tgf::slot_key(G_, i, s);
    return t;
  });

  // Index math exposed for tests (the same header the CUDA kernels compile): for every
  // (query, key) pair, the bias row if the key is visible, else -1; row-major N x N.
  m.def("geom_table", [](std::vector<int> g) {
    const tgf::Geom G_ = G(g);
    const int N = G_.H * G_.W;
    std::vector<int> t(static_cast<size_t>(N) * N);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        t[static_cast<size_t>(i) * N + j] = tgf::visible(G_, i, j) ? tgf::bias_row(G_, i, j) : -1;
    return t;
  });

  // The tilings of common/tiles.h, exposed for CPU tests. Rect tiling (CUDA): rectangles are
  // (y0, x0, rows, cols) on the plane (1 x N for band1d, else H x W).
  auto tup = [](const tgf::Rect& r) { return py::make_tuple(r.y0, r.x0, r.rows, r.cols); };
  m.def("candidate_keys", [tup](std::vector<int> g, int y0, int x0, int rows, int cols) {
    return tup(tgf::candidate_keys(G(g), tgf::Rect{y0, x0, rows, cols}));
  });
  m.def("candidate_queries", [tup](std::vector<int> g, int y0, int x0, int rows, int cols) {
    return tup(tgf::candidate_queries(G(g), tgf::Rect{y0, x0, rows, cols}));
  });
  m.def("rect_tiles", [tup](std::vector<int> g, int t) {
    py::list out;
    for (int i = 0; i < tgf::rect_tile_count(G(g), t); ++i) out.append(tup(tgf::rect_tile(G(g), t, i)));
    return out;
  });
  // List tiling (CPU kernels): [(queries, candidate keys, pair table)] of every tile for tile
  // size TQ, in tile order (empty tiles of partial GRID windows give empty lists); the pair table
  // (row-major queries x candidates) holds meta_bias_row where meta_visible, else -1.
  m.def("list_tiles", [](std::vector<int> g, int TQ) {
    const tgf::Geom G_ = G(g);
    const int maxk = tgf::tile_max_candidates(G_, TQ);
    std::vector<int> q(TQ), k(maxk);
    py::list out;
    for (int t = 0; t < tgf::tile_count(G_, TQ); ++t) {
      const int nq = tgf::tile_queries(G_, TQ, t, q.data());
      const int nk = nq ? tgf::tile_candidates(G_, TQ, t, q.data(), nq, k.data()) : 0;
      std::vector<int> pairs(static_cast<size_t>(nq) * nk);
      for (int i = 0; i < nq; ++i) {
        const tgf::QueryMeta qm = tgf::query_meta(G_, q[i]);
        for (int j = 0; j < nk; ++j) {
          const tgf::KeyMeta km = tgf::key_meta(G_, k[j]);
          pairs[static_cast<size_t>(i) * nk + j] =
              tgf::meta_visible(qm, km.cls, km.ay, km.ax) ? tgf::meta_bias_row(G_, qm.by, qm.bx, km.by, km.bx) : -1;
        }
      }
      out.append(py::make_tuple(std::vector<int>(q.begin(), q.begin() + nq),
                                std::vector<int>(k.begin(), k.begin() + nk), pairs));
    }
    return out;
  });
}
