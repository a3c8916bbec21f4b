// Fused masked attention backward on the CPU: float32, bfloat16 or float16 tensors (the
// template's T), computed in float32 with float32 accumulators (cpu/lowp.h).
//
// Per tile the probabilities are recomputed from the saved log-sum-exp, then
//   dP = dO V^T,  D_i = rowsum(dO * O),  dS = P (dP - D),
//   dq = scale dS K,  dk += scale dS^T Q,  dv += P^T dO,  dbias[row(i, j)] += dS_ij.
// dq rows belong to one tile and are written directly. dk/dv/dbias receive contributions from
// many tiles, so each thread accumulates into its own buffers and the buffers are summed in a
// fixed order: the result is deterministic for a given thread count. With at least as many
// (batch, head) slices as threads, each thread owns whole slices (no reduction of dk/dv);
// otherwise the tiles of one slice are split across threads and their buffers are reduced.
#include <algorithm>
#include "cpu/attention_tile.h"
#include "cpu/vec8.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

struct BwdScratch {
  TileIndex ti;
  std::vector<float> KT, VT, K, Q, dO, S, dP, D, dS_sum;
  std::vector<float> dQ;  // float32 dq rows when T is not float
  BiasTiles bias;
  const float* bt = nullptr;  // this (tile, head)'s bias/mask term, when there is a bias
  std::vector<const float*> qrows, dorows, krows;
  std::vector<float*> dqrows, dkrows, dvrows;
  BwdScratch(int TQ, int maxk, int d, int dp, int heads) {
    bias.reserve(heads, TQ, maxk);
    ti.reserve(TQ, maxk);
    const int nkp = round_up(maxk, JB);
    KT.resize(static_cast<size_t>(d) * nkp);
    VT.resize(static_cast<size_t>(d) * nkp);
    K.resize(static_cast<size_t>(maxk) * dp);
    Q.resize(static_cast<size_t>(TQ) * dp);
    dO.resize(static_cast<size_t>(TQ) * dp);
    dQ.resize(static_cast<size_t>(TQ) * dp);
    S.resize(static_cast<size_t>(TQ) * nkp);
    dP.resize(static_cast<size_t>(TQ) * nkp);
    dS_sum.resize(static_cast<size_t>(TQ) * nkp);
    D.resize(TQ);
    qrows.resize(TQ);
    dorows.resize(TQ);
    krows.resize(maxk);
    dqrows.resize(TQ);
    dkrows.resize(maxk);
    dvrows.resize(maxk);
  }
};

// Everything one slice's tiles read: the slice's transposed K and V and its accumulators.
// The tile's bias/mask term (BwdScratch::bias) is built per (tile, head) by the caller, and
// dS is summed over the batch into BwdScratch::dS_sum, scattered into dbias by flush_dbias.
struct SliceCtx {
  int b, hh;
  const float* KT;  // d x N
  const float* VT;  // d x N
  float* dk_acc;    // N x dp
  float* dv_acc;    // N x dp
  bool want_db;
};

// dbias rows of one head += the batch-summed dS of the tile; clears the sum.
void flush_dbias(BwdScratch& s, double* db) {
  const TileIndex& ti = s.ti;
  for (int i = 0; i < ti.nq; ++i) {
    const int* br = ti.brow.data() + static_cast<size_t>(i) * ti.nkp;
    float* ds = s.dS_sum.data() + static_cast<size_t>(i) * ti.nkp;
    for (int j = 0; j < ti.nk; ++j)
      if (br[j] >= 0) db[br[j]] += ds[j];
    std::fill(ds, ds + ti.nkp, 0.f);
  }
}

