// Forward of square-window local attention (CLIP: |dy| <= r1, |dx| <= r2, cut at the border)
// computed per window offset on the map plane instead of per tile of candidate keys.
//
// Every query of a map row sees its keys at the same window offsets (a, b), so with q, k and v
// transposed to channels-first planes (channel x row x column), the logits of offset (a, b) for
// LB consecutive queries of a row are one vector FMA per channel:
//   S[a, b][x .. x+LB) += QT[c][y][x .. x+LB) * KT[c][y - r1 + a][x - r2 + b .. x - r2 + b + LB)
// and P V is the same product the other way round. Only the (2 r1 + 1)(2 r2 + 1) window slots are
// computed (a tile of the list tiling computes about twice as many logits: its candidates are
// the union of its queries' windows), and nothing is gathered per tile: the key and value planes
// are zero-padded by the radii, so every window read is a plain unaligned vector load, and the
// offsets that fall off the map are masked in the logits. Lanes of a vector are independent
// queries, so a NaN/Inf reaches only the queries whose window holds it (as in the reference).
//
// Work: one task = the query rows [y0, y1) of one (batch, head) slice; the task transposes what
// it reads (its query rows, and its key/value rows grown by r1) into float32 planes, so the
// storage type T is converted once per element.
#include <algorithm>
#include "cpu/attention_tile.h"
#include "cpu/vec8.h"
#include "cpu/kernels.h"

