"""The `cpu` backend in bfloat16 and float16 (docs/ops.md §4, §5).

Every attention geometry kind forward and gradients, the packed-qkv entry, the sparse-logit
primitives and second order (also with q, k and v one tensor), the resampling ops, large logits,
NaN rows as in float32, float32 statistics, the float16 and bfloat16 rounding against torch's, and
autocast: the ops run the fused `cpu` kernels under `torch.autocast("cpu", ...)`, never the dense
reference. Errors follow the low-precision rule of §4 (`assert_close_lowp`): at most 2x (gradients
3x) the error of the reference computed in the same dtype, plus 1e-3.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from transgan_fast import _ext
from transgan_fast.ops import _dispatch, _sparse
from transgan_fast.ops import neighbours as nb
from transgan_fast.ops.attention import attention, attention_qkv, attention_ref
from transgan_fast.ops.geometry import grid_geometry, local_geometry
from transgan_fast.ops.resample import (avg_pool_seq, avg_pool_seq_ref, bicubic_upsample_seq,
                                        bicubic_upsample_seq_ref, pixel_norm, pixel_norm_ref,
                                        pixel_shuffle_seq, pixel_shuffle_seq_ref)

from conftest import assert_close_lowp, requires_cpu_ext

pytestmark = requires_cpu_ext

DTYPES = [torch.bfloat16, torch.float16]
DT_IDS = ["bf16", "fp16"]

# One case per geometry kind (partial and shifted windows, dilation, odd head dims), kept small:
# the reference in bfloat16 runs torch's slow reduced-precision matmul on this CPU.
CASES = [
    ("grid-shift-partial", grid_geometry((10, 9), (4, 5), (3, 2)), 2, 2, 24),
    ("band", local_geometry((9, 10), "band1d", width=7), 1, 2, 20),
    ("clip-7x7", local_geometry((11, 12), "window2d", (7, 7), "clip"), 1, 2, 32),
    ("nbhd-dilated", local_geometry((13, 11), "window2d", (3, 5), "shift", dilation=(2, 2)), 2, 1, 72),
]
IDS = [c[0] for c in CASES]


def _leaves(dtype, *shapes):
    """float64 leaves holding values representable in `dtype`, and their `dtype` copies."""
    x64 = [torch.randn(*s, dtype=torch.float64).to(dtype).double().requires_grad_() for s in shapes]
    return x64, [t.detach().to(dtype).requires_grad_() for t in x64]


def _grads(out, inputs, g, create_graph=False):
    return torch.autograd.grad(out, inputs, g, create_graph=create_graph)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_attention_matches_reference(case, dtype):
    _, geom, B, h, d = case
    shape = (B, h, geom.N, d)
    (q, k, v), (ql, kl, vl) = _leaves(dtype, shape, shape, shape)
    rb = torch.randn(geom.bias_rows, h, dtype=torch.float64, requires_grad=True)
    rbf = rb.detach().float().requires_grad_()
    scale = 0.7 * d ** -0.5
    ref = attention_ref(q, k, v, geom, rb, scale)
    ref_l = attention_ref(ql, kl, vl, geom, rbf, scale)
    out = attention(ql, kl, vl, geom, rbf, scale, backend="cpu")
    assert out.dtype == dtype
    assert_close_lowp(out, ref, ref_l)
    g = torch.randn_like(ref).to(dtype)
    for name, a, b, c in zip("q k v rel_bias".split(), _grads(out, (ql, kl, vl, rbf), g),
                             _grads(ref, (q, k, v, rb), g.double()),
                             _grads(ref_l, (ql, kl, vl, rbf), g)):
        assert a.dtype == (torch.float32 if name == "rel_bias" else dtype)
        assert_close_lowp(a, b, c, grad=True, what=f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_attention_qkv_and_lse_float32(dtype):
    geom = local_geometry((8, 9), "window2d", (5, 5), "clip")
    B, h, d = 2, 2, 16
    (x,), (xl,) = _leaves(dtype, (B, geom.N, 3 * h * d))
    out = attention_qkv(xl, h, geom, backend="cpu")
    q, k, v = x.reshape(B, geom.N, 3, h, d).permute(2, 0, 3, 1, 4)
    ql, kl, vl = xl.reshape(B, geom.N, 3, h, d).permute(2, 0, 3, 1, 4)
    as_seq = lambda o: o.transpose(1, 2).reshape(B, geom.N, h * d)  # noqa: E731
    ref, ref_l = as_seq(attention_ref(q, k, v, geom)), as_seq(attention_ref(ql, kl, vl, geom))
    assert out.dtype == dtype
    assert_close_lowp(out, ref, ref_l)
    g = torch.randn_like(ref).to(dtype)
    assert_close_lowp(_grads(out, xl, g)[0], _grads(ref, x, g.double())[0], _grads(ref_l, xl, g)[0],
                      grad=True, what="dqkv")
    # The softmax statistics stay float32 whatever the activations are.
    _, lse = torch.ops.transgan_fast.attn_fwd(ql, kl, vl, None, geom.as_list(), d ** -0.5, "cpu")
    assert lse.dtype == torch.float32


def _sparse_operands(geom, dtype, B=2, h=2, d=12):
    keys, _ = nb.neighbour_index(geom)
    shape, pshape = (B, h, geom.N, d), (B, h, geom.N, keys.shape[1])
    (a, b, p), (al, bl, pl) = _leaves(dtype, shape, shape, pshape)
    return keys, (a.detach(), b.detach(), p.detach()), (al.detach(), bl.detach(), pl.detach())


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("geom", [grid_geometry((7, 5), (4, 3), (1, 2)),
                                  local_geometry((8, 9), kernel_size=3, border="shift", dilation=(2, 3))],
                         ids=["grid", "nbhd"])
def test_sparse_primitives_match_reference(geom, dtype):
    keys, (a, b, p), (al, bl, pl) = _sparse_operands(geom, dtype)
    gl = geom.as_list()
    for what, fn, ref, args, args_l in (
            ("qk", _sparse._qk, nb.sparse_qk_ref, (a, b), (al, bl)),
            ("av", _sparse._av, nb.sparse_av_ref, (p, b), (pl, bl)),
            ("avt", _sparse._avt, nb.sparse_avt_ref, (p, a), (pl, al))):
        out = fn(*args_l, gl, "cpu")
        assert out.dtype == dtype
        assert_close_lowp(out, ref(*args, keys), ref(*args_l, keys), what=what)


def _penalty_grads(q, k, v, rb, geom, backend):
    """Gradients of a gradient penalty (as WGAN-GP): d/d(q, k, v, bias) of |d out / d q . g|."""
    out = attention(q, k, v, geom, rb, backend=backend) if backend else attention_ref(q, k, v, geom, rb)
    g = torch.ones_like(out)
    dq, = torch.autograd.grad(out, q, g, create_graph=True)
    return torch.autograd.grad((dq.float() ** 2).sum(), [t for t in (q, k, v, rb) if t is not None])


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
def test_second_order_through_sparse_primitives(case, dtype):
    _, geom, B, h, d = case
    shape = (B, h, geom.N, d)
    (q, k, v), (ql, kl, vl) = _leaves(dtype, shape, shape, shape)
    rb = torch.randn(geom.bias_rows, h, dtype=torch.float64, requires_grad=True)
    rbf = rb.detach().float().requires_grad_()
    ref = _penalty_grads(q, k, v, rb, geom, None)
    ref_l = _penalty_grads(ql, kl, vl, rbf, geom, None)
    got = _penalty_grads(ql, kl, vl, rbf, geom, "cpu")
    for name, a, b, c in zip("q k v rel_bias".split(), got, ref, ref_l):
        assert_close_lowp(a, b, c, grad=True, what=f"second-order d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_aliased_qkv_second_order(dtype):
    """q is k is v: each slot's derivative counts once, in the double backward too."""
    geom = local_geometry((7, 8), "window2d", (3, 3), "clip")
    (x,), (xl,) = _leaves(dtype, (1, 2, geom.N, 8))

    def penalty_grad(x, backend):
        out = attention(x, x, x, geom, backend=backend) if backend else attention_ref(x, x, x, geom)
        dx, = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        return torch.autograd.grad((dx.float() ** 2).sum(), x)[0]

    assert_close_lowp(penalty_grad(xl, "cpu"), penalty_grad(x, None), penalty_grad(xl, None),
                      grad=True, what="aliased second order")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_large_logits_stay_finite(dtype):
    """Scaled logits near 1e4: float32 max and log-sum-exp, no overflow in the reduced dtype."""
    geom = local_geometry((6, 7), "window2d", (3, 3), "clip")
    shape = (1, 2, geom.N, 16)
    (q, k, v), (ql, kl, vl) = _leaves(dtype, shape, shape, shape)
    with torch.no_grad():
        for t in (q, ql, k, kl):
            t.mul_(50.0)  # |q . k| * scale up to ~1e4
    out = attention(ql, kl, vl, geom, backend="cpu")
    assert torch.isfinite(out).all()
    ref = attention_ref(q, k, v, geom)
    # Near one-hot rows: rounding a logit of ~1e4 in the reduced dtype can change the winner, so
    # the float64 reference of the same (rounded) inputs is the yardstick, with the kernel's
    # float32 logits: every output is a convex combination of v rows.
    assert (out.double() - ref).abs().max().item() <= 0.05 * ref.abs().max().item() + 1e-2


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nan_rows_as_in_float32(dtype):
    geom = local_geometry((8, 8), "window2d", (3, 3), "clip")
    q, k, v = (torch.randn(1, 1, geom.N, 8).to(dtype) for _ in range(3))
    q[0, 0, 5, 2] = float("nan")
    k[0, 0, 30, 0] = float("nan")
    v[0, 0, 50, 3] = float("inf")
    v[0, 0, 51, 3] = float("-inf")
    out = attention(q, k, v, geom, backend="cpu")
    out32 = attention(q.float(), k.float(), v.float(), geom, backend="cpu")
    assert torch.equal(out.isnan(), out32.isnan())
    assert torch.equal(out.isinf(), out32.isinf())
    assert out.isnan().any() and out.isinf().any()


