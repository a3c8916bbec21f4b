"""docs/ops.md §4: a NaN or Inf input reaches exactly the output rows (and channels) that see it,
on every backend, the reference included (issue 15, item 2).

NaN in q row qi and k row kj (head 0), NaN / +Inf / -Inf values at keys vj, vp, vn in channels
0, 1, 2 (head 1). A masked key's value must not leak into other rows through the P @ V product
(0 * NaN = NaN), whether the backend multiplies dense windows (`ref`), tiles (`cpu`, `cuda`) or
key blocks (`triton`).
"""
from __future__ import annotations

import pytest
import torch

from conftest import requires_cpu_ext, requires_cuda_device, requires_triton_interpreter
from transgan_fast.ops import _library
from transgan_fast.ops.attention import attention
from transgan_fast.ops.geometry import grid_geometry, local_geometry, visibility

GEOMS = {
    "grid-shift-partial": grid_geometry((6, 7), (4, 3), (1, 2)),
    "band1d": local_geometry((8, 8), "band1d", width=3),        # the case: 64 tokens
    "clip": local_geometry((7, 6), "window2d", (3, 5), "clip"),
    "nbhd-dilated": local_geometry((9, 8), "window2d", (3, 3), "shift", (2, 2)),
    "nbhd-even": local_geometry((7, 8), "window2d", (4, 2), "shift"),
}

BACKENDS = [
    pytest.param("ref", id="ref"),
    pytest.param("ref-kernel", id="ref-kernel"),  # the `ref` kernels behind the custom ops
    pytest.param("cpu", marks=requires_cpu_ext, id="cpu"),
    pytest.param("triton", marks=requires_triton_interpreter, id="triton"),
    pytest.param("cuda", marks=requires_cuda_device, id="cuda"),
]


def _run(backend, q, k, v, geom):
    if backend == "ref-kernel":
        return _library.attention_fused(q, k, v, None, geom, q.shape[-1] ** -0.5, "ref")
    if backend in ("triton", "cuda") and torch.cuda.is_available():
        q, k, v = q.cuda(), k.cuda(), v.cuda()
    return attention(q, k, v, geom, backend=backend).cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(GEOMS))
def test_nonfinite_inputs_reach_affected_rows_only(name, backend):
    geom = GEOMS[name]
    B, h, d, N = 1, 2, 16, geom.N
    q, k, v = (torch.randn(B, h, N, d) for _ in range(3))
    qi, kj, vj, vp, vn = N // 5, (2 * N) // 5, (3 * N) // 5, N - 1, 0
    q[0, 0, qi, 1] = float("nan")
    k[0, 0, kj, 0] = float("nan")
    v[0, 1, vj, 0] = float("nan")
    v[0, 1, vp, 1] = float("inf")
    v[0, 1, vn, 2] = float("-inf")
    out = _run(backend, q, k, v, geom)
    vis = visibility(geom)                                              # (N, N) bool
    rows0 = vis[:, kj].clone()
    rows0[qi] = True
    assert torch.equal(out[0, 0].isnan().any(-1), rows0), "head 0: NaN rows != rows seeing q/k NaN"
    assert out[0, 0][rows0].isnan().all() and torch.isfinite(out[0, 0][~rows0]).all()
    o1 = out[0, 1]
    assert torch.equal(o1[:, 0].isnan(), vis[:, vj]), "NaN value reached rows that do not see it"
    assert torch.equal(o1[:, 1] == float("inf"), vis[:, vp]), "+Inf value: wrong rows"
    assert torch.equal(o1[:, 2] == float("-inf"), vis[:, vn]), "-Inf value: wrong rows"
    assert torch.isfinite(o1[:, 3:]).all(), "a non-finite value leaked into other channels"
    assert not o1[:, 1:3].isnan().any(), "+-Inf values turned into NaN"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_value_in_wide_tile(backend):
    """One NaN value among 256 tokens of a band: only the 2*width+1 rows around it turn NaN (the
    issue's report: `ref` gave the whole head, `cpu` one query tile)."""
    geom = local_geometry((16, 16), "band1d", width=3)
    q, k, v = (torch.randn(1, 1, geom.N, 8) for _ in range(3))
    v[0, 0, 100, 5] = float("nan")
    out = _run(backend, q, k, v, geom)
    assert torch.equal(out[0, 0, :, 5].isnan().nonzero().flatten(), torch.arange(97, 104))
    assert torch.isfinite(out[0, 0, :, :5]).all() and torch.isfinite(out[0, 0, :, 6:]).all()