namespace tgf {
using namespace cpu_attn;

namespace {

constexpr int LB = 8;   // queries per vector (v8f): consecutive columns of one map row
constexpr int CB = 8;   // value channels per register block of P V
constexpr int NBX = 7;  // window columns per register block of the logits

struct LocalShape {
  int H, W, r1, r2, KY, KX, K;  // map, radii, window KY x KX = K slots
  int Wq, Wp;                   // plane widths: queries (W rounded up to LB), keys (Wq + 2 r2)
  int d, dv;                    // head dim; value planes (d rounded up to CB, zero beyond d)
  int rows;                     // query rows per task
};

struct LocalScratch {
  std::vector<float> QT, KT, VT, S, O, sbias;
  LocalScratch(const LocalShape& sh) {
    const size_t kp = static_cast<size_t>(sh.rows + 2 * sh.r1) * sh.Wp;
    QT.resize(static_cast<size_t>(sh.d) * sh.rows * sh.Wq);
    KT.resize(sh.d * kp);
    VT.resize(sh.dv * kp);
    S.resize(static_cast<size_t>(sh.K) * LB);
    O.resize(static_cast<size_t>(sh.dv) * LB);
    sbias.resize(sh.K);
  }
};

// dst[c][pr][xoff + x] = src(row y0 + pr, column x) channel c, for the plane rows pr < prows
// whose map row lies in [0, H); every other entry of the d (of nch) channel planes is zero.
// Whole 8 x 8 (token, channel) blocks are transposed in registers, the rest element by element.
template <typename T>
TGF_KERNEL_INLINE void fill_planes(const T* src, int64_t sn, const LocalShape& sh, int y0, int prows,
                                   int pw, int xoff, int nch, float* dst) {
  const size_t cs = static_cast<size_t>(prows) * pw;
  std::fill(dst, dst + nch * cs, 0.f);
  const int d8 = sh.d / 8 * 8;
  for (int pr = 0; pr < prows; ++pr) {
    const int y = y0 + pr;
    if (y < 0 || y >= sh.H) continue;
    for (int x0 = 0; x0 < sh.W; x0 += LB) {
      const int nx = std::min(LB, sh.W - x0);
      const T* s = src + (static_cast<int64_t>(y) * sh.W + x0) * sn;
      float* o = dst + static_cast<size_t>(pr) * pw + xoff + x0;
      int c0 = 0;
      if (nx == LB) {
        for (; c0 < d8; c0 += 8) {
          v8f r[8];
          for (int i = 0; i < 8; ++i) r[i] = load8_f32(s + i * sn + c0);
          transpose8(r);
          for (int cc = 0; cc < 8; ++cc) store8(o + (c0 + cc) * cs, r[cc]);
        }
      }
      for (int c = c0; c < sh.d; ++c)
        for (int i = 0; i < nx; ++i) o[c * cs + i] = to_f32(s[i * sn + c]);
    }
  }
}

// S[t][l] = sum_c q[c * qs + l] * k[c * ks + t + l] for t < NB: NB consecutive window columns of
// one window row for LB queries (q, k point at the first query's column and first key column).
template <int NB>
TGF_KERNEL_INLINE void qk_cols(const float* q, size_t qs, const float* k, size_t ks, int d, float* S) {
  v8f acc[NB];
  for (int t = 0; t < NB; ++t) acc[t] = v8f{};
  for (int c = 0; c < d; ++c) {
    const v8f qc = load8(q + c * qs);
    const float* kc = k + c * ks;
    for (int t = 0; t < NB; ++t) acc[t] += qc * load8(kc + t);
  }
  for (int t = 0; t < NB; ++t) store8(S + t * LB, acc[t]);
}

// One window row: its KX columns in blocks of NBX (accumulators stay in registers).
TGF_KERNEL_INLINE void qk_row(const float* q, size_t qs, const float* k, size_t ks, int d, int KX,
                              float* S) {
  int b = 0;
  for (; b + NBX <= KX; b += NBX) qk_cols<NBX>(q, qs, k + b, ks, d, S + b * LB);
  switch (KX - b) {
    case 6: qk_cols<6>(q, qs, k + b, ks, d, S + b * LB); break;
    case 5: qk_cols<5>(q, qs, k + b, ks, d, S + b * LB); break;
    case 4: qk_cols<4>(q, qs, k + b, ks, d, S + b * LB); break;
    case 3: qk_cols<3>(q, qs, k + b, ks, d, S + b * LB); break;
    case 2: qk_cols<2>(q, qs, k + b, ks, d, S + b * LB); break;
    case 1: qk_cols<1>(q, qs, k + b, ks, d, S + b * LB); break;
    default: break;
  }
}

// O[cc][l] = sum over window rows [alo, ahi) and columns b < KX of P[a, b][l] * v[cc * vs + a * Wp
// + b + l] for CB channels (v points at the first channel, window row 0, the first query's column).
TGF_KERNEL_INLINE void pv_block(const float* P, const float* v, size_t vs, int alo, int ahi, int KX,
                                int Wp, float* O) {
  v8f acc[CB];
  for (int cc = 0; cc < CB; ++cc) acc[cc] = v8f{};
  for (int a = alo; a < ahi; ++a)
    for (int b = 0; b < KX; ++b) {
      const v8f p = load8(P + static_cast<size_t>(a * KX + b) * LB);
      const float* vb = v + static_cast<size_t>(a) * Wp + b;
      for (int cc = 0; cc < CB; ++cc) acc[cc] += p * load8(vb + cc * vs);
    }
  for (int cc = 0; cc < CB; ++cc) store8(O + cc * LB, acc[cc]);
}

// Query rows [y0, y1) of slice sl.
template <typename T>
TGF_KERNEL_INLINE void local_task_body(const AttnFwdArgs<T>& a, const LocalShape& sh, int sl, int y0,
                                       int y1, LocalScratch& s) {
  const int b = sl / a.heads, hh = sl % a.heads;
  const int rows = y1 - y0, prows = rows + 2 * sh.r1, KX = sh.KX, W = sh.W, d = sh.d;
  const size_t qs = static_cast<size_t>(rows) * sh.Wq, ks = static_cast<size_t>(prows) * sh.Wp;
  fill_planes(a.q.slice(b, hh), a.q.sn, sh, y0, rows, sh.Wq, 0, d, s.QT.data());
  fill_planes(a.k.slice(b, hh), a.k.sn, sh, y0 - sh.r1, prows, sh.Wp, sh.r2, d, s.KT.data());
  fill_planes(a.v.slice(b, hh), a.v.sn, sh, y0 - sh.r1, prows, sh.Wp, sh.r2, sh.dv, s.VT.data());
  for (int ay = 0; ay < sh.KY; ++ay)
    for (int bx = 0; bx < KX; ++bx)
      s.sbias[ay * KX + bx] =
          a.bias ? a.bias[offset_bias_row(a.geom, sh.r1 - ay, sh.r2 - bx) * a.heads + hh] : 0.f;
  T* out = a.out.slice(b, hh);
  float* lse = a.lse + (static_cast<int64_t>(b) * a.heads + hh) * a.N;
  const float ninf = -std::numeric_limits<float>::infinity(), scale = a.scale;
  float* S = s.S.data();

  for (int y = y0; y < y1; ++y) {
    const int alo = std::max(0, sh.r1 - y), ahi = std::min(sh.KY, sh.H - y + sh.r1);
    const float* qrow = s.QT.data() + static_cast<size_t>(y - y0) * sh.Wq;
    const size_t krow = static_cast<size_t>(y - y0) * sh.Wp;  // plane row of window row 0
    for (int x0 = 0; x0 < W; x0 += LB) {
      for (int ay = alo; ay < ahi; ++ay)
        qk_row(qrow + x0, qs, s.KT.data() + krow + static_cast<size_t>(ay) * sh.Wp + x0, ks, d, KX,
               S + static_cast<size_t>(ay) * KX * LB);
      // Scale, bias, mask the columns off the map; softmax over the window per lane.
      const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
      v8f m = splat8(ninf), l = v8f{};
      for (int ay = alo; ay < ahi; ++ay)
        for (int bx = 0; bx < KX; ++bx) {
          float* srow = S + static_cast<size_t>(ay * KX + bx) * LB;
          const v8i xk = lane + (x0 - sh.r2 + bx);  // key column of each lane
          const v8f v = select8((xk >= 0) & (xk < W), load8(srow) * scale + s.sbias[ay * KX + bx],
                                splat8(ninf));
          store8(srow, v);
          m = select8(m > v, m, v);
        }
      for (int ay = alo; ay < ahi; ++ay)
        for (int bx = 0; bx < KX; ++bx) {
          float* srow = S + static_cast<size_t>(ay * KX + bx) * LB;
          const v8f p = exp_neg8(load8(srow) - m);
          store8(srow, p);
          l += p;
        }
      for (int c0 = 0; c0 < sh.dv; c0 += CB)
        pv_block(S, s.VT.data() + c0 * ks + krow + x0, ks, alo, ahi, KX, sh.Wp, s.O.data() + c0 * LB);
      const int nx = std::min(LB, W - x0);
      for (int i = 0; i < nx; ++i) {
        const float inv = 1.f / l[i];
        T* o = out + (static_cast<int64_t>(y) * W + x0 + i) * a.out.sn;
        for (int c = 0; c < d; ++c) o[c] = from_f32<T>(s.O[c * LB + i] * inv);
        lse[y * W + x0 + i] = m[i] + std::log(l[i]);
      }
    }
  }
}

TGF_ISA_DISPATCH_T(local_task, local_task_body<T>,
                   (const AttnFwdArgs<T>& a, const LocalShape& sh, int sl, int y0, int y1,
                    LocalScratch& s),
                   (a, sh, sl, y0, y1, s))

}  // namespace

namespace cpu_attn {

template <typename T>
bool local_fwd_plane(const AttnFwdArgs<T>& a) {
  const Geom& g = a.geom;
  if (g.kind != CLIP) return false;
  LocalShape sh;
  sh.H = g.H; sh.W = g.W;
  sh.r1 = clip_radius(g, Y_AXIS); sh.r2 = clip_radius(g, X_AXIS);
  sh.KY = 2 * sh.r1 + 1; sh.KX = 2 * sh.r2 + 1; sh.K = sh.KY * sh.KX;
  // A window larger than the map would compute mostly masked slots: the tile kernels do better.
  if (sh.KY > sh.H || sh.KX > sh.W || sh.K > 1024) return false;
  sh.Wq = round_up(sh.W, LB); sh.Wp = sh.Wq + 2 * sh.r2;
  sh.d = a.d; sh.dv = round_up(a.d, CB);
  // Rows per task: a whole slice when there are enough slices for the threads, but at most what
  // keeps a task's planes near 256 KiB (L2); every task re-reads 2 r1 halo rows of k and v.
  const int slices = a.B * a.heads;
  const int want = std::max(1, std::min(sh.H, cdiv(4 * a.threads, slices)));
  const int cap = std::max(1, (1 << 16) / std::max(1, (sh.d + 2 * sh.dv) * sh.Wp) - 2 * sh.r1);
  sh.rows = std::max(cdiv(sh.H, want) < cap ? cdiv(sh.H, want) : cap, 1);
  const int strips = cdiv(sh.H, sh.rows), tasks = slices * strips;
#pragma omp parallel num_threads(a.threads)
  {
    LocalScratch s(sh);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < tasks; ++t) {
      const int y0 = (t % strips) * sh.rows;
      local_task<T>(a, sh, t / strips, y0, std::min(sh.H, y0 + sh.rows), s);
    }
  }
  return true;
}

template bool local_fwd_plane<float>(const AttnFwdArgs<float>&);
template bool local_fwd_plane<bf16>(const AttnFwdArgs<bf16>&);
template bool local_fwd_plane<f16>(const AttnFwdArgs<f16>&);

}  // namespace cpu_attn
}  // namespace tgf
