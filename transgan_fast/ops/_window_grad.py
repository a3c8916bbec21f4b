"""The create_graph backward of whole-window grid attention (global attention included).

For a grid geometry without shift whose windows tile the map, the K neighbour slots of a query
(`neighbours.py`) are exactly the tokens of its window, every one visible: the sparse-logit
primitives are then batched dense products on the partitioned windows, `(B*h*windows, L, d)`
with `L = M1*M2`. `attention_grads` returns the first-order gradients `(dq, dk, dv, dbias)` as
one autograd function whose own backward (the second order, what a gradient penalty runs) is the
closed form below, with the softmax derivative and every elementwise term fused into a few
in-place passes over the `(L, L)` blocks. A third or higher order differentiates the plain
window attention of `window_attention` with autograd, so every order stays exact.

Per window, with ``S = scale Q K^T + bias`` (``P = softmax(S)`` from the forward's log-sum-exp),
``O = P V`` and ``dO`` the incoming gradient, the first order is::

    E = dO V^T - rowsum(dO * O)     dS = P * E
    dV = P^T dO    dQ = scale dS K    dK = scale dS^T Q    dbias = sum of dS per table row

and its vector-Jacobian product with ``(gQ, gK, gV, gB)`` (derived term by term in `backward`).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .geometry import GRID, AttnGeometry

__all__ = ["whole_windows", "window_attention", "attention_grads"]


def whole_windows(geom: AttnGeometry) -> bool:
    """True for a grid geometry without shift whose windows tile the map exactly."""
    if geom.kind != GRID:
        return False
    M1, M2, s1, s2 = geom.p
    return s1 == 0 and s2 == 0 and geom.H % M1 == 0 and geom.W % M2 == 0


def _part(t: Tensor, geom: AttnGeometry) -> Tensor:
    """`(B, h, N, c)` -> `(B*h*windows, L, c)`, windows row-major, tokens row-major in each."""
    B, h, N, c = t.shape
    M1, M2 = geom.p[0], geom.p[1]
    nH, nW = geom.H // M1, geom.W // M2
    t = t.reshape(B, h, nH, M1, nW, M2, c).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(B * h * nH * nW, M1 * M2, c)


def _unpart(t: Tensor, geom: AttnGeometry, B: int, h: int) -> Tensor:
    M1, M2 = geom.p[0], geom.p[1]
    nH, nW = geom.H // M1, geom.W // M2
    t = t.reshape(B, h, nH, nW, M1, M2, t.shape[-1]).permute(0, 1, 2, 4, 3, 5, 6)
    return t.reshape(B, h, geom.N, -1)


@functools.lru_cache(maxsize=64)
def _table_index(M1: int, M2: int, device: torch.device) -> Tensor:
    """`(L, L)` long: the relative-bias table row of (query, key) in one window (query minus key)."""
    cy = torch.arange(M1, device=device).repeat_interleave(M2)
    cx = torch.arange(M2, device=device).repeat(M1)
    return (cy[:, None] - cy[None, :] + M1 - 1) * (2 * M2 - 1) + (cx[:, None] - cx[None, :] + M2 - 1)


def _bias_blocks(bias: Tensor, geom: AttnGeometry, dtype) -> Tensor:
    """`(1, h, 1, L, L)`: the table gathered per (query, key) of a window."""
    idx = _table_index(geom.p[0], geom.p[1], bias.device)
    return bias[idx].permute(2, 0, 1).to(dtype)[None, :, None]


def _bias_grad(ds: Tensor, bias: Tensor, geom: AttnGeometry, B: int, h: int) -> Tensor:
    """Sum of `ds (B*h*windows, L, L)` over batch and windows, scattered to the table's rows."""
    L = ds.shape[-1]
    per_head = ds.view(B, h, -1, L, L).sum((0, 2)).reshape(h, L * L)    # (h, L*L)
    idx = _table_index(geom.p[0], geom.p[1], ds.device).reshape(-1)
    return torch.zeros(bias.shape, dtype=ds.dtype, device=ds.device).index_add_(0, idx, per_head.T)


