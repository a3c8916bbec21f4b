"""Gradients of every order through the fused attention ops (`create_graph=True`): the sparse-logit
path of `_sparse.py` against the float64 reference, aliased inputs (q is k is v, q is k,
k computed from v), packed qkv, and no dense fallback."""
import importlib

import pytest
import torch

import transgan_fast as tf
from conftest import scale_of
from transgan_fast.ops import _dispatch, _library
from transgan_fast.ops import geometry as G

attn_mod = importlib.import_module("transgan_fast.ops.attention")  # the module, not the function

GEOMS = [
    G.grid_geometry((4, 4), (2, 2), (1, 1)), G.grid_geometry((3, 4), (3, 4)),      # shifted; global
    G.local_geometry((3, 4), "band1d", width=2), G.local_geometry((4, 4), kernel_size=3),
    G.local_geometry((4, 5), kernel_size=(2, 3), border="shift", dilation=(2, 1)),
]
IDS = [f"{G.KIND_NAMES[g.kind]}{g.H}x{g.W}" for g in GEOMS]


def _backends():
    out = []
    for b in ("ref", "cpu", "triton"):
        why = _dispatch.backend_unavailable_reason(b, torch.device("cpu"))
        missing = [k for k in _dispatch.SPARSE_KERNELS if k not in _dispatch.KERNELS[b]]
        reason = why or (f"{b}: no sparse-logit kernels ({', '.join(missing)})" if missing else None)
        out.append(pytest.param(b, marks=pytest.mark.skip(reason=reason) if reason else ()))
    return out


def _dtype(backend):
    return torch.float64 if backend == "ref" else torch.float32


def _three_orders(fn, x, ws):
    """Gradients of orders 1, 2, 3 of `sum(fn(x) * ws[0])` w.r.t. the leaf x, along fixed random
    directions (the WGAN-GP pattern, nested once more)."""
    y = (fn(x) * ws[0]).sum()
    (g1,) = torch.autograd.grad(y, x, create_graph=True)
    (g2,) = torch.autograd.grad((g1 * ws[1]).sum(), x, create_graph=True)
    (g3,) = torch.autograd.grad((g2 * ws[2]).sum(), x)
    return g1, g2, g3


def _assert_orders(got, want, dtype):
    for order, (a, b) in enumerate(zip(got, want), 1):
        tol = 1e-9 if dtype == torch.float64 else 2e-4
        err = (a.double() - b).abs().max().item()
        assert err <= tol * scale_of(b), f"order {order}: max error {err:.3e} (scale {scale_of(b):.3g})"


