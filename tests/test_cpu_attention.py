"""The `cpu` backend's fused attention against the float64 reference (docs/ops.md §4).

Every geometry kind (grid with shift and partial windows, band, clip, NATTEN neighbourhood with
dilation), with and without relative bias, awkward head dims and map sizes, forward and every
gradient, the packed-qkv entry, second order through the custom op, NaN and large-logit
behaviour, thread-count agreement, `opcheck`, and dtype errors.
"""
from __future__ import annotations

import pytest
import torch

from transgan_fast.ops import _dispatch
from transgan_fast.ops.attention import attention, attention_qkv, attention_ref
from transgan_fast.ops.geometry import bias_index, grid_geometry, local_geometry, visibility

from conftest import assert_close_f32, requires_cpu_ext

pytestmark = requires_cpu_ext

# (id, geometry, batch, heads, head dim): every kind; maps and windows that do not divide.
CASES = [
    ("grid-partial", grid_geometry((9, 11), (4, 5)), 2, 3, 24),
    ("grid-shift", grid_geometry((8, 12), (4, 4), (2, 1)), 1, 2, 16),
    ("grid-shift-partial", grid_geometry((10, 9), (4, 5), (3, 2)), 2, 1, 4),
    ("grid-global", grid_geometry((7, 9), (7, 9)), 1, 2, 72),
    ("band", local_geometry((9, 10), "band1d", width=7), 2, 2, 24),
    ("band-wide", local_geometry((6, 7), "band1d", width=60), 1, 1, 4),
    ("clip", local_geometry((9, 10), "window2d", (5, 3), "clip"), 2, 2, 24),
    ("clip-7x7", local_geometry((11, 19), "window2d", (7, 7), "clip"), 1, 2, 32),
    ("clip-fullbias", local_geometry((7, 8), "window2d", (3, 5), "clip", bias_rows=13 * 15), 1, 3, 16),
    ("nbhd", local_geometry((11, 13), "window2d", (5, 3), "shift"), 2, 2, 24),
    ("nbhd-dilated", local_geometry((13, 14), "window2d", (3, 5), "shift", dilation=(2, 2)), 1, 2, 72),
    ("nbhd-dilated-uneven", local_geometry((13, 11), "window2d", (3, 3), "shift", dilation=(3, 1)), 1, 1, 4),
]
IDS = [c[0] for c in CASES]


def _inputs(geom, B, h, d, bias, grads=(True, True, True, True)):
    """float64 leaves (for the reference) and float32 leaves (for the kernel) with equal values."""
    x64 = [torch.randn(B, h, geom.N, d, dtype=torch.float64) for _ in range(3)]
    x64.append(torch.randn(geom.bias_rows, h, dtype=torch.float64) if bias else None)
    x32 = [t.float() if t is not None else None for t in x64]
    for ts in (x64, x32):
        for t, g in zip(ts, grads):
            if t is not None:
                t.requires_grad_(g)
    return x64, x32


def _grads(out, inputs, g):
    need = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, need, g))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_backward_matches_reference(case, bias):
    _, geom, B, h, d = case
    (q, k, v, rb), (qf, kf, vf, rbf) = _inputs(geom, B, h, d, bias)
    scale = 0.7 * d ** -0.5
    ref = attention_ref(q, k, v, geom, rb, scale)
    out = attention(qf, kf, vf, geom, rbf, scale, backend="cpu")
    assert_close_f32(out, ref)
    g = torch.randn_like(ref)
    for name, a, b in zip("q k v rel_bias".split(), _grads(out, [qf, kf, vf, rbf], g.float()),
                          _grads(ref, [q, k, v, rb], g)):
        if b is not None:
            assert_close_f32(a, b, grad=True, what=f"d{name}")


@pytest.mark.parametrize("grads", [(False, True, False, True), (True, False, True, False)],
                         ids=["k+bias", "q+v"])