// One (tile, slice).
template <typename T, int VW>
TGF_KERNEL_INLINE void bwd_tile_body(const AttnBwdArgs<T>& a, const SliceCtx& c, int dp, BwdScratch& s) {
  const TileIndex& ti = s.ti;
  const int nq = ti.nq, nk = ti.nk, nkp = ti.nkp, d = a.d;
  const T* q = a.q.slice(c.b, c.hh);
  const T* k = a.k.slice(c.b, c.hh);
  const T* o = a.out.slice(c.b, c.hh);
  const T* dout = a.dout.slice(c.b, c.hh);
  T* dq = a.dq.slice(c.b, c.hh);
  const float* lse = a.lse + (static_cast<int64_t>(c.b) * a.heads + c.hh) * a.N;

  pack_cols_t(c.KT, a.N, ti, d, s.KT.data());
  pack_cols_t(c.VT, a.N, ti, d, s.VT.data());
  row_ptrs(k, a.k.sn, ti.k.data(), nk, d, dp, s.K.data(), s.krows.data());
  row_ptrs(q, a.q.sn, ti.q.data(), nq, d, dp, s.Q.data(), s.qrows.data());
  row_ptrs(dout, a.dout.sn, ti.q.data(), nq, d, dp, s.dO.data(), s.dorows.data());
  for (int i = 0; i < nq; ++i) {
    if constexpr (std::is_same_v<T, float>) s.dqrows[i] = dq + ti.q[i] * a.dq.sn;
    else s.dqrows[i] = s.dQ.data() + static_cast<size_t>(i) * dp;
    const T* orow = o + ti.q[i] * a.out.sn;
    const float* dorow = s.dorows[i];
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int cc = 0; cc < d; ++cc) acc += dorow[cc] * to_f32(orow[cc]);
    s.D[i] = acc;
  }
  for (int j = 0; j < nk; ++j) {
    s.dkrows[j] = c.dk_acc + static_cast<size_t>(ti.k[j]) * dp;
    s.dvrows[j] = c.dv_acc + static_cast<size_t>(ti.k[j]) * dp;
  }
  logits_block<VW>(s.qrows.data(), nq, d, s.KT.data(), nkp, a.scale, s.S.data());
  logits_block<VW>(s.dorows.data(), nq, d, s.VT.data(), nkp, 1.f, s.dP.data());

  for (int i = 0; i < nq; ++i) {
    float* srow = s.S.data() + static_cast<size_t>(i) * nkp;
    float* dprow = s.dP.data() + static_cast<size_t>(i) * nkp;
    const float* bt = a.bias ? s.bt + static_cast<size_t>(i) * nkp : nullptr;
    const int* br = ti.brow.data() + static_cast<size_t>(i) * nkp;
    const float m = lse[ti.q[i]], Di = s.D[i];
    for (int j = 0; j < nkp; j += 8) {  // nkp % 8 == 0
      const v8i vis = load8i(br + j) >= 0;
      const v8f x = bt ? load8(srow + j) + load8(bt + j) : load8(srow + j);
      const v8f p = select8(vis, exp_neg8(x - m), v8f{});
      store8(srow + j, p);                                               // S now holds P
      store8(dprow + j, select8(vis, p * (load8(dprow + j) - Di), v8f{}));  // dP now holds dS
    }
    if (c.want_db) {
      float* ds = s.dS_sum.data() + static_cast<size_t>(i) * nkp;
#pragma omp simd
      for (int j = 0; j < nkp; ++j) ds[j] += dprow[j];
    }
  }
  for (int i = 0; i < nq; ++i) s.D[i] = a.scale;  // row scale of dq
  rows_times_packed<VW>(s.dP.data(), nq, nkp, nk, s.krows.data(), dp, d, s.D.data(), s.dqrows.data());
  if constexpr (!std::is_same_v<T, float>) store_rows_as(s.dqrows.data(), nq, d, dq, a.dq.sn, ti.q.data());
  cols_times_packed<VW>(s.dP.data(), nq, nkp, nk, s.qrows.data(), dp, a.scale, s.dkrows.data());
  cols_times_packed<VW>(s.S.data(), nq, nkp, nk, s.dorows.data(), dp, 1.f, s.dvrows.data());
}

TGF_ISA_DISPATCH_TV(bwd_tile, bwd_tile_body,
                   (const AttnBwdArgs<T>& a, const SliceCtx& c, int dp, BwdScratch& s), (a, c, dp, s))