def _acc(t: Tensor):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], geom: AttnGeometry,
                     scale: float) -> Tensor:
    """Whole-window grid attention in plain torch ops (autograd of any order); `(B, h, N, d)`."""
    B, h = q.shape[:2]
    acc = _acc(q)
    qw, kw, vw = (_part(t, geom).to(acc) for t in (q, k, v))
    s = torch.bmm(qw * scale, kw.transpose(1, 2))                         # (G, L, L)
    if bias is not None:
        L = s.shape[-1]
        s = (s.view(B, h, -1, L, L) + _bias_blocks(bias, geom, acc)).view(s.shape)
    return _unpart(torch.bmm(torch.softmax(s, -1), vw), geom, B, h).to(v.dtype)


def _zeros_or_part(g: Optional[Tensor], like: Tensor, geom: AttnGeometry) -> Tensor:
    return torch.zeros_like(like) if g is None else _part(g, geom).to(like.dtype)


def _without_autocast(fn):
    """Runs `fn(ctx, first, ...)` with autocast off on `first`'s device: the closed form casts
    to its own accumulation dtype, and autocast would turn its float32 products into bf16/fp16
    ones mid-formula (the fused ops' autocast rule has already cast the inputs)."""
    @functools.wraps(fn)
    def wrapped(ctx, first, *rest):
        with torch.autocast(first.device.type, enabled=False):
            return fn(ctx, first, *rest)
    return wrapped