# ---------------------------------------------------------------------------------------------
# Resampling.

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("op", ["bicubic", "pool", "pixel_norm", "pixel_shuffle"])
def test_resampling_matches_reference(op, dtype):
    fn, ref, hw, C = {
        "bicubic": (bicubic_upsample_seq, bicubic_upsample_seq_ref, (5, 7), 12),
        "pool": (avg_pool_seq, avg_pool_seq_ref, (6, 10), 33),
        "pixel_norm": (lambda x, hw, backend: pixel_norm(x, backend=backend),
                       lambda x, hw: pixel_norm_ref(x), (4, 5), 24),
        "pixel_shuffle": (pixel_shuffle_seq, pixel_shuffle_seq_ref, (3, 5), 16),
    }[op]
    (x,), (xl,) = _leaves(dtype, (2, hw[0] * hw[1], C))
    r, r_l = ref(x, hw), ref(xl, hw)
    out = fn(xl, hw, backend="cpu")
    assert out.dtype == dtype
    assert_close_lowp(out, r, r_l)
    g = torch.randn_like(r).to(dtype)
    assert_close_lowp(_grads(out, xl, g)[0], _grads(r, x, g.double())[0], _grads(r_l, xl, g)[0],
                      grad=True, what="gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_rounding_equals_torchs(dtype):
    """One float32 add, rounded to the dtype, equals torch's rounding bit for bit (nearest even;
    NaN, Inf, overflow and subnormals included); the portable float16 conversion agrees with the
    compiler's."""
    B, hw, C = 1, (4, 4), 64
    x = torch.randn(B, hw[0] * hw[1], C) * torch.logspace(-9, 5, C)
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 7e4])
    pos = torch.randn(B, 4 * hw[0] * hw[1], C // 4) * 1e-3
    xl, pl = x.to(dtype), pos.to(dtype)
    out = pixel_shuffle_seq(xl, hw, pos=pl, backend="cpu")
    want = pixel_shuffle_seq_ref(xl.float(), hw, pos=pl.float()).to(dtype)
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))
    assert _ext.cpu_module.f16_portable_mismatches() == 0


