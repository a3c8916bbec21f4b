// Fused masked attention forward on the CPU: every geometry kind, relative bias gathered
// in-kernel, log-sum-exp saved for the backward. float32, bfloat16 or float16 tensors (the
// template's T); tiles are gathered as float32 and computed in float32 (cpu/lowp.h).
//
// Work is split into query tiles (common/tiles.h; a GRID tile is a whole window of up to 256
// tokens); all candidate keys of a tile are held at once, so each query row gets an exact (not
// online) softmax over its candidates. The loop is tiles-outer, (batch, head)-inner so the tile's
// index math and mask table are built once and reused by every slice. OpenMP over tiles; every
// output row is written by exactly one thread.
#include <algorithm>
#include "cpu/attention_tile.h"
#include "cpu/vec8.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

struct FwdScratch {
  TileIndex ti;
  std::vector<float> KT, V, S, inv;
  std::vector<float> Q, O;  // float32 rows of q and out when T is not float
  BiasTiles bias;
  const float* bt = nullptr;  // this (tile, head)'s bias/mask term, when there is a bias
  std::vector<const float*> qrows, vrows;
  std::vector<float*> orows;
  FwdScratch(int TQ, int maxk, int d, int dp, int heads) {
    bias.reserve(heads, TQ, maxk);
    ti.reserve(TQ, maxk);
    const int nkp = round_up(maxk, JB);
    KT.resize(static_cast<size_t>(d) * nkp);
    V.resize(static_cast<size_t>(maxk) * dp);
    Q.resize(static_cast<size_t>(TQ) * dp);
    O.resize(static_cast<size_t>(TQ) * dp);
    S.resize(static_cast<size_t>(TQ) * nkp);
    inv.resize(TQ);
    qrows.resize(TQ);
    vrows.resize(maxk);
    orows.resize(TQ);
  }
};

// One (tile, batch, head): logits, masked softmax with bias, P V, lse. `v_nonfinite`: this
// (batch, head) slice of v holds a NaN/Inf somewhere (then the tile checks its own keys).
template <typename T, int VW>
TGF_KERNEL_INLINE void fwd_tile_body(const AttnFwdArgs<T>& a, const float* KTs, int b, int hh, int dp,
                                      bool v_nonfinite, FwdScratch& s) {
  const TileIndex& ti = s.ti;
  const int nq = ti.nq, nk = ti.nk, nkp = ti.nkp, d = a.d;
  const T* q = a.q.slice(b, hh);
  const T* v = a.v.slice(b, hh);
  T* o = a.out.slice(b, hh);
  float* lse = a.lse + (static_cast<int64_t>(b) * a.heads + hh) * a.N;

  pack_cols_t(KTs, a.N, ti, d, s.KT.data());
  row_ptrs(v, a.v.sn, ti.k.data(), nk, d, dp, s.V.data(), s.vrows.data());
  if constexpr (std::is_same_v<T, float>) {
    for (int i = 0; i < nq; ++i) {
      s.qrows[i] = q + ti.q[i] * a.q.sn;
      s.orows[i] = o + ti.q[i] * a.out.sn;
    }
  } else {  // float32 copies of the query rows; outputs rounded from float32 rows at the end
    row_ptrs(q, a.q.sn, ti.q.data(), nq, d, dp, s.Q.data(), s.qrows.data());
    for (int i = 0; i < nq; ++i) s.orows[i] = s.O.data() + static_cast<size_t>(i) * dp;
  }
  logits_block<VW>(s.qrows.data(), nq, d, s.KT.data(), nkp, a.scale, s.S.data());

  const float ninf = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < nq; ++i) {
    float* srow = s.S.data() + static_cast<size_t>(i) * nkp;
    const int* br = ti.brow.data() + static_cast<size_t>(i) * nkp;
    // The select keeps a NaN logit of a masked key out of this row (nkp % 8 == 0).
    const float* bt = a.bias ? s.bt + static_cast<size_t>(i) * nkp : nullptr;
    v8f m8 = splat8(ninf);
    for (int j = 0; j < nkp; j += 8) {
      const v8f x = select8(load8i(br + j) >= 0, bt ? load8(srow + j) + load8(bt + j) : load8(srow + j),
                            splat8(ninf));
      store8(srow + j, x);
      m8 = select8(m8 > x, m8, x);
    }
    const float m = hmax8(m8);
    v8f l8 = v8f{};
    for (int j = 0; j < nkp; j += 8) {
      const v8f p = select8(load8i(br + j) >= 0, exp_neg8(load8(srow + j) - m), v8f{});
      store8(srow + j, p);
      l8 += p;
    }
    const float l = hsum8(l8);
    s.inv[i] = 1.f / l;
    lse[ti.q[i]] = m + std::log(l);
  }
  if (v_nonfinite && any_nonfinite(s.vrows.data(), nk, d))  // rare: exact, visible pairs only
    rows_times_visible(s.S.data(), nq, nkp, nk, s.vrows.data(), d, ti.brow.data(), s.inv.data(),
                       s.orows.data());
  else
    rows_times_packed<VW>(s.S.data(), nq, nkp, nk, s.vrows.data(), dp, d, s.inv.data(), s.orows.data());
  if constexpr (!std::is_same_v<T, float>) store_rows_as(s.orows.data(), nq, d, o, a.out.sn, ti.q.data());
}

