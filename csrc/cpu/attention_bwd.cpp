// Fused masked attention backward on the CPU (float32).
//
// Per tile the probabilities are recomputed from the saved log-sum-exp, then
//   dP = dO V^T,  D_i = rowsum(dO * O),  dS = P (dP - D),
//   dq = scale dS K,  dk += scale dS^T Q,  dv += P^T dO,  dbias[row(i, j)] += dS_ij.
// dq rows belong to one tile and are written directly. dk/dv/dbias receive contributions from
// many tiles, so each thread accumulates into its own buffers and the buffers are summed in a
// fixed order: the result is deterministic for a given thread count. With at least as many
// (batch, head) slices as threads, each thread owns whole slices (no reduction of dk/dv);
// otherwise the tiles of one slice are split across threads and their buffers are reduced.
#include <omp.h>
#include <algorithm>
#include "cpu/attention_tile.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

struct BwdScratch {
  TileIndex ti;
  std::vector<float> KT, VT, K, Q, dO, S, dP, D;
  std::vector<const float*> qrows, dorows;
  std::vector<float*> dqrows, dkrows, dvrows;
  BwdScratch(int TQ, int maxk, int d, int dp) {
    ti.reserve(TQ, maxk);
    const int nkp = round_up(maxk, JB);
    KT.resize(static_cast<size_t>(d) * nkp);
    VT.resize(static_cast<size_t>(d) * nkp);
    K.resize(static_cast<size_t>(maxk) * dp);
    Q.resize(static_cast<size_t>(TQ) * dp);
    dO.resize(static_cast<size_t>(TQ) * dp);
    S.resize(static_cast<size_t>(TQ) * nkp);
    dP.resize(static_cast<size_t>(TQ) * nkp);
    D.resize(TQ);
    qrows.resize(TQ);
    dorows.resize(TQ);
    dqrows.resize(TQ);
    dkrows.resize(maxk);
    dvrows.resize(maxk);
  }
};

// One (tile, batch, head). dk/dv accumulate into dk_acc/dv_acc rows (N x dp, this slice);
// dbias into db (rows, this head), in double.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void bwd_tile(const AttnBwdArgs& a, const float* biash, int b, int hh, int dp, BwdScratch& s,
              float* dk_acc, float* dv_acc, double* db) {
  const TileIndex& ti = s.ti;
  const int nq = ti.nq, nk = ti.nk, nkp = ti.nkp, d = a.d;
  const float* q = a.q.slice(b, hh);
  const float* k = a.k.slice(b, hh);
  const float* v = a.v.slice(b, hh);
  const float* o = a.out.slice(b, hh);
  const float* dout = a.dout.slice(b, hh);
  float* dq = a.dq.slice(b, hh);
  const float* lse = a.lse + (static_cast<int64_t>(b) * a.heads + hh) * a.N;

  pack_cols(k, a.k.sn, ti.k.data(), nk, d, nkp, s.KT.data());
  pack_cols(v, a.v.sn, ti.k.data(), nk, d, nkp, s.VT.data());
  pack_rows(k, a.k.sn, ti.k.data(), nk, d, dp, s.K.data());
  pack_rows(q, a.q.sn, ti.q.data(), nq, d, dp, s.Q.data());
  pack_rows(dout, a.dout.sn, ti.q.data(), nq, d, dp, s.dO.data());
  for (int i = 0; i < nq; ++i) {
    s.qrows[i] = q + ti.q[i] * a.q.sn;
    s.dorows[i] = dout + ti.q[i] * a.dout.sn;
    s.dqrows[i] = dq + ti.q[i] * a.dq.sn;
    const float* orow = o + ti.q[i] * a.out.sn;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int c = 0; c < d; ++c) acc += s.dorows[i][c] * orow[c];
    s.D[i] = acc;
  }
  for (int j = 0; j < nk; ++j) {
    s.dkrows[j] = dk_acc + static_cast<size_t>(ti.k[j]) * dp;
    s.dvrows[j] = dv_acc + static_cast<size_t>(ti.k[j]) * dp;
  }
  logits_block(s.qrows.data(), nq, d, s.KT.data(), nkp, a.scale, s.S.data());
  logits_block(s.dorows.data(), nq, d, s.VT.data(), nkp, 1.f, s.dP.data());

  for (int i = 0; i < nq; ++i) {
    float* srow = s.S.data() + static_cast<size_t>(i) * nkp;
    float* dprow = s.dP.data() + static_cast<size_t>(i) * nkp;
    const int* br = ti.brow.data() + static_cast<size_t>(i) * nkp;
    const float m = lse[ti.q[i]], Di = s.D[i];
#pragma omp simd
    for (int j = 0; j < nkp; ++j) {
      const float x = srow[j] + (biash ? biash[br[j] < 0 ? 0 : br[j]] : 0.f);
      const float p = br[j] >= 0 ? exp_neg(x - m) : 0.f;
      srow[j] = p;                                         // S now holds P
      dprow[j] = br[j] >= 0 ? p * (dprow[j] - Di) : 0.f;   // dP now holds dS
    }
    if (db)
      for (int j = 0; j < nk; ++j)
        if (br[j] >= 0) db[br[j]] += dprow[j];
  }
  for (int i = 0; i < nq; ++i) s.D[i] = a.scale;  // row scale of dq
  rows_times_packed(s.dP.data(), nq, nkp, nk, s.K.data(), dp, d, s.D.data(), s.dqrows.data());
  cols_times_packed(s.dP.data(), nq, nkp, nk, s.Q.data(), dp, a.scale, s.dkrows.data());
  cols_times_packed(s.S.data(), nq, nkp, nk, s.dO.data(), dp, 1.f, s.dvrows.data());
}

