"""Bad input gets a clear error naming the argument and the expectation; odd layouts work."""
import pytest
import torch

import transgan_fast as tf
from conftest import assert_close_f32


def qkv(N=16, d=4, h=2, B=1, **kw):
    return [torch.randn(B, h, N, d, **kw) for _ in range(3)]


@pytest.mark.parametrize("call,match", [
    (lambda: tf.grid_attention(torch.randn(2, 16, 4), *qkv()[1:], (4, 4), (2, 2)), "q must be 4-D"),
    (lambda: tf.grid_attention(*qkv(N=15), (4, 4), (2, 2)), r"N=15 tokens but hw=\(4, 4\)"),
    (lambda: tf.grid_attention(*qkv(), (4, 4), (5, 2)), r"window \(5, 2\) must fit"),
    (lambda: tf.grid_attention(*qkv(), (4, 4), (2, 2), shift=(2, 0)), "shift"),
    (lambda: tf.grid_attention(qkv()[0], qkv(d=5)[1], qkv()[2], (4, 4), (2, 2)), "same shape"),
    (lambda: tf.grid_attention(*qkv(), (4, 4), (2, 2), rel_bias=torch.randn(8, 2)), "9 rows"),
    (lambda: tf.grid_attention(*qkv(), (4, 4), (2, 2), rel_bias=torch.randn(9, 3)), "3 heads"),
    (lambda: tf.grid_attention(*qkv(), (4, 4), "big"), "window"),
    (lambda: tf.local_attention(*qkv(), (4, 4), mode="band"), "mode must be"),
    (lambda: tf.local_attention(*qkv(), (4, 4), mode="band1d"), "width"),
    (lambda: tf.local_attention(*qkv(), (4, 4), kernel_size=4), "odd kernel_size"),
    (lambda: tf.local_attention(*qkv(), (4, 4), kernel_size=3, dilation=2), "dilation is only"),
    (lambda: tf.local_attention(*qkv(), (4, 4), kernel_size=3, border="shift", dilation=2),
     "kernel_size\\*dilation <= hw"),
    (lambda: tf.local_attention(*qkv(), (4, 4), border="wrap"), "border must be"),
    (lambda: tf.grid_attention(*[t.long() for t in qkv()], (4, 4), (2, 2)), "floating point"),
    (lambda: tf.attention_qkv(torch.randn(1, 16, 10), 2, tf.grid_geometry((4, 4), (2, 2))), "divisible by 3\\*heads"),
    (lambda: tf.pixel_shuffle_seq(torch.randn(1, 16, 6), (4, 4)), "divisible by 4"),
    (lambda: tf.pixel_shuffle_seq(torch.randn(1, 16, 8), (4, 5)), "N=16 tokens but hw"),
    (lambda: tf.pixel_shuffle_seq(torch.randn(16, 8), (4, 4)), "3-D"),
    (lambda: tf.pixel_shuffle_seq(torch.randn(1, 16, 8), (4, 4), pos=torch.randn(1, 16, 2)), "pos must have shape"),
    (lambda: tf.pixel_unshuffle_seq(torch.randn(1, 15, 8), (3, 5)), "even"),
    (lambda: tf.avg_pool_seq(torch.randn(1, 15, 8), (5, 3)), "even"),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_non_contiguous_inputs_are_handled_not_rejected():
    B, h, N, d = 2, 2, 12, 6
    base = torch.randn(B, N, h, 2 * d)
    q = base[..., :d].transpose(1, 2)           # (B, h, N, d), inner stride 1, odd outer strides
    k = torch.randn(B, h, d, N).transpose(2, 3)  # inner stride != 1
    v = torch.randn(B, h, N, d)
    want = tf.grid_attention(q.contiguous(), k.contiguous(), v, (3, 4), (2, 2), backend="ref")
    got = tf.grid_attention(q, k, v, (3, 4), (2, 2), backend="auto")
    assert_close_f32(got, want.double())
    x = torch.randn(2, 8, 12).transpose(1, 2)   # (B, N=12, C=8) non-contiguous
    assert torch.equal(tf.pixel_shuffle_seq(x, (3, 4)), tf.pixel_shuffle_seq_ref(x.contiguous(), (3, 4)))


@pytest.mark.parametrize("call,exc,match", [
    # band1d width beyond int32 passed validation, then pybind raised TypeError
    (lambda: tf.local_attention(*qkv(), (4, 4), mode="band1d", width=2 ** 31), ValueError,
     r"band1d width=2147483648 does not fit the kernels' int32"),
    (lambda: tf.grid_attention(*qkv(d=0), (4, 4), (2, 2)), ValueError, r"head dim d .* must be >= 1"),
    (lambda: tf.attention_qkv(torch.randn(1, 16, 0), 2, tf.grid_geometry((4, 4), (2, 2))), ValueError,
     r"head dim d = C / \(3\*heads\) >= 1"),
    (lambda: tf.attention(*qkv(), None), TypeError, "geom must be an AttnGeometry.*got NoneType"),
    (lambda: tf.attention_qkv(torch.randn(1, 16, 12), 2, None), TypeError, "geom must be an AttnGeometry"),
    (lambda: tf.pixel_norm(torch.ones(2, 8, dtype=torch.int64)), ValueError, "got dtype torch.int64"),
])
def test_issue15_errors_are_clear(call, exc, match):
    """Issue 15 item 3: these raised ZeroDivisionError, AttributeError, a pybind TypeError, or a
    message that named the shape instead of the dtype."""
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", ["auto", "cpu", "ref"])
@pytest.mark.parametrize("packed", [False, True])
def test_zero_size_batch_forward_and_backward(backend, packed):
    """Issue 15 item 3: an empty batch's backward on cpu/auto raised 'innermost dim must be
    contiguous; got strides (0, 0, 0, 0)'. It is an empty result, with zero bias gradient."""
    from transgan_fast import _ext
    if backend == "cpu" and _ext.cpu_module is None:
        pytest.skip("C++ CPU extension not built")
    geom = tf.grid_geometry((4, 4), (2, 2))
    bias = torch.randn(9, 2, requires_grad=True)
    if packed:
        x = torch.randn(0, 16, 24, requires_grad=True)
        out = tf.attention_qkv(x, 2, geom, bias, backend=backend)
        grads = torch.autograd.grad(out.sum(), [x, bias])
    else:
        q, k, v = (t.requires_grad_() for t in qkv(B=0))
        out = tf.attention(q, k, v, geom, bias, backend=backend)
        grads = torch.autograd.grad(out.sum(), [q, k, v, bias])
    assert out.shape[0] == 0
    assert all(g.shape[0] == 0 for g in grads[:-1])
    assert torch.equal(grads[-1], torch.zeros_like(bias))
