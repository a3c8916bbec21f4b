// Pass 2 of the deterministic relative-bias gradient. Pass 1 (attention_bwd.cu, dq kernel) stores
// the dS of every visible (query, key) pair in the pair's neighbour slot of a float32 scratch
// (chunk, h, N, K) (common/neighbours.h), each element written once. Here one warp per (table
// row, head) sums, for every query i, the slot that holds i's key at that row (offset_key: at most
// one per query) over the chunk's batch elements: lanes take queries i = lane, lane + 32, ...; a
// fixed butterfly adds the lanes; lane 0 adds the sum into dbias. No atomics, fixed order, so two
// runs give the same bits.
#include <cuda_runtime.h>
#include "cuda/attention.cuh"

namespace tgf {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kThreads) bias_reduce_kernel(const AttnParams P, int nb, int rows) {
  const int lane = threadIdx.x % 32;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  if (w >= static_cast<int64_t>(rows) * P.h) return;  // whole warps only
  const int r = static_cast<int>(w / P.h), hh = static_cast<int>(w % P.h);
  const int64_t plane = static_cast<int64_t>(P.N) * P.K;
  float acc = 0.f;
  for (int i = lane; i < P.N; i += 32) {
    const int key = offset_key(P.g, i, r);
    if (key < 0) continue;
    const int64_t off = static_cast<int64_t>(i) * P.K + key_slot(P.g, P.sg, i, key);
    for (int b = 0; b < nb; ++b) acc += P.dslot[(static_cast<int64_t>(b) * P.h + hh) * plane + off];
  }
  acc = warp_sum(acc);
  if (lane == 0) P.dbias[static_cast<int64_t>(r) * P.h + hh] += acc;
}

}  // namespace

cudaError_t bias_reduce(const AttnParams& P, int nb, cudaStream_t stream) {
  const int rows = bias_table_rows(P.g);
  const int64_t warps = static_cast<int64_t>(rows) * P.h;
  const int64_t blocks = (warps + kWarps - 1) / kWarps;
  bias_reduce_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(P, nb, rows);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tgf