// Writes the slice's accumulated rows (N x dp) into a strided (N, d) output.
void store_rows(const float* acc, int N, int d, int dp, float* out, int64_t sn) {
  for (int n = 0; n < N; ++n)
    std::copy(acc + static_cast<size_t>(n) * dp, acc + static_cast<size_t>(n) * dp + d, out + n * sn);
}

}  // namespace

void attn_bwd_f32(const AttnBwdArgs& a) {
  const Geom& g = a.geom;
  const int TQ = tile_size(g), maxk = tile_max_keys(g, TQ), ntiles = tile_count(g, TQ);
  const int dp = round_up(a.d, DB), N = a.N, heads = a.heads;
  const int slices = a.B * heads;
  const int threads = std::max(1, std::min(a.threads, std::max(slices, ntiles)));
  const std::vector<float> biash = bias_by_head(a.bias, a.bias_rows, heads);
  const size_t rows_nd = static_cast<size_t>(N) * dp;
  const size_t nbias = a.dbias ? static_cast<size_t>(a.bias_rows) * heads : 0;
  // Per-thread accumulators: dk, dv (one slice each) and dbias (all heads, double).
  std::vector<float> dk_acc(threads * rows_nd), dv_acc(threads * rows_nd);
  std::vector<double> db_acc(threads * nbias, 0.0);
  auto bias_of = [&](int hh) {
    return a.bias ? biash.data() + static_cast<size_t>(hh) * a.bias_rows : nullptr;
  };
  auto db_of = [&](int tid, int hh) {
    return a.dbias ? db_acc.data() + tid * nbias + static_cast<size_t>(hh) * a.bias_rows : nullptr;
  };

  if (slices >= threads) {
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num();
      BwdScratch s(TQ, maxk, a.d, dp);
      float* dk = dk_acc.data() + tid * rows_nd;
      float* dv = dv_acc.data() + tid * rows_nd;
#pragma omp for schedule(static)
      for (int sl = 0; sl < slices; ++sl) {
        const int b = sl / heads, hh = sl % heads;
        std::fill(dk, dk + rows_nd, 0.f);
        std::fill(dv, dv + rows_nd, 0.f);
        for (int t = 0; t < ntiles; ++t)
          if (s.ti.build(g, TQ, t)) bwd_tile(a, bias_of(hh), b, hh, dp, s, dk, dv, db_of(tid, hh));
        store_rows(dk, N, a.d, dp, a.dk.slice(b, hh), a.dk.sn);
        store_rows(dv, N, a.d, dp, a.dv.slice(b, hh), a.dv.sn);
      }
    }
  } else {
    for (int sl = 0; sl < slices; ++sl) {
      const int b = sl / heads, hh = sl % heads;
#pragma omp parallel num_threads(threads)
      {
        const int tid = omp_get_thread_num();
        BwdScratch s(TQ, maxk, a.d, dp);
        float* dk = dk_acc.data() + tid * rows_nd;
        float* dv = dv_acc.data() + tid * rows_nd;
        std::fill(dk, dk + rows_nd, 0.f);
        std::fill(dv, dv + rows_nd, 0.f);
#pragma omp for schedule(static)
        for (int t = 0; t < ntiles; ++t)
          if (s.ti.build(g, TQ, t)) bwd_tile(a, bias_of(hh), b, hh, dp, s, dk, dv, db_of(tid, hh));
        // implicit barrier: every thread's buffers are complete; reduce in thread order.
#pragma omp for schedule(static)
        for (int n = 0; n < N; ++n) {
          float* dkr = a.dk.slice(b, hh) + n * a.dk.sn;
          float* dvr = a.dv.slice(b, hh) + n * a.dv.sn;
          for (int c = 0; c < a.d; ++c) {
            float sk = 0.f, sv = 0.f;
            for (int t2 = 0; t2 < threads; ++t2) {
              sk += dk_acc[t2 * rows_nd + static_cast<size_t>(n) * dp + c];
              sv += dv_acc[t2 * rows_nd + static_cast<size_t>(n) * dp + c];
            }
            dkr[c] = sk;
            dvr[c] = sv;
          }
        }
      }
    }
  }
  if (a.dbias) {
    for (int r = 0; r < a.bias_rows; ++r)
      for (int hh = 0; hh < heads; ++hh) {
        double acc = 0.0;
        for (int t2 = 0; t2 < threads; ++t2) acc += db_acc[t2 * nbias + static_cast<size_t>(hh) * a.bias_rows + r];
        a.dbias[r * heads + hh] += static_cast<float>(acc);
      }
  }
}

}  // namespace tgf
