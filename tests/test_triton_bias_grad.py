"""The Triton attention backward's relative-bias gradient is deterministic (two-pass reduction,
`ops/_triton/bias_grad.py`): bit-identical across runs and batch chunkings' reruns, no float
atomics in the kernels, and equal to the float64 reference for every geometry kind."""
from __future__ import annotations

import inspect

import pytest
import torch

from conftest import assert_close_f32, requires_triton_interpreter
from transgan_fast.ops.attention import attention, attention_ref
from transgan_fast.ops.geometry import grid_geometry, local_geometry

pytest.importorskip("triton", reason="triton is not installed")
from transgan_fast.ops._triton import attention_bwd, bias_grad  # noqa: E402

pytestmark = requires_triton_interpreter
GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"

GEOMS = {
    "grid-shift-partial": grid_geometry((5, 4), (3, 2), (1, 1)),
    "band": local_geometry((3, 4), "band1d", width=3),
    "clip-fullbias": local_geometry((4, 3), "window2d", (3, 3), "clip", bias_rows=7 * 5),
    "nbhd-dilated": local_geometry((6, 4), "window2d", (3, 2), "shift", (2, 2)),
}


def _grads(geom, q, k, v, bias, backend):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, bias)]
    q, k, v, b = leaves
    out = attention(q, k, v, geom, b, backend=backend) if backend != "ref" else \
        attention_ref(q, k, v, geom, b)
    g = torch.autograd.grad(out, leaves, torch.ones_like(out) * 0.5 + out.detach())
    return g


def _inputs(geom, B=2, h=1, d=4, dtype=torch.float32):
    q, k, v = (torch.randn(B, h, geom.N, d, device=DEV, dtype=dtype) for _ in range(3))
    return q, k, v, torch.randn(geom.bias_rows, h, device=DEV, dtype=dtype)


@pytest.mark.parametrize("name", list(GEOMS))
def test_dbias_is_bit_identical_across_runs_and_matches_reference(name):
    geom = GEOMS[name]
    q, k, v, bias = _inputs(geom)
    first = _grads(geom, q, k, v, bias, "triton")
    second = _grads(geom, q, k, v, bias, "triton")
    assert torch.equal(first[3], second[3])
    ref = _grads(geom, *(t.double() for t in (q, k, v, bias)), "ref")
    for what, got, exp in zip(("dq", "dk", "dv", "dbias"), first, ref):
        assert_close_f32(got, exp, grad=True, tf32=GPU, what=f"{name} {what}")


def test_batch_chunks_give_the_same_gradients(monkeypatch):
    # A scratch budget of one batch element forces three chunks (B = 3), each reduced into dbias
    # before the next; dq/dk/dv must not notice and dbias must still match the reference.
    geom = GEOMS["nbhd-dilated"]
    q, k, v, bias = _inputs(geom, B=3, h=2)
    whole = _grads(geom, q, k, v, bias, "triton")
    per = 2 * geom.N * 6 * 4                                  # heads * N * K float32
    assert bias_grad.batch_chunk(3, 2, geom.N, 6) == 3
    monkeypatch.setattr(bias_grad, "SCRATCH_BYTES", per)
    assert bias_grad.batch_chunk(3, 2, geom.N, 6) == 1
    chunked = _grads(geom, q, k, v, bias, "triton")
    for a, b in zip(whole[:3], chunked[:3]):
        assert torch.equal(a, b)
    ref = _grads(geom, *(t.double() for t in (q, k, v, bias)), "ref")
    assert_close_f32(chunked[3], ref[3], grad=True, tf32=GPU, what="chunked dbias")


def test_backward_kernels_use_no_float_atomics():
    # The previous dq kernel added dS into dbias with tl.atomic_add: run-to-run different bits on
    # a GPU. Nothing in the backward or the reduction may use atomics now.
    for mod in (attention_bwd, bias_grad):
        assert "atomic_" not in inspect.getsource(mod)
