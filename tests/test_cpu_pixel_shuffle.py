"""The C++ CPU pixel_shuffle_seq (+ position add) and its adjoint against the reference:
forward, backward, second order, awkward shapes, poisoned outputs, thread counts."""
import pytest
import torch

import transgan_fast as tf
from conftest import assert_close_f32, requires_cpu_ext

pytestmark = requires_cpu_ext

SHAPES = [(1, 1, 1, 4), (2, 3, 5, 8), (3, 4, 4, 12), (1, 7, 2, 64), (2, 8, 8, 1024)]


@pytest.mark.parametrize("B,H,W,C", SHAPES)
@pytest.mark.parametrize("with_pos", [False, True])
def test_forward_and_backward_match_reference(B, H, W, C, with_pos):
    x = torch.randn(B, H * W, C, requires_grad=True)
    pos = torch.randn(1, 4 * H * W, C // 4, requires_grad=True) if with_pos else None
    out = tf.pixel_shuffle_seq(x, (H, W), pos, backend="cpu")
    x64 = x.detach().double().requires_grad_()
    pos64 = pos.detach().double().requires_grad_() if with_pos else None
    ref = tf.pixel_shuffle_seq(x64, (H, W), pos64, backend="ref")
    assert_close_f32(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x] + ([pos] if with_pos else []), g)
    grads64 = torch.autograd.grad(ref, [x64] + ([pos64] if with_pos else []), g.double())
    for a, b in zip(grads, grads64):
        assert_close_f32(a, b, grad=True)


def test_per_sample_pos_and_non_contiguous_input():
    B, H, W, C = 3, 3, 4, 8
    x = torch.randn(B, C, H * W).transpose(1, 2)       # (B, N, C) non-contiguous
    pos = torch.randn(B, 4 * H * W, C // 4)
    assert_close_f32(tf.pixel_shuffle_seq(x, (H, W), pos, backend="cpu"),
                     tf.pixel_shuffle_seq_ref(x.double(), (H, W), pos.double()))


def test_unshuffle_is_exact_inverse_and_matches_reference():
    x = torch.randn(2, 6 * 8, 5)
    got = tf.pixel_unshuffle_seq(x, (6, 8), backend="cpu")
    assert torch.equal(got, tf.pixel_unshuffle_seq_ref(x, (6, 8)))
    assert torch.equal(tf.pixel_shuffle_seq(got, (3, 4), backend="cpu"), x)


def test_second_order_gradients_match_reference():
    x = torch.randn(2, 6, 8, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    w = torch.randn(2, 24, 2)

    def second(fn, xx):
        y = fn(xx)
        (g,) = torch.autograd.grad((y * w.to(y.dtype)).pow(2).sum(), xx, create_graph=True)
        return torch.autograd.grad(g.pow(3).sum(), xx)[0]

    got = second(lambda t: tf.pixel_shuffle_seq(t, (2, 3), backend="cpu"), x)
    want = second(lambda t: tf.pixel_shuffle_seq(t, (2, 3), backend="ref"), x64)
    assert_close_f32(got, want, grad=True)


def test_thread_counts_agree():
    x = torch.randn(4, 16 * 16, 64)
    pos = torch.randn(1, 4 * 256, 16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = tf.pixel_shuffle_seq(x, (16, 16), pos, backend="cpu")
        torch.set_num_threads(2)
        b = tf.pixel_shuffle_seq(x, (16, 16), pos, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a, b)


def test_opcheck_cpu_kernel():
    from transgan_fast.ops import _library
    _library.POISON_OUTPUTS = False
    x = torch.randn(2, 6, 8, requires_grad=True)
    torch.library.opcheck(_library._ps, (x, 2, 3, "cpu"))
    torch.library.opcheck(_library._ps_pos, (x, 2, 3, torch.randn(1, 24, 2), "cpu"))