def test_partial_requires_grad(grads):
    geom = local_geometry((9, 10), "window2d", (3, 5), "clip")
    (q, k, v, rb), (qf, kf, vf, rbf) = _inputs(geom, 2, 2, 16, True, grads)
    ref = attention_ref(q, k, v, geom, rb)
    out = attention(qf, kf, vf, geom, rbf, backend="cpu")
    g = torch.randn_like(ref)
    for a, b in zip(_grads(out, [qf, kf, vf, rbf], g.float()), _grads(ref, [q, k, v, rb], g)):
        assert (a is None) == (b is None)
        if b is not None:
            assert_close_f32(a, b, grad=True)


@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[10]], ids=[IDS[1], IDS[6], IDS[10]])
def test_packed_qkv(case):
    _, geom, B, h, d = case
    qkv = torch.randn(B, geom.N, 3 * h * d, dtype=torch.float64, requires_grad=True)
    rb = torch.randn(geom.bias_rows, h, dtype=torch.float64, requires_grad=True)
    qkvf, rbf = (t.detach().float().requires_grad_() for t in (qkv, rb))
    ref = attention_qkv(qkv, h, geom, rb, backend="ref")
    out = attention_qkv(qkvf, h, geom, rbf, backend="cpu")
    assert_close_f32(out, ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [qkvf, rbf], g.float()), torch.autograd.grad(ref, [qkv, rb], g)):
        assert_close_f32(a, b, grad=True)


@pytest.mark.parametrize("case", [CASES[1], CASES[9]], ids=[IDS[1], IDS[9]])
def test_second_order_matches_reference(case):
    """WGAN-GP: grad with create_graph through the op, then a second grad (docs/ops.md §3)."""
    _, geom, B, h, d = case
    (q, k, v, rb), (qf, kf, vf, rbf) = _inputs(geom, B, h, d, True)
    results = []
    for ins, backend in (((q, k, v, rb), "ref"), ((qf, kf, vf, rbf), "cpu")):
        out = attention(*ins[:3], geom, ins[3], backend=backend)
        gq, = torch.autograd.grad((out * out.detach().sin()).sum(), ins[0], create_graph=True)
        penalty = (gq.pow(2).sum() - 1).pow(2)
        results.append(torch.autograd.grad(penalty, ins))
    for name, a, b in zip("q k v rel_bias".split(), results[1], results[0]):
        assert_close_f32(a, b, grad=True, what=f"second-order d{name}")


@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[7], CASES[10]],
                         ids=[IDS[2], IDS[4], IDS[7], IDS[10]])
def test_nan_propagates_to_affected_rows_only(case):
    _, geom, B, h, d = case
    q, k, v = (torch.randn(B, h, geom.N, d) for _ in range(3))
    rb = torch.randn(geom.bias_rows, h)
    qi, kj = geom.N // 3, (2 * geom.N) // 3
    q[0, 0, qi, 1] = float("nan")
    k[0, 0, kj, 0] = float("nan")
    out = attention(q, k, v, geom, rb, backend="cpu")
    vis = visibility(geom)
    expect = vis[:, kj].clone()
    expect[qi] = True
    nan_rows = out[0, 0].isnan().any(-1)
    assert torch.equal(nan_rows, expect), "NaN rows differ from the rows that see the NaN inputs"
    assert out[0, 0].isnan().all(-1).eq(nan_rows).all()
    assert not out[1:].isnan().any() and not out[:, 1:].isnan().any()