ALIASES = {
    "q_is_k_is_v": lambda x, op: op(x, x, x),
    "q_is_k": lambda x, op: op(x, x, x.flip(-1) * 0.5),
    "k_from_v": lambda x, op: op(x * 0.7, x * 1, x),
    "separate": lambda x, op: op(x * 0.7, x.roll(1, -1), x.flip(-2)),
}


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("alias", list(ALIASES))
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_aliased_inputs_get_reference_gradients_at_every_order(geom, alias, backend):
    torch.manual_seed(geom.N + len(alias))
    dtype = _dtype(backend)
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64) * 0.5
    x64 = torch.randn(1, 2, geom.N, 4, dtype=torch.float64)
    ws = [torch.randn_like(x64) for _ in range(3)]
    ref = lambda q, k, v: attn_mod.attention_ref(q, k, v, geom, bias, 0.6)  # noqa: E731
    fused = lambda q, k, v: _library.attention_fused(q, k, v, bias.to(dtype), geom, 0.6, backend)  # noqa: E731
    want = _three_orders(lambda x: ALIASES[alias](x, ref), x64.clone().requires_grad_(True), ws)
    x = x64.to(dtype).requires_grad_(True)
    got = _three_orders(lambda x: ALIASES[alias](x, fused), x, [w.to(dtype) for w in ws])
    _assert_orders(got, want, dtype)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_packed_qkv_gradients_at_every_order(geom, backend):
    dtype, h, d = _dtype(backend), 2, 3
    bias = torch.randn(geom.bias_rows, h, dtype=torch.float64) * 0.5
    x64 = torch.randn(2, geom.N, 3 * h * d, dtype=torch.float64)
    ws = [torch.randn(2, geom.N, h * d, dtype=torch.float64)] + [torch.randn_like(x64) for _ in range(2)]

    def ref(x):
        q, k, v = x.reshape(2, geom.N, 3, h, d).permute(2, 0, 3, 1, 4)
        return attn_mod.attention_ref(q, k, v, geom, bias, 0.6).transpose(1, 2).reshape(2, geom.N, h * d)

    want = _three_orders(ref, x64.clone().requires_grad_(True), ws)
    got = _three_orders(lambda x: _library.attention_qkv_fused(x, bias.to(dtype), h, geom, 0.6, backend),
                        x64.to(dtype).requires_grad_(True), [w.to(dtype) for w in ws])
    _assert_orders(got, want, dtype)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_penalty_gradients_of_bias_and_every_input(geom, backend):
    """WGAN-GP: d/d(q, k, v, rel_bias) of |d out/dq|^2, fused vs float64 reference."""
    dtype = _dtype(backend)
    leaves64 = [torch.randn(1, 2, geom.N, 4, dtype=torch.float64) for _ in range(3)]
    leaves64.append(torch.randn(geom.bias_rows, 2, dtype=torch.float64) * 0.5)

    def penalty(fn, leaves):
        leaves = [t.clone().requires_grad_(True) for t in leaves]
        out = fn(*leaves)
        (gq,) = torch.autograd.grad((out * out.detach().sin()).sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(gq.pow(2).sum(), leaves)

    want = penalty(lambda q, k, v, b: attn_mod.attention_ref(q, k, v, geom, b, 0.6), leaves64)
    got = penalty(lambda q, k, v, b: _library.attention_fused(q, k, v, b, geom, 0.6, backend),
                  [t.to(dtype) for t in leaves64])
    _assert_orders(got, want, dtype)


@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_gradgradcheck_on_the_fused_path(geom):
    q, k, v = (torch.randn(1, 2, geom.N, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, requires_grad=True)
    f = lambda q, b: _library.attention_fused(q, q, v, b, geom, 0.6, "ref")  # noqa: E731  (aliased)
    assert torch.autograd.gradgradcheck(f, (q, bias), fast_mode=True)


def test_create_graph_never_runs_the_dense_reference(monkeypatch):
    """Regression: the create_graph backward used to recompute through the dense attention_ref."""
    def boom(*a, **kw):
        raise AssertionError("dense reference called")
    monkeypatch.setattr(attn_mod, "attention_ref", boom)
    monkeypatch.setattr(attn_mod, "grid_attention_ref", boom)
    geom = G.local_geometry((4, 4), kernel_size=3)
    x = torch.randn(1, 1, 16, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_library.attention_fused(x, x, x, None, geom, 0.5, "ref").sum(), x,
                               create_graph=True)
    g.pow(2).sum().backward()
    assert x.grad is not None and x.grad.isfinite().all()


def test_backend_without_sparse_kernels_raises(monkeypatch):
    monkeypatch.delitem(_dispatch.KERNELS["ref"], "sparse_av")
    geom = G.local_geometry((4, 4), kernel_size=3)
    x = torch.randn(1, 1, 16, 4, dtype=torch.float64, requires_grad=True)
    out = _library.attention_fused(x, x, x, None, geom, 0.5, "ref")
    with pytest.raises(tf.BackendUnavailableError, match="'ref', which has none for sparse_av"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(_library.attention_fused(x, x, x, None, geom, 0.5, "ref").sum(), x)
    assert g.isfinite().all()                                            # first order unaffected
