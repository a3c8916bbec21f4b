"""The `cuda` attention backward's relative-bias gradient is deterministic (per-slot dS scratch,
then a fixed-order reduction per table row: csrc/cuda/bias_grad.cu): bit-identical across runs,
independent of the batch chunking, and equal to the float64 reference (GPU only)."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close_f32, assert_close_lowp
from transgan_fast.ops import _cuda
from transgan_fast.ops.attention import attention, attention_ref
from transgan_fast.ops.geometry import grid_geometry, local_geometry

DEV = "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

GEOMS = {
    "grid-30x29-w8-shift35": grid_geometry((30, 29), (8, 8), (3, 5)),
    "global-16x16": grid_geometry((16, 16), (16, 16)),
    "band-20x24-w37": local_geometry((20, 24), "band1d", width=37),
    "clip-31x27-k75": local_geometry((31, 27), "window2d", (7, 5), "clip"),
    "clip-12x10-fulltable": local_geometry((12, 10), "window2d", (3, 3), "clip", bias_rows=23 * 19),
    "nbhd-29x33-k57-dil32": local_geometry((29, 33), "window2d", (5, 7), "shift", (3, 2)),
}


def _grads(geom, q, k, v, bias, backend):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, bias)]
    q, k, v, b = leaves
    out = attention(q, k, v, geom, b, backend=backend) if backend != "ref" else \
        attention_ref(q, k, v, geom, b)
    g = torch.ones_like(out) * 0.5 + out.detach()
    return torch.autograd.grad(out, leaves, g)


def _inputs(geom, B=4, h=3, d=32, dtype=torch.float32):
    q, k, v = (torch.randn(B, h, geom.N, d, device=DEV, dtype=dtype) for _ in range(3))
    return q, k, v, torch.randn(geom.bias_rows, h, device=DEV, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", list(GEOMS))
def test_dbias_bit_identical_and_correct(name, dtype):
    geom = GEOMS[name]
    q, k, v, bias = _inputs(geom, dtype=dtype)
    runs = [_grads(geom, q, k, v, bias.to(dtype), "cuda") for _ in range(3)]
    for other in runs[1:]:
        assert torch.equal(runs[0][3], other[3])
    ref = _grads(geom, *(t.double() for t in (q, k, v, bias)), "ref")
    if dtype == torch.float32:
        assert_close_f32(runs[0][3], ref[3], grad=True, tf32=True, what="dbias")
    else:
        low = _grads(geom, q, k, v, bias.to(dtype), "ref")
        assert_close_lowp(runs[0][3], ref[3], low[3], grad=True, what="dbias")


def test_batch_chunks_give_the_same_gradients(monkeypatch):
    geom = GEOMS["nbhd-29x33-k57-dil32"]
    q, k, v, bias = _inputs(geom, B=5)
    whole = _grads(geom, q, k, v, bias, "cuda")
    monkeypatch.setattr(_cuda, "DBIAS_SCRATCH_BYTES", 2 * 3 * geom.N * 35 * 4)  # 2 per chunk
    chunked = _grads(geom, q, k, v, bias, "cuda")
    for a, b in zip(whole[:3], chunked[:3]):
        assert torch.equal(a, b)
    ref = _grads(geom, *(t.double() for t in (q, k, v, bias)), "ref")
    assert_close_f32(chunked[3], ref[3], grad=True, tf32=True, what="chunked dbias")
