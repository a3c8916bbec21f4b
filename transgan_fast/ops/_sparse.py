"""Sparse-logit primitives as custom ops: the second-order path of attention.

Attention split at the logits into three linear primitives over each query's K neighbour slots
(`neighbours.py` fixes the slot layout and holds their plain-PyTorch references):

- `transgan_fast::sparse_qk(a, b)  -> (B, h, N, K)`: ``out[i, s] = a_i . b_key(i,s)``
- `transgan_fast::sparse_av(p, v)  -> (B, h, N, d)`: ``out[i] = sum_s p[i, s] v_key(i,s)``
- `transgan_fast::sparse_avt(p, x) -> (B, h, N, d)`: ``out[m] = sum_{key(i,s)=m} p[i, s] x_i``

Each op's registered backward calls the other ops on the same backend, so gradients of every
order stay on the fused kernels, with memory linear in N*K. `sparse_attention` composes them with
an ordinary (float32 or float64) softmax; `_library.py` differentiates through it when a backward
runs with `create_graph=True`.

Kernel contract (every backend registers these names with `_dispatch.register_kernel`; `geom` is
an `AttnGeometry`; `out` arrives uninitialised and every element must be written):

- `sparse_qk(a, b, geom, out)`: a, b `(B, h, N, d)` with `stride(-1) == 1` (other strides
  arbitrary); out `(B, h, N, K)` contiguous, a's dtype; accumulate in float32; 0 at empty slots.
- `sparse_av(p, v, geom, out)`: p `(B, h, N, K)` contiguous; v `(B, h, N, d)` with
  `stride(-1) == 1`; out `(B, h, N, d)` contiguous.
- `sparse_avt(p, x, geom, out)`: shapes as `sparse_av`; every row of out is written (zeros where
  no slot points at it); deterministic: no float atomics (iterate each key's inverse
  neighbourhood, or each (b, h) serially).

A NaN or Inf in an input reaches exactly the outputs that read it: empty slots read nothing.
"""
from __future__ import annotations

import functools
from typing import List, Optional

import torch
from torch import Tensor

from . import _dispatch
from ._library import _empty, _k, _lastdim_contig
from .geometry import AttnGeometry
from .neighbours import cached_neighbour_index, num_slots

__all__ = ["sparse_qk", "sparse_av", "sparse_avt", "sparse_attention", "require_sparse_kernels"]


def _qk_body(a: Tensor, b: Tensor, geom: List[int], backend: str) -> Tensor:
    g = AttnGeometry.from_list(geom)
    B, h, N, _ = a.shape
    out = _empty((B, h, N, num_slots(g)), a.dtype, a.device)
    _k(backend, "sparse_qk")(_lastdim_contig(a), _lastdim_contig(b), g, out)
    return out


def _av_body(p: Tensor, v: Tensor, geom: List[int], backend: str) -> Tensor:
    out = _empty(v.shape, v.dtype, v.device)
    _k(backend, "sparse_av")(p.contiguous(), _lastdim_contig(v), AttnGeometry.from_list(geom), out)
    return out


def _avt_body(p: Tensor, x: Tensor, geom: List[int], backend: str) -> Tensor:
    out = _empty(x.shape, x.dtype, x.device)
    _k(backend, "sparse_avt")(p.contiguous(), _lastdim_contig(x), AttnGeometry.from_list(geom), out)
    return out


_qk = torch.library.custom_op("transgan_fast::sparse_qk", _qk_body, mutates_args=())
_av = torch.library.custom_op("transgan_fast::sparse_av", _av_body, mutates_args=())
_avt = torch.library.custom_op("transgan_fast::sparse_avt", _avt_body, mutates_args=())


@_qk.register_fake
def _(a, b, geom, backend):
    B, h, N, _ = a.shape
    return a.new_empty((B, h, N, num_slots(AttnGeometry.from_list(geom))))


_av.register_fake(lambda p, v, geom, backend: v.new_empty(v.shape))
_avt.register_fake(lambda p, x, geom, backend: x.new_empty(x.shape))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.geom, ctx.backend = inputs[2], inputs[3]


# The derivatives close over the set (neighbours.py): d qk/da = av(g, b), d qk/db = avt(g, a);
# d av/dp = qk(g, v), d av/dv = avt(p, g); d avt/dp = qk(x, g), d avt/dx = av(p, g).
def _qk_backward(ctx, g):
    a, b = ctx.saved_tensors
    da = _av(g, b, ctx.geom, ctx.backend) if ctx.needs_input_grad[0] else None
    db = _avt(g, a, ctx.geom, ctx.backend) if ctx.needs_input_grad[1] else None
    return da, db, None, None


def _av_backward(ctx, g):
    p, v = ctx.saved_tensors
    dp = _qk(g, v, ctx.geom, ctx.backend) if ctx.needs_input_grad[0] else None
    dv = _avt(p, g, ctx.geom, ctx.backend) if ctx.needs_input_grad[1] else None
    return dp, dv, None, None


