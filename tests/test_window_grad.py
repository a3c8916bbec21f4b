"""The create_graph backward of whole-window grid attention (`ops/_window_grad.py`): the closed-form
second order against numerical derivatives and the float64 reference, aliased and packed inputs,
and the dispatch (whole windows take it, shifted or partial windows keep the sparse kernels)."""
import importlib

import pytest
import torch

from conftest import scale_of
from transgan_fast.ops import _dispatch, _library, _window_grad
from transgan_fast.ops import geometry as G

attn_mod = importlib.import_module("transgan_fast.ops.attention")

WHOLE = [G.grid_geometry((3, 4), (3, 4)), G.grid_geometry((4, 4), (2, 2)),
         G.grid_geometry((4, 6), (2, 3))]
IDS = [f"{g.H}x{g.W}-w{g.p[0]}x{g.p[1]}" for g in WHOLE]


def _cpu_or_skip():
    why = _dispatch.backend_unavailable_reason("cpu", torch.device("cpu"))
    if why:
        pytest.skip(why)


def test_whole_windows_classifies_geometries():
    assert all(_window_grad.whole_windows(g) for g in WHOLE)
    assert not _window_grad.whole_windows(G.grid_geometry((4, 4), (2, 2), (1, 1)))   # shifted
    assert not _window_grad.whole_windows(G.grid_geometry((5, 4), (2, 2)))           # partial
    assert not _window_grad.whole_windows(G.local_geometry((4, 4), kernel_size=3))


@pytest.mark.parametrize("geom", WHOLE, ids=IDS)
def test_closed_form_second_order_matches_numerical_derivatives(geom):
    """gradcheck of the first-order function itself: checks `backward`'s closed form."""
    torch.manual_seed(geom.N)
    q, k, v, dout = (torch.randn(2, 2, geom.N, 2, dtype=torch.float64, requires_grad=True)
                     for _ in range(4))
    bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, requires_grad=True)

    def first_order(q, k, v, bias, dout):
        out = _window_grad.window_attention(q, k, v, bias, geom, 0.7).detach()
        lse = torch.zeros(q.shape[:3], dtype=torch.float32)          # float64 recomputes its own
        return _window_grad.attention_grads(q, k, v, bias, out, lse, dout, geom, 0.7)

    assert torch.autograd.gradcheck(first_order, (q, k, v, bias, dout), fast_mode=True)


MODES = {
    "separate": lambda ls: ls[:3],
    "q_is_k_is_v": lambda ls: (ls[0], ls[0], ls[0]),
    "k_from_v": lambda ls: (ls[0], ls[1] * 1, ls[1]),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("geom", WHOLE, ids=IDS)
def test_penalty_matches_float64_reference(geom, mode):
    """WGAN-GP pattern on the cpu backend (float32, the fused forward's lse) vs float64 `ref`."""
    _cpu_or_skip()
    torch.manual_seed(geom.N + len(mode))
    leaves64 = [torch.randn(2, 2, geom.N, 4, dtype=torch.float64) for _ in range(3)]
    leaves64.append(torch.randn(geom.bias_rows, 2, dtype=torch.float64) * 0.5)
    w = torch.randn(2, 2, geom.N, 4, dtype=torch.float64)

    def penalty(fn, leaves):
        leaves = [t.clone().requires_grad_(True) for t in leaves]
        out = fn(*MODES[mode](leaves), leaves[3])
        grads = torch.autograd.grad((out * w.to(out.dtype)).sum(), leaves, create_graph=True,
                                    allow_unused=True)
        pen = sum(g.pow(2).sum() for g in grads if g is not None)
        return torch.autograd.grad(pen, leaves, allow_unused=True)

    want = penalty(lambda q, k, v, b: attn_mod.attention_ref(q, k, v, geom, b, 0.6), leaves64)
    got = penalty(lambda q, k, v, b: _library.attention_fused(q, k, v, b, geom, 0.6, "cpu"),
                  [t.float() for t in leaves64])
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if b is not None:
            assert (a.double() - b).abs().max().item() <= 2e-5 * scale_of(b)


@pytest.mark.parametrize("geom", WHOLE, ids=IDS)
def test_packed_qkv_penalty_matches_float64_reference(geom):
    _cpu_or_skip()
    h, d = 2, 3
    x64 = torch.randn(2, geom.N, 3 * h * d, dtype=torch.float64)
    bias64 = torch.randn(geom.bias_rows, h, dtype=torch.float64)

    def ref(x, b):
        q, k, v = x.reshape(2, geom.N, 3, h, d).permute(2, 0, 3, 1, 4)
        return attn_mod.attention_ref(q, k, v, geom, b, 0.6).transpose(1, 2).reshape(2, geom.N, h * d)

    def penalty(fn, x, b):
        x, b = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        out = fn(x, b)
        gx, gb = torch.autograd.grad(out.pow(2).sum(), (x, b), create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum() + gb.pow(2).sum(), (x, b))

    want = penalty(ref, x64, bias64)
    got = penalty(lambda x, b: _library.attention_qkv_fused(x, b, h, geom, 0.6, "cpu"),
                  x64.float(), bias64.float())
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max().item() <= 2e-5 * scale_of(b)


def test_whole_windows_skip_the_sparse_kernels_and_others_keep_them(monkeypatch):
    """Whole windows run dense per-window products (no sparse kernel needed); a shifted grid
    still needs the sparse kernels and says so."""
    monkeypatch.delitem(_dispatch.KERNELS["ref"], "sparse_qk")
    x = torch.randn(1, 2, 16, 4, dtype=torch.float64, requires_grad=True)
    for geom, ok in ((G.grid_geometry((4, 4), (2, 2)), True),
                     (G.grid_geometry((4, 4), (2, 2), (1, 1)), False)):
        out = _library.attention_fused(x, x, x, None, geom, 0.5, "ref")
        if ok:
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
            (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
            assert gg.isfinite().all() and gg.abs().sum() > 0
        else:
            with pytest.raises(_dispatch.BackendUnavailableError, match="sparse_qk"):
                torch.autograd.grad(out.sum(), x, create_graph=True)