TGF_ISA_DISPATCH_TV(fwd_tile, fwd_tile_body,
                   (const AttnFwdArgs<T>& a, const float* KTs, int b, int hh, int dp, bool v_nonfinite,
                    FwdScratch& s),
                   (a, KTs, b, hh, dp, v_nonfinite, s))

TGF_ISA_DISPATCH(fill_brow, fill_brow_body, (const Geom& g, TileIndex& ti), (g, ti))

// Builds tile t into ti; false if it has no queries.
bool build_tile(const Geom& g, int TQ, int t, TileIndex& ti) {
  return build_tile_cached(g, TQ, t, ti, fill_brow);
}

}  // namespace

template <typename T>
void attn_fwd(const AttnFwdArgs<T>& a) {
  if (local_fwd_plane(a)) return;
  const Geom& g = a.geom;
  // Threads split tiles: whole-window tiles only when there are windows for every thread.
  const int windows = g.kind == GRID ? grid_window_count(g, Y_AXIS) * grid_window_count(g, X_AXIS) : 0;
  const int TQ = windows >= 2 * a.threads ? tile_size_window(g) : tile_size(g);
  const int maxk = tile_max_candidates(g, TQ), ntiles = tile_count(g, TQ);
  const int dp = round_up(a.d, DB);
  const std::vector<float> biash = bias_by_head(a.bias, a.bias_rows, a.heads);
  // K transposed once per slice (d x N), so tiles gather candidate columns with contiguous copies.
  const auto KT = uninit_floats(static_cast<size_t>(a.B) * a.heads * a.d * a.N);
  transpose_slices(a.k, a.B, a.heads, a.N, a.d, KT.get(), a.threads);
  // One pass over v flags the slices holding a NaN/Inf, so clean slices skip the per-tile check.
  std::vector<char> v_nonfinite(static_cast<size_t>(a.B) * a.heads);
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (int sl = 0; sl < a.B * a.heads; ++sl) {
    const T* v = a.v.slice(sl / a.heads, sl % a.heads);
    float z = 0.f;
    for (int n = 0; n < a.N; ++n) {
      const T* row = v + n * a.v.sn;
#pragma omp simd reduction(+ : z)
      for (int c = 0; c < a.d; ++c) z += to_f32(row[c]) * 0.f;
    }
    v_nonfinite[sl] = z != z;
  }
#pragma omp parallel num_threads(a.threads)
  {
    FwdScratch s(TQ, maxk, a.d, dp, a.heads);
#pragma omp for schedule(dynamic, 1)
    for (int u = 0; u < ntiles; ++u) {
      if (!build_tile(g, TQ, tile_visit(g, TQ, u), s.ti)) continue;
      for (int hh = 0; hh < a.heads; ++hh) {
        if (a.bias) s.bt = s.bias.get(s.ti, biash.data(), a.bias_rows, hh);
        for (int b = 0; b < a.B; ++b)
          fwd_tile(a, KT.get() + (static_cast<size_t>(b) * a.heads + hh) * a.d * a.N, b, hh, dp,
                   v_nonfinite[static_cast<size_t>(b) * a.heads + hh] != 0, s);
      }
    }
  }
}

template void attn_fwd<float>(const AttnFwdArgs<float>&);
template void attn_fwd<bf16>(const AttnFwdArgs<bf16>&);
template void attn_fwd<f16>(const AttnFwdArgs<f16>&);

}  // namespace tgf