# ---------------------------------------------------------------------------------------------
# Dispatch and autocast.

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_auto_picks_cpu_for_reduced_precision(dtype):
    call = _dispatch.Call("attention", torch.device("cpu"), dtype)
    assert _dispatch.can_run("cpu", call) is None
    q = torch.randn(1, 1, 4, 4, dtype=dtype)
    assert _dispatch.resolve("attention", "auto", [("q", q)], dict(B=1, heads=1, N=4, d=4, kind=0)) == "cpu"
    assert _dispatch.resolve("avg_pool_seq", "auto", [("x", q[0])]) == "cpu"


@pytest.fixture
def no_reference(monkeypatch):
    """Make the dense reference attention fail if anything calls it."""
    def boom(*a, **k):
        raise AssertionError("the dense reference attention ran")
    monkeypatch.setattr(importlib.import_module("transgan_fast.ops.attention"), "attention_ref", boom)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_autocast_runs_fused_cpu_kernels(dtype, no_reference):
    geom = local_geometry((8, 8), "window2d", (3, 3), "clip")
    q, k, v = (torch.randn(2, 2, geom.N, 8) for _ in range(3))
    rb = torch.randn(geom.bias_rows, 2)
    qkv = torch.randn(2, geom.N, 3 * 2 * 8)
    with torch.autocast("cpu", dtype=dtype):
        out = attention(q, k, v, geom, rb)                      # auto
        out_cpu = attention(q, k, v, geom, rb, backend="cpu")
        out_qkv = attention_qkv(qkv, 2, geom)
    assert out.dtype == out_cpu.dtype == out_qkv.dtype == dtype
    want = attention(q.to(dtype), k.to(dtype), v.to(dtype), geom, rb, backend="cpu")
    assert torch.equal(out, want) and torch.equal(out_cpu, want)
    assert torch.equal(out_qkv, attention_qkv(qkv.to(dtype), 2, geom, backend="cpu"))


