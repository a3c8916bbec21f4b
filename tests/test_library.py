"""torch.library registration: opcheck, gradcheck and gradgradcheck (float64) on the custom ops,
driven through the `ref` kernels so they run on any machine; and one op under torch.compile."""
import pytest
import torch

import transgan_fast as tf
from transgan_fast.ops import _library
from transgan_fast.ops.geometry import grid_geometry, local_geometry


@pytest.fixture(autouse=True)
def no_poison():
    # opcheck compares eager and traced runs; poisoning is irrelevant to registration checks.
    _library.POISON_OUTPUTS = False


# Small maps keep gradgradcheck (numerical second derivatives) quick.
GEOMS = [
    grid_geometry((3, 4), (2, 3), (1, 1)),
    local_geometry((3, 3), mode="band1d", width=2),
    local_geometry((3, 4), kernel_size=3),
    local_geometry((4, 4), kernel_size=2, border="shift", dilation=2),
]


def _qkv(geom, dtype=torch.float64, B=1, h=2, d=2, grad=True):
    return [torch.randn(B, h, geom.N, d, dtype=dtype, requires_grad=grad) for _ in range(3)]


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"kind{g.kind}")
def test_opcheck_attention(geom):
    q, k, v = _qkv(geom)
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_library.attn_fwd, (q, k, v, bias, geom.as_list(), 0.5, "ref"))
    torch.library.opcheck(_library.attn_fwd, (q, k, v, None, geom.as_list(), 0.5, "ref"))
    qkv = torch.randn(2, geom.N, 3 * 2 * 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_library.attn_qkv_fwd, (qkv, bias, 2, geom.as_list(), 0.5, "ref"))


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"kind{g.kind}")
def test_gradcheck_and_gradgradcheck_attention(geom):
    q, k, v = _qkv(geom)
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, requires_grad=True)
    f = lambda q, k, v, b: _library.attention_fused(q, k, v, b, geom, 0.6, "ref")  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v, bias))
    assert torch.autograd.gradgradcheck(f, (q, k, v, bias))
    qkv = torch.randn(1, geom.N, 3 * 2 * 2, dtype=torch.float64, requires_grad=True)
    g = lambda x, b: _library.attention_qkv_fused(x, b, 2, geom, 0.6, "ref")  # noqa: E731
    assert torch.autograd.gradcheck(g, (qkv, bias))
    assert torch.autograd.gradgradcheck(g, (qkv, bias))


def test_custom_op_second_order_equals_reference():
    """WGAN-GP pattern: grad of a gradient norm through the fused op equals the reference's."""
    geom = local_geometry((4, 4), kernel_size=3)
    q, k, v = _qkv(geom)
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, requires_grad=True)

    def penalty(fn):
        out = fn(q, k, v, bias)
        (gq,) = torch.autograd.grad((out ** 2).sum(), q, create_graph=True)
        return torch.autograd.grad((gq ** 2).sum(), [q, k, v, bias])

    fused = penalty(lambda *a: _library.attention_fused(*a[:3], a[3], geom, 0.5, "ref"))
    ref = penalty(lambda *a: tf.ops.attention_ref(*a[:3], geom, a[3], 0.5))
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


RESAMPLE = [
    ("pixel_shuffle_seq", lambda x: _library.pixel_shuffle_seq_op(x, 2, 3, None, "ref"), (2, 6, 8)),
    ("pixel_shuffle_seq_pos", lambda x: _library.pixel_shuffle_seq_op(
        x, 2, 3, torch.ones(1, 24, 2, dtype=x.dtype), "ref"), (2, 6, 8)),
    ("pixel_unshuffle_seq", lambda x: _library.pixel_unshuffle_seq_op(x, 2, 3, "ref"), (2, 24, 2)),
    ("bicubic_upsample_seq", lambda x: _library.bicubic_upsample_seq_op(x, 2, 3, "ref"), (2, 6, 3)),
    ("avg_pool_seq", lambda x: _library.avg_pool_seq_op(x, 4, 6, "ref"), (2, 24, 3)),
    ("pixel_norm", lambda x: _library.pixel_norm_op(x, "ref"), (2, 6, 5)),
]


@pytest.mark.parametrize("name,fn,shape", RESAMPLE, ids=[r[0] for r in RESAMPLE])
def test_gradcheck_and_gradgradcheck_resample(name, fn, shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_opcheck_resample():
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_library._ps, (x, 2, 3, "ref"))
    torch.library.opcheck(_library._ps_pos, (x, 2, 3, torch.randn(1, 24, 2, dtype=torch.float64), "ref"))
    torch.library.opcheck(_library._pu, (torch.randn(2, 24, 2, dtype=torch.float64), 2, 3, "ref"))
    torch.library.opcheck(_library._bic, (torch.randn(2, 6, 3, dtype=torch.float64), 2, 3, "ref"))
    torch.library.opcheck(_library._pool, (torch.randn(2, 24, 3, dtype=torch.float64), 4, 6, "ref"))
    torch.library.opcheck(_library._pixel_norm, (x, "ref"))


def test_torch_compile_fullgraph_through_custom_op():
    geom = grid_geometry((4, 4), (2, 2))
    bias = torch.randn(geom.bias_rows, 2)

    def f(qkv):
        o = _library.attention_qkv_fused(qkv, bias, 2, geom, 0.5, "ref")
        return _library.pixel_shuffle_seq_op(o, 4, 4, None, "ref")

    qkv = torch.randn(2, 16, 3 * 2 * 4)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(qkv), f(qkv))