def _avt_backward(ctx, g):
    p, x = ctx.saved_tensors
    dp = _qk(x, g, ctx.geom, ctx.backend) if ctx.needs_input_grad[0] else None
    dx = _av(p, g, ctx.geom, ctx.backend) if ctx.needs_input_grad[1] else None
    return dp, dx, None, None


_qk.register_autograd(_qk_backward, setup_context=_setup)
_av.register_autograd(_av_backward, setup_context=_setup)
_avt.register_autograd(_avt_backward, setup_context=_setup)


def require_sparse_kernels(backend: str, op: str) -> None:
    """Raise `BackendUnavailableError` if `backend` lacks a sparse primitive (no silent fallback)."""
    missing = [k for k in _dispatch.SPARSE_KERNELS if k not in _dispatch.KERNELS[backend]]
    if missing:
        raise _dispatch.BackendUnavailableError(
            f"{op}: gradients with create_graph=True run on the sparse-logit kernels of the "
            f"forward's backend {backend!r}, which has none for {', '.join(missing)}; use a "
            f"backend that has them (see transgan_fast.backends()) or backend='ref'")


# ----------------------------------------------------------------------------------------------
# Public entry points (checked and dispatched like the other ops).

def _check(op: str, geom: AttnGeometry, p: Optional[Tensor], *xs: Tensor) -> None:
    if not isinstance(geom, AttnGeometry):
        raise TypeError(f"{op}: geom must be an AttnGeometry; got {type(geom).__name__}")
    for name, t in zip("abc", xs):
        if t.dim() != 4 or t.shape[2] != geom.N:
            raise ValueError(f"{op}: operand {name} must be (B, heads, N={geom.N}, d); got {tuple(t.shape)}")
        if t.shape != xs[0].shape or t.dtype != xs[0].dtype:
            raise ValueError(f"{op}: operands must share shape and dtype; got {tuple(xs[0].shape)} "
                             f"{xs[0].dtype} and {tuple(t.shape)} {t.dtype}")
    if p is not None:
        want = (*xs[0].shape[:3], num_slots(geom))
        if tuple(p.shape) != want or p.dtype != xs[0].dtype:
            raise ValueError(f"{op}: p must be {want} of dtype {xs[0].dtype} (K = num_slots(geom)); "
                             f"got {tuple(p.shape)} {p.dtype}")


def sparse_qk(a: Tensor, b: Tensor, geom: AttnGeometry, backend: str = "auto") -> Tensor:
    """`(B, h, N, K)`: ``a_i . b_key(i,s)`` over the neighbour slots of `geom`, 0 at empty slots."""
    _check("sparse_qk", geom, None, a, b)
    be = _dispatch.resolve("sparse_qk", backend, [("a", a), ("b", b)])
    return _qk(a, b, geom.as_list(), be)


def sparse_av(p: Tensor, v: Tensor, geom: AttnGeometry, backend: str = "auto") -> Tensor:
    """`(B, h, N, d)`: ``sum_s p[i, s] v_key(i,s)`` (weights x values over the neighbour slots)."""
    _check("sparse_av", geom, p, v)
    be = _dispatch.resolve("sparse_av", backend, [("p", p), ("v", v)])
    return _av(p, v, geom.as_list(), be)


def sparse_avt(p: Tensor, x: Tensor, geom: AttnGeometry, backend: str = "auto") -> Tensor:
    """`(B, h, N, d)`: row m is ``sum p[i, s] x_i`` over the slots whose key is m (the transpose)."""
    _check("sparse_avt", geom, p, x)
    be = _dispatch.resolve("sparse_avt", backend, [("p", p), ("x", x)])
    return _avt(p, x, geom.as_list(), be)


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], geom: AttnGeometry,
                     scale: float, backend: str) -> Tensor:
    """Attention made of the primitives, differentiable to any order on `backend`'s kernels.

    Logits ``qk(scale * q, k)`` plus one `(h, N, K)` term (the relative bias gathered per slot,
    -inf at empty slots), softmax in float32 (float64 for float64 inputs), ``av(P, v)``. Memory
    O(B h N K); the scale and the bias touch the small tensors, so the `(B, h, N, K)` logits see
    one add, the softmax and the two primitives.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    gl = geom.as_list()
    s = _qk(q * scale, k, gl, backend).to(acc)                             # (B, h, N, K)
    term = _empty_slots(geom, q.device, acc)                               # (N, K): 0 or -inf
    if bias is not None:
        _, rows = cached_neighbour_index(geom, q.device)
        term = bias[rows].permute(2, 0, 1).to(acc) + term                  # (h, N, K)
    p = torch.softmax(s + term, dim=-1)
    return _av(p.to(v.dtype), v, gl, backend)


@functools.lru_cache(maxsize=64)
def _empty_slots(geom: AttnGeometry, device: torch.device, dtype: torch.dtype) -> Tensor:
    keys, _ = cached_neighbour_index(geom, device)
    return torch.zeros(keys.shape, dtype=dtype, device=device).masked_fill(keys < 0, float("-inf"))