// Writes accumulated rows (N x dp) into a strided (N, d) output, rounded to T.
template <typename T>
void store_rows(const float* acc, int N, int d, int dp, T* out, int64_t sn) {
  for (int n = 0; n < N; ++n) store_row(acc + static_cast<size_t>(n) * dp, out + n * sn, d);
}

TGF_ISA_DISPATCH(fill_brow, fill_brow_body, (const Geom& g, TileIndex& ti), (g, ti))

// Builds tile t into ti; false if it has no queries.
bool build_tile(const Geom& g, int TQ, int t, TileIndex& ti) {
  return build_tile_cached(g, TQ, t, ti, fill_brow);
}

}  // namespace

template <typename T>
void attn_bwd(const AttnBwdArgs<T>& a) {
  const Geom& g = a.geom;
  const int TQ = tile_size_window(g), maxk = tile_max_candidates(g, TQ), ntiles = tile_count(g, TQ);
  const int dp = round_up(a.d, DB), N = a.N, heads = a.heads, d = a.d;
  const int slices = a.B * heads;
  const int threads = std::max(1, std::min(a.threads, std::max(slices, ntiles)));
  const std::vector<float> biash = bias_by_head(a.bias, a.bias_rows, heads);
  const size_t sl_nd = static_cast<size_t>(N) * d, rows_nd = static_cast<size_t>(N) * dp;
  // K and V transposed once per slice, so tiles gather candidate columns with contiguous copies.
  const auto KT = uninit_floats(slices * sl_nd), VT = uninit_floats(slices * sl_nd);
  transpose_slices(a.k, a.B, heads, N, d, KT.get(), threads);
  transpose_slices(a.v, a.B, heads, N, d, VT.get(), threads);
  // dbias accumulators per slice (double), summed over slices in a fixed order at the end, so
  // dbias does not depend on which thread ran which slice.
  const size_t nrows = a.dbias ? static_cast<size_t>(a.bias_rows) : 0;
  std::vector<double> db_acc(slices * nrows, 0.0);
  // Slices are numbered head-major (sl = hh * B + b) so consecutive slices share the bias term.
  auto ctx = [&](int sl, float* dk, float* dv) {
    const int hh = sl / a.B, b = sl % a.B;
    const size_t off = (static_cast<size_t>(b) * heads + hh) * sl_nd;
    return SliceCtx{b, hh, KT.get() + off, VT.get() + off, dk, dv, a.dbias != nullptr};
  };

  if (slices >= threads) {
    // Each slice is owned by one thread (dk/dv written once, no reduction). Slices are handed
    // out in small blocks on demand (a busy core does not stall the others); inside a block the
    // walk is tiles outer, slices inner, so a tile's index table is built once per block.
    const int per = std::max(1, slices / (4 * threads));
    const int nblocks = (slices + per - 1) / per;
    const auto dk_acc = uninit_floats(slices * rows_nd), dv_acc = uninit_floats(slices * rows_nd);
#pragma omp parallel num_threads(threads)
    {
      BwdScratch s(TQ, maxk, d, dp, heads);
#pragma omp for schedule(dynamic, 1)
      for (int blk = 0; blk < nblocks; ++blk) {
        const int s0 = blk * per, s1 = std::min(slices, s0 + per);
        std::fill(dk_acc.get() + s0 * rows_nd, dk_acc.get() + s1 * rows_nd, 0.f);
        std::fill(dv_acc.get() + s0 * rows_nd, dv_acc.get() + s1 * rows_nd, 0.f);
        for (int u = 0; u < ntiles; ++u) {
          if (!build_tile(g, TQ, tile_visit(g, TQ, u), s.ti)) continue;
          int group = -1;  // first slice of the current run of one head
          for (int sl = s0; sl < s1; ++sl) {
            const int hh = sl / a.B;
            if (group < 0 || hh != group / a.B) {
              if (group >= 0 && a.dbias) flush_dbias(s, db_acc.data() + group * nrows);
              if (a.bias) s.bt = s.bias.get(s.ti, biash.data(), a.bias_rows, hh);
              group = sl;
            }
            bwd_tile(a, ctx(sl, dk_acc.get() + sl * rows_nd, dv_acc.get() + sl * rows_nd), dp, s);
          }
          if (a.dbias) flush_dbias(s, db_acc.data() + group * nrows);
        }
        for (int sl = s0; sl < s1; ++sl) {
          const int hh = sl / a.B, b = sl % a.B;
          store_rows(dk_acc.get() + sl * rows_nd, N, d, dp, a.dk.slice(b, hh), a.dk.sn);
          store_rows(dv_acc.get() + sl * rows_nd, N, d, dp, a.dv.slice(b, hh), a.dv.sn);
        }
      }
    }
  } else {
    // Fewer slices than threads: split each slice's tiles, reduce per-thread accumulators.
    std::vector<float> dk_acc(threads * rows_nd), dv_acc(threads * rows_nd);
    std::vector<double> db_thr(threads * nrows);
    for (int sl = 0; sl < slices; ++sl) {
      std::fill(db_thr.begin(), db_thr.end(), 0.0);
      const int hh = sl / a.B, b = sl % a.B;
#pragma omp parallel num_threads(threads)
      {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        BwdScratch s(TQ, maxk, d, dp, heads);
        float* dk = dk_acc.data() + tid * rows_nd;
        float* dv = dv_acc.data() + tid * rows_nd;
        std::fill(dk, dk + rows_nd, 0.f);
        std::fill(dv, dv + rows_nd, 0.f);
        const SliceCtx c = ctx(sl, dk, dv);
        std::fill(s.dS_sum.begin(), s.dS_sum.end(), 0.f);
        // dbias: one accumulator per thread for this slice (reduced below in thread order).
#pragma omp for schedule(static)
        for (int u = 0; u < ntiles; ++u) {
          if (!build_tile(g, TQ, tile_visit(g, TQ, u), s.ti)) continue;
          if (a.bias) s.bt = s.bias.get(s.ti, biash.data(), a.bias_rows, hh);
          bwd_tile(a, c, dp, s);
          if (a.dbias) flush_dbias(s, db_thr.data() + tid * nrows);
        }
        // implicit barrier: every thread's buffers are complete; reduce in thread order.
#pragma omp for schedule(static)
        for (int n = 0; n < N; ++n) {
          T* dkr = a.dk.slice(b, hh) + n * a.dk.sn;
          T* dvr = a.dv.slice(b, hh) + n * a.dv.sn;
          for (int cc = 0; cc < d; ++cc) {
            float sk = 0.f, sv = 0.f;
            for (int t2 = 0; t2 < nth; ++t2) {
              sk += dk_acc[t2 * rows_nd + static_cast<size_t>(n) * dp + cc];
              sv += dv_acc[t2 * rows_nd + static_cast<size_t>(n) * dp + cc];
            }
            dkr[cc] = from_f32<T>(sk);
            dvr[cc] = from_f32<T>(sv);
          }
        }
      }
      for (int t2 = 0; t2 < threads; ++t2)
        for (size_t r = 0; r < nrows; ++r) db_acc[sl * nrows + r] += db_thr[t2 * nrows + r];
    }
  }
  if (a.dbias) {
    for (int r = 0; r < a.bias_rows; ++r)
      for (int hh = 0; hh < heads; ++hh) {
        double acc = 0.0;
        for (int b = 0; b < a.B; ++b) acc += db_acc[(static_cast<size_t>(hh) * a.B + b) * nrows + r];
        a.dbias[r * heads + hh] += static_cast<float>(acc);
      }
  }
}

template void attn_bwd<float>(const AttnBwdArgs<float>&);
template void attn_bwd<bf16>(const AttnBwdArgs<bf16>&);
template void attn_bwd<f16>(const AttnBwdArgs<f16>&);

}  // namespace tgf