def test_autocast_leaves_float64_alone():
    """As torch's autocast for SDPA: float64 inputs are not cast (here: the reference runs)."""
    geom = grid_geometry((4, 4), (2, 2))
    q = torch.randn(1, 1, geom.N, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, q, q, geom)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, attention_ref(q, q, q, geom))


@pytest.mark.parametrize("window", [None, 4], ids=["global", "grid4"])
def test_autocast_layer_gradient_penalty(window, no_reference):
    """An attention layer under CPU bfloat16 autocast, through a WGAN-GP style penalty
    (create_graph): every attention call runs the fused kernels and the gradients are finite."""
    from transgan_fast.nn.attention import Attention
    layer = Attention(16, (8, 8), heads=2, window=window)
    x = torch.randn(2, 64, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        g, = torch.autograd.grad(out.float().sum(), x, create_graph=True)
        ((g.flatten(1).norm(dim=1) - 1) ** 2).mean().backward()
    assert out.dtype == torch.bfloat16
    # (proj.bias has no second-order path to the penalty: its gradient stays None)
    for name in ("rel_bias", "qkv.weight", "proj.weight"):
        gr = layer.get_parameter(name).grad
        assert gr is not None and torch.isfinite(gr).all() and gr.abs().max() > 0, name


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_opcheck(dtype):
    geom = grid_geometry((6, 6), (3, 3))
    q, k, v = (torch.randn(1, 2, geom.N, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    rb = torch.randn(geom.bias_rows, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.transgan_fast.attn_fwd.default,
                          (q, k, v, rb, geom.as_list(), 8 ** -0.5, "cpu"))
    x = torch.randn(2, 16, 8, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.transgan_fast.bicubic_upsample_seq.default, (x, 4, 4, "cpu"))