class _AttentionGrads(torch.autograd.Function):
    """`(q, k, v, bias, dout; out, lse) -> (dq, dk, dv, dbias)`; out and lse are the forward's
    saved results (constants here: the closed form differentiates through O = P V itself)."""

    @staticmethod
    @_without_autocast
    def forward(ctx, q, k, v, bias, dout, out, lse, geom, scale):
        B, h = q.shape[:2]
        acc = _acc(q)
        qw, kw, vw, dow, ow = (_part(t, geom).to(acc) for t in (q, k, v, dout, out))
        s = torch.bmm(qw, kw.transpose(1, 2)).mul_(scale)                 # (G, L, L)
        L = s.shape[-1]
        if bias is not None:
            s.view(B, h, -1, L, L).add_(_bias_blocks(bias, geom, acc))
        if acc == torch.float32:  # the fused forward's float32 log-sum-exp
            p = s.sub_(_part(lse.unsqueeze(-1), geom)).exp_()
        else:
            p = s.sub_(torch.logsumexp(s, -1, keepdim=True)).exp_()
        e = torch.bmm(dow, vw.transpose(1, 2)).sub_((dow * ow).sum(-1, keepdim=True))
        ds = p * e
        dq = torch.bmm(ds, kw).mul_(scale)
        dk = torch.bmm(ds.transpose(1, 2), qw).mul_(scale)
        dv = torch.bmm(p.transpose(1, 2), dow)
        dbias = _bias_grad(ds, bias, geom, B, h).to(bias.dtype) if bias is not None else None
        ctx.save_for_backward(q, k, v, bias, dout)
        ctx.geom, ctx.scale = geom, scale
        ctx.win = (qw, kw, vw, dow, ow, p, e, ds)
        return (_unpart(dq, geom, B, h).to(q.dtype), _unpart(dk, geom, B, h).to(k.dtype),
                _unpart(dv, geom, B, h).to(v.dtype), dbias)

    @staticmethod
    def backward(ctx, gq, gk, gv, gb):
        q = ctx.saved_tensors[0]
        with torch.autocast(q.device.type, enabled=False):
            return _AttentionGrads._backward(ctx, gq, gk, gv, gb)

    @staticmethod
    def _backward(ctx, gq, gk, gv, gb):
        q, k, v, bias, dout = ctx.saved_tensors
        geom, scale = ctx.geom, ctx.scale
        if torch.is_grad_enabled():  # create_graph again: third order and above
            grads = _generic_vjp(q, k, v, bias, dout, (gq, gk, gv, gb), geom, scale)
            return (*grads, None, None, None, None)
        qw, kw, vw, dow, ow, p, e, ds = ctx.win  # read only: a retained graph may run this again
        B, h = q.shape[:2]
        L = p.shape[-1]
        gqw, gkw, gvw = (_zeros_or_part(g, qw, geom) for g in (gq, gk, gv))
        # d<gQ, dQ> + d<gK, dK> + d<gB, dbias> by dS: scale (gQ K^T + Q gK^T) + gB per slot.
        gds = torch.bmm(torch.cat([gqw * scale, qw * scale], -1),
                        torch.cat([kw, gkw], -1).transpose(1, 2))
        if gb is not None and bias is not None:
            gds.view(B, h, -1, L, L).add_(_bias_blocks(gb, geom, gds.dtype))
        gp = gds * e                                                      # dS = P * E, by P
        ge = gds.mul_(p)                                                  # ... by E (in place)
        gdelta = ge.sum(-1, keepdim=True).neg_()                          # E = dP - delta
        go = gdelta * dow                                                 # delta = rowsum(dO * O)
        # By P: dV = P^T dO gives dO gV^T; O = P V (through delta) gives gO V^T.
        gp.baddbmm_(torch.cat([dow, go], -1), torch.cat([gvw, vw], -1).transpose(1, 2))
        gdo = torch.bmm(p, gvw).baddbmm_(ge, vw).add_(gdelta * ow)        # dV, dP, delta
        gvt = torch.bmm(ge.transpose(1, 2), dow).baddbmm_(p.transpose(1, 2), go)
        gs = gp.sub_((gp * p).sum(-1, keepdim=True)).mul_(p)              # softmax derivative
        gqt = torch.bmm(gs, kw).baddbmm_(ds, gkw).mul_(scale)             # S and dK by Q
        gkt = torch.bmm(gs.transpose(1, 2), qw).baddbmm_(ds.transpose(1, 2), gqw).mul_(scale)
        gbias = (_bias_grad(gs, bias, geom, B, h).to(bias.dtype)
                 if bias is not None and ctx.needs_input_grad[3] else None)
        back = lambda t, like: _unpart(t, geom, B, h).to(like.dtype)      # noqa: E731
        return (back(gqt, q), back(gkt, k), back(gvt, v), gbias, back(gdo, dout),
                None, None, None, None)


def _generic_vjp(q, k, v, bias, dout, cots, geom, scale):
    """The vector-Jacobian product of the first order with `cots`, differentiable again (autograd
    through `window_attention`). Each input enters as its own alias, so a tensor passed in two
    slots gets each slot's partial derivative (autograd sums them)."""
    with torch.enable_grad():
        slots = [None if t is None else (t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True))
                 for t in (q, k, v, bias, dout)]
        sq, sk, sv, sb, sd = slots
        out = window_attention(sq, sk, sv, sb, geom, scale)
        wrt = [t for t in (sq, sk, sv, sb) if t is not None]
        first = torch.autograd.grad(out, wrt, sd, create_graph=True)
        pairs = [(f, g) for f, g in zip(first, cots) if g is not None]
        live = [t for t in slots if t is not None]
        got = iter(torch.autograd.grad([f for f, _ in pairs], live, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True) if pairs else
                   [None] * len(live))
    res = []
    for t in slots:
        g = next(got) if t is not None else None
        res.append(torch.zeros_like(t) if t is not None and g is None else g)
    return res


def attention_grads(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], out: Tensor,
                    lse: Tensor, dout: Tensor, geom: AttnGeometry, scale: float):
    """`(dq, dk, dv, dbias)` of whole-window attention for the incoming gradient `dout`,
    differentiable to any order (see the module docstring); `out`/`lse` from the fused forward."""
    return _AttentionGrads.apply(q, k, v, bias, dout, out.detach(), lse.detach(), geom, scale)
