"""The `cuda` backend against the float64 reference (GPU only; docs/ops.md §4 tolerances).

Attention: every geometry kind (grid with shift and partial windows, global, band1d, window2d
clip with both bias tables, NATTEN neighbourhoods with dilation), with and without rel_bias, a
custom scale, forward and backward (q/k/v/rel_bias gradients, any subset requiring grad), second
order through the packed and unpacked entries, float32/float16/bfloat16, head dims 4..256, awkward
shapes (B=1, one head, N not a multiple of any tile), large logits and NaN rows. Resampling ops:
forward and backward of bicubic upsampling, average pooling, pixel norm and pixel shuffle.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from transgan_fast.ops.geometry import grid_geometry, local_geometry

from conftest import assert_close_f32, assert_close_lowp

# The modules (the package namespace re-exports functions under the same names).
A = importlib.import_module("transgan_fast.ops.attention")
R = importlib.import_module("transgan_fast.ops.resample")

DEVICE, BACKEND = "cuda", "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

GEOMS = {
    "grid-8x8-w4": lambda: grid_geometry((8, 8), (4, 4)),
    "grid-7x10-w4-shift23": lambda: grid_geometry((7, 10), (4, 4), (2, 3)),
    "grid-12x12-w6-shift3": lambda: grid_geometry((12, 12), (6, 6), (3, 3)),
    "global-9x7": lambda: grid_geometry((9, 7), (9, 7)),
    "band-5x7-w6": lambda: local_geometry((5, 7), mode="band1d", width=6),
    "band-3x3-w0": lambda: local_geometry((3, 3), mode="band1d", width=0),
    "clip-9x9-k5": lambda: local_geometry((9, 9), kernel_size=(5, 5), border="clip"),
    "clip-6x5-k35-fulltable": lambda: local_geometry((6, 5), kernel_size=(3, 5), border="clip",
                                                     bias_rows=11 * 9),
    "nbhd-9x8-k3-dil2": lambda: local_geometry((9, 8), kernel_size=(3, 3), border="shift",
                                               dilation=(2, 2)),
    "nbhd-10x10-k53-dil13": lambda: local_geometry((10, 10), kernel_size=(5, 3), border="shift",
                                                   dilation=(1, 3)),
    "nbhd-20x20-k7": lambda: local_geometry((20, 20), kernel_size=(7, 7), border="shift"),
    "clip-17x19-k7": lambda: local_geometry((17, 19), kernel_size=(7, 7), border="clip"),
}


def _rand(*shape, dtype=torch.float64, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64, device=DEVICE) * scale).to(dtype)


def _run(q, k, v, geom, bias, scale, backend, dout, wrt):
    """Output and gradients (w.r.t. the tensors named in `wrt`) of one attention call."""
    ins = {"q": q, "k": k, "v": v, "bias": bias}
    leaves = {n: (t.detach().clone().requires_grad_(n in wrt) if t is not None else None)
              for n, t in ins.items()}
    out = A.attention(leaves["q"], leaves["k"], leaves["v"], geom, leaves["bias"], scale,
                      backend=backend)
    need = [leaves[n] for n in wrt]
    grads = torch.autograd.grad(out, need, dout.to(out.dtype)) if need else ()
    return out.detach(), dict(zip(wrt, grads))


def check_attention(geom, dtype, B=2, h=3, d=16, bias=True, scale=None, wrt=("q", "k", "v", "bias"),
                    logit_scale=1.0):
    N = geom.N
    q64, k64, v64 = (_rand(B, h, N, d, scale=logit_scale) for _ in range(3))
    b64 = _rand(geom.bias_rows, h) if bias else None
    dout = _rand(B, h, N, d)
    wrt = tuple(n for n in wrt if n != "bias" or bias)
    ref, gref = _run(q64, k64, v64, geom, b64, scale, "ref", dout, wrt)
    low = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    b32 = None if b64 is None else b64.float()
    out, g = _run(low(q64), low(k64), low(v64), geom, b32, scale, BACKEND, dout, wrt)
    if dtype == torch.float32:
        assert_close_f32(out, ref, what="out")
        for n in wrt:
            assert_close_f32(g[n], gref[n], grad=True, what=f"d{n}")
    else:
        rl, gl = _run(low(q64), low(k64), low(v64), geom, None if b64 is None else b64.to(dtype),
                      scale, "ref", dout, wrt)
        assert_close_lowp(out, ref, rl, what="out")
        for n in wrt:
            assert_close_lowp(g[n], gref[n], gl[n], grad=True, what=f"d{n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name", list(GEOMS))
def test_every_geometry_with_bias(name, dtype):
    check_attention(GEOMS[name](), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name", ["grid-7x10-w4-shift23", "band-5x7-w6", "clip-9x9-k5",
                                  "nbhd-9x8-k3-dil2"])
def test_no_bias_custom_scale(name, dtype):
    check_attention(GEOMS[name](), dtype, bias=False, scale=0.37)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("d", [4, 16, 24, 32, 48, 64, 72, 84, 96, 128, 256])
def test_head_dims(d, dtype):
    check_attention(grid_geometry((6, 10), (4, 4), (1, 2)), dtype, B=1, h=2, d=d)


@pytest.mark.parametrize("d", [5, 33, 200])
def test_odd_head_dims_single_head(d):
    check_attention(local_geometry((7, 9), kernel_size=(3, 5), border="shift"), torch.float32,
                    B=1, h=1, d=d)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
def test_many_tiles_global_and_grid(dtype):
    # N = 33 * 35 = 1155: many query/key chunks, partial last tiles on both axes.
    check_attention(grid_geometry((33, 35), (16, 16), (8, 5)), dtype, B=1, h=2, d=32)
    check_attention(grid_geometry((20, 21), (20, 21)), dtype, B=1, h=1, d=64)


@pytest.mark.parametrize("wrt", [("q",), ("k",), ("v",), ("bias",), ("k", "v")])
def test_gradient_subsets(wrt):
    check_attention(GEOMS["nbhd-9x8-k3-dil2"](), torch.float32, wrt=wrt)


def test_large_logits_stay_finite():
    # Scaled scores up to about +-1e4 (docs/ops.md §4): the online softmax must not overflow. At that
    # size float32 rounding of the logits alone moves near-tied softmax weights, so the check is
    # the softmax property: finite, and every output inside [min v, max v] of its head.
    geom = GEOMS["clip-9x9-k5"]()
    for dtype in DTYPES:
        q, k, v = (_rand(1, 2, geom.N, 16, scale=30.0).to(dtype) for _ in range(3))
        out = A.attention(q, k, v, geom, scale=1.0, backend=BACKEND).float()
        assert torch.isfinite(out).all(), dtype
        vf = v.float()
        lo, hi = vf.amin(dim=2, keepdim=True), vf.amax(dim=2, keepdim=True)
        slack = 1e-2 * vf.abs().max()
        assert ((out >= lo - slack) & (out <= hi + slack)).all(), dtype
    # Moderately peaked softmax (logits of std ~9) still meets the float32 tolerances.
    check_attention(geom, torch.float32, logit_scale=3.0)


def test_nan_rows_stay_local():
    geom = GEOMS["nbhd-20x20-k7"]()
    q, k, v = (_rand(1, 1, geom.N, 16).float() for _ in range(3))
    q[0, 0, 5] = float("nan")
    out = A.attention(q, k, v, geom, backend=BACKEND)
    assert torch.isnan(out[0, 0, 5]).all()
    others = torch.ones(geom.N, dtype=torch.bool, device=DEVICE)
    others[5] = False
    assert torch.isfinite(out[0, 0, others]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
def test_packed_qkv_entry(dtype):
    geom = GEOMS["grid-7x10-w4-shift23"]()
    B, h, d = 2, 2, 24
    qkv64 = _rand(B, geom.N, 3 * h * d)
    b64 = _rand(geom.bias_rows, h)
    g = _rand(B, geom.N, h * d)

    def run(x, b, backend):
        x = x.detach().clone().requires_grad_()
        b = b.detach().clone().requires_grad_()
        out = A.attention_qkv(x, h, geom, b, backend=backend)
        return (out.detach(), *torch.autograd.grad(out, (x, b), g.to(out.dtype)))

    ref = run(qkv64, b64, "ref")
    got = run(qkv64.to(dtype), b64.float(), BACKEND)
    if dtype == torch.float32:
        for a, r, grad in zip(got, ref, (False, True, True)):
            assert_close_f32(a, r, grad=grad)
    else:
        rl = run(qkv64.to(dtype), b64.to(dtype), "ref")
        for a, r, l, grad in zip(got, ref, rl, (False, True, True)):
            assert_close_lowp(a, r, l, grad=grad)


def test_second_order_matches_reference():
    # WGAN-GP: grad of a function of first-order gradients (create_graph=True).
    geom = GEOMS["grid-7x10-w4-shift23"]()
    q64, k64, v64 = (_rand(1, 2, geom.N, 8) for _ in range(3))
    b64 = _rand(geom.bias_rows, 2)

    def second(q, k, v, b, backend):
        q, k, v, b = (t.detach().clone().requires_grad_() for t in (q, k, v, b))
        out = A.attention(q, k, v, geom, b, backend=backend)
        gq, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        return torch.autograd.grad(gq.square().sum(), (q, k, v, b))

    ref = second(q64, k64, v64, b64, "ref")
    got = second(q64.float(), k64.float(), v64.float(), b64.float(), BACKEND)
    for a, r in zip(got, ref):
        assert_close_f32(a, r, grad=True)


def test_strided_views():
    geom = GEOMS["clip-9x9-k5"]()
    base = _rand(2, geom.N, 3, 4, 16).float()          # (B, N, 3, h, d) -> strided (B, h, N, d)
    q, k, v = base.permute(2, 0, 3, 1, 4).unbind(0)
    out = A.attention(q, k, v, geom, backend=BACKEND)
    assert_close_f32(out, A.attention_ref(q.double(), k.double(), v.double(), geom))


def test_head_dim_above_256_is_a_clear_error():
    geom = GEOMS["clip-9x9-k5"]()
    big = _rand(1, 1, geom.N, 264).float()
    with pytest.raises(ValueError, match="head dim"):
        A.attention(big, big, big, geom, backend=BACKEND)


# ---------------------------------------------------------------------------------------------
# Resampling ops.

RESAMPLE_SHAPES = [(2, 4, 4, 8), (1, 5, 3, 7), (3, 1, 1, 4), (1, 8, 6, 64)]


def _check_op(fn, ref_fn, x64, dtype):
    """Forward and backward (through the op's registered adjoint/backward) of fn vs ref_fn."""
    g64 = None

    def run(f, x):
        nonlocal g64
        x = x.detach().clone().requires_grad_()
        out = f(x)
        if g64 is None:
            g64 = torch.randn(out.shape, dtype=torch.float64, device=DEVICE)
        return out.detach(), torch.autograd.grad(out, x, g64.to(out.dtype))[0]

    ref = run(ref_fn, x64)
    got = run(fn, x64.to(dtype))
    if dtype == torch.float32:
        assert_close_f32(got[0], ref[0])
        assert_close_f32(got[1], ref[1], grad=True)
    else:
        rl = run(ref_fn, x64.to(dtype))
        assert_close_lowp(got[0], ref[0], rl[0])
        assert_close_lowp(got[1], ref[1], rl[1], grad=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("B,H,W,C", RESAMPLE_SHAPES)
def test_bicubic_upsample(B, H, W, C, dtype):
    x = _rand(B, H * W, C)
    _check_op(lambda t: R.bicubic_upsample_seq(t, (H, W), backend=BACKEND),
              lambda t: R.bicubic_upsample_seq_ref(t, (H, W)), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("B,H,W,C", [(2, 4, 4, 8), (1, 6, 2, 7), (2, 2, 2, 3), (1, 16, 8, 64)])
def test_avg_pool(B, H, W, C, dtype):
    x = _rand(B, H * W, C)
    _check_op(lambda t: R.avg_pool_seq(t, (H, W), backend=BACKEND),
              lambda t: R.avg_pool_seq_ref(t, (H, W)), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("shape", [(2, 16, 8), (1, 5, 7), (3, 4, 1), (1, 9, 300)])
def test_pixel_norm(shape, dtype):
    x = _rand(*shape)
    _check_op(lambda t: R.pixel_norm(t, backend=BACKEND), R.pixel_norm_ref, x, dtype)


def test_pixel_norm_second_order():
    x64 = _rand(2, 6, 12)

    def second(x, backend):
        x = x.detach().clone().requires_grad_()
        g, = torch.autograd.grad(R.pixel_norm(x, backend=backend).pow(3).sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), x)[0]

    assert_close_f32(second(x64.float(), BACKEND), second(x64, "ref"), grad=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("B,H,W,C", [(2, 4, 4, 8), (1, 3, 5, 12)])
def test_pixel_shuffle_with_pos(B, H, W, C, dtype):
    x = _rand(B, H * W, C)
    pos = _rand(1, 4 * H * W, C // 4)
    _check_op(lambda t: R.pixel_shuffle_seq(t, (H, W), pos.to(t.dtype), backend=BACKEND),
              lambda t: R.pixel_shuffle_seq_ref(t, (H, W), pos.to(t.dtype)), x, dtype)
