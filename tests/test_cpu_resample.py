"""The `cpu` backend's resampling kernels (bicubic 2x, 2x2 average pool, pixel norm) against the
float64 references: forward, gradients (the adjoint kernels), second order, opcheck, threads."""
from __future__ import annotations

import pytest
import torch

from transgan_fast.ops import _dispatch
from transgan_fast.ops.resample import (avg_pool_seq, avg_pool_seq_ref, bicubic_upsample_seq,
                                        bicubic_upsample_seq_ref, pixel_norm, pixel_norm_ref)

from conftest import assert_close_f32, requires_cpu_ext

pytestmark = requires_cpu_ext

# (op, reference, map (H, W), batch, channels): odd and tiny maps, odd channel counts.
BICUBIC = [((5, 7), 2, 12), ((1, 3), 1, 5), ((8, 8), 3, 33), ((2, 1), 2, 4)]
POOL = [((6, 10), 2, 12), ((2, 2), 1, 3), ((8, 4), 3, 33)]


def _check(fn, ref, hw, B, C, second_order=True):
    x = torch.randn(B, hw[0] * hw[1], C, dtype=torch.float64, requires_grad=True)
    xf = x.detach().float().requires_grad_()
    r = ref(x, hw)
    out = fn(xf, hw, backend="cpu")
    assert_close_f32(out, r)
    g = torch.randn_like(r).requires_grad_()
    gf = g.detach().float().requires_grad_()
    gr, = torch.autograd.grad(r, x, g, create_graph=True)
    go, = torch.autograd.grad(out, xf, gf, create_graph=True)
    assert_close_f32(go, gr, grad=True, what="gradient")
    if second_order:
        # The op is linear: its gradient depends on the incoming gradient only, and the
        # gradient of the adjoint kernel is the forward kernel again.
        h = torch.randn_like(gr)
        g2r, = torch.autograd.grad((gr * h).sum(), g)
        g2o, = torch.autograd.grad((go * h.float()).sum(), gf)
        assert_close_f32(g2o, g2r, grad=True, what="second-order gradient")


@pytest.mark.parametrize("hw,B,C", BICUBIC)
def test_bicubic_matches_interpolate(hw, B, C):
    _check(bicubic_upsample_seq, bicubic_upsample_seq_ref, hw, B, C)


@pytest.mark.parametrize("hw,B,C", POOL)
def test_avg_pool_matches_reference(hw, B, C):
    _check(avg_pool_seq, avg_pool_seq_ref, hw, B, C)


@pytest.mark.parametrize("shape", [(2, 9, 24), (5, 1), (3, 4, 7, 130)])
def test_pixel_norm_matches_reference(shape):
    x = torch.randn(*shape, dtype=torch.float64) * 3
    x.requires_grad_()
    xf = x.detach().float().requires_grad_()
    r = pixel_norm_ref(x)
    out = pixel_norm(xf, backend="cpu")
    assert_close_f32(out, r)
    g = torch.randn_like(r)
    gr, = torch.autograd.grad(r, x, g, create_graph=True)
    go, = torch.autograd.grad(out, xf, g.float(), create_graph=True)
    assert_close_f32(go, gr, grad=True, what="gradient")
    g2r, = torch.autograd.grad(gr.pow(2).sum(), x)
    g2o, = torch.autograd.grad(go.pow(2).sum(), xf)
    assert_close_f32(g2o, g2r, grad=True, what="second-order gradient")


def test_thread_counts_agree():
    x = torch.randn(3, 8 * 6, 20)
    before = torch.get_num_threads()
    res = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            res.append([bicubic_upsample_seq(x, (8, 6), backend="cpu"),
                        avg_pool_seq(x, (8, 6), backend="cpu"), pixel_norm(x, backend="cpu")])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_opcheck():
    x = torch.randn(2, 4 * 6, 8, requires_grad=True)
    for op in (torch.ops.transgan_fast.bicubic_upsample_seq, torch.ops.transgan_fast.avg_pool_seq):
        torch.library.opcheck(op.default, (x, 4, 6, "cpu"))
    g = torch.randn(2, 4 * 4 * 6, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.transgan_fast.bicubic_upsample_seq_adjoint.default, (g, 4, 6, "cpu"))
    torch.library.opcheck(torch.ops.transgan_fast.pixel_norm.default, (x, "cpu"))


@pytest.mark.parametrize("dtype", [torch.float64])
def test_unsupported_dtype_is_a_clear_error(dtype):
    x = torch.randn(1, 16, 4, dtype=dtype)
    for call in (lambda: bicubic_upsample_seq(x, (4, 4), backend="cpu"),
                 lambda: avg_pool_seq(x, (4, 4), backend="cpu"),
                 lambda: pixel_norm(x, backend="cpu")):
        with pytest.raises(_dispatch.BackendUnavailableError, match="cpu.*dtype"):
            call()