@pytest.mark.parametrize("case", [CASES[0], CASES[6], CASES[9]], ids=[IDS[0], IDS[6], IDS[9]])
def test_large_logits_stay_finite(case):
    _, geom, B, h, d = case
    q, k, v = (torch.randn(B, h, geom.N, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rb = torch.randn(geom.bias_rows, h, dtype=torch.float64)
    scale = 1e4 / d ** 0.5  # scaled logits of order 1e4
    ref = attention_ref(q, k, v, geom, rb, scale)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = attention(qf, kf, vf, geom, rb.float(), scale, backend="cpu")
    assert torch.isfinite(out).all()
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (qf, kf, vf), g)
    assert all(torch.isfinite(t).all() for t in grads)
    # Near-one-hot softmax: float32 logits of size 1e4 carry ~1e-3 absolute error, so compare only
    # rows whose two largest visible logits are more than 20 apart (there the answer is stable).
    logits = scale * q.detach() @ k.detach().transpose(-2, -1) + rb[bias_index(geom)].permute(2, 0, 1)
    top2 = logits.masked_fill(~visibility(geom), float("-inf")).topk(2, dim=-1).values
    stable = (top2[..., 0] - top2[..., 1]) > 20.0                         # (B, h, N)
    assert stable.float().mean() > 0.5
    assert_close_f32(out[stable], ref.detach()[stable], grad=True)


@pytest.mark.parametrize("case", [CASES[0], CASES[7], CASES[11]], ids=[IDS[0], IDS[7], IDS[11]])
def test_thread_counts_agree(case):
    _, geom, B, h, d = case
    (q, k, v, rb), _ = _inputs(geom, B, h, d, True)
    q, k, v, rb = (t.detach().float().requires_grad_() for t in (q, k, v, rb))
    before = torch.get_num_threads()
    res = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = attention(q, k, v, geom, rb, backend="cpu")
            g = torch.ones_like(out)
            res.append((out, *torch.autograd.grad(out, (q, k, v, rb), g)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*res):
        assert_close_f32(a, b.double(), grad=True, what="threads 1 vs 2")


@pytest.mark.parametrize("case", [CASES[1], CASES[10]], ids=[IDS[1], IDS[10]])
def test_opcheck(case):
    _, geom, B, h, d = case
    q, k, v = (torch.randn(B, h, geom.N, d, requires_grad=True) for _ in range(3))
    rb = torch.randn(geom.bias_rows, h, requires_grad=True)
    torch.library.opcheck(torch.ops.transgan_fast.attn_fwd.default,
                          (q, k, v, rb, geom.as_list(), d ** -0.5, "cpu"))
    qkv = torch.randn(B, geom.N, 3 * h * d, requires_grad=True)
    torch.library.opcheck(torch.ops.transgan_fast.attn_qkv_fwd.default,
                          (qkv, rb, h, geom.as_list(), d ** -0.5, "cpu"))


@pytest.mark.parametrize("dtype", [torch.float64])
def test_unsupported_dtype_is_a_clear_error(dtype):
    geom = grid_geometry((4, 4), (2, 2))
    q = torch.randn(1, 1, 16, 8, dtype=dtype)
    with pytest.raises(_dispatch.BackendUnavailableError, match="cpu.*dtype"):
        attention(q, q, q, geom, backend="cpu")


# CLIP's plane kernel (csrc/cpu/attention_local_fwd.cpp): one slice split into row strips, a
# partial block of 8 columns, unequal radii; a window as large as the map; and one taller than
# the map, which the tile kernel runs. Forward and gradients (the backward reads the plane
# kernel's log-sum-exp), one and three threads.
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("hw,ks,B,h,d", [((13, 21), (3, 9), 1, 1, 20), ((5, 9), (5, 9), 2, 1, 8),
                                         ((4, 6), (7, 3), 1, 2, 8)],
                         ids=["strips", "window-is-map", "window-taller"])
def test_clip_plane_kernel_shapes(hw, ks, B, h, d, threads):
    geom = local_geometry(hw, "window2d", ks, "clip")
    (q, k, v, rb), (qf, kf, vf, rbf) = _inputs(geom, B, h, d, True)
    ref = attention_ref(q, k, v, geom, rb)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = attention(qf, kf, vf, geom, rbf, backend="cpu")
        g = torch.randn_like(ref)
        got = _grads(out, [qf, kf, vf, rbf], g.float())
    finally:
        torch.set_num_threads(before)
    assert_close_f32(out, ref)
    for name, a, b in zip("q k v rel_bias".split(), got, _grads(ref, [q, k, v, rb], g)):
        assert_close_f32(a, b, grad=True, what=f"d{name}")
