"""`torch.library` registration of the fused ops: custom ops, fake kernels and autograd.

Each custom op takes a `backend` string and calls that backend's kernel from `_dispatch.KERNELS`.
Kernels write into outputs allocated here, so allocation (and test poisoning) stays in Python.

Kernel contracts (every backend implements the same signatures):
- `attn_fwd(q, k, v, bias, geom, scale, out, lse)`: q/k/v/out are `(B, h, N, d)` views with
  `stride(-1) == 1` and arbitrary other strides (so the packed `qkv` layout needs no copy);
  `bias` is `None` or float32 contiguous `(rows, h)`; `lse` float32 `(B, h, N)` contiguous, the
  natural log-sum-exp of each row's scaled, biased logits. `geom` is an `AttnGeometry`.
- `attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias)`: dq/dk/dv arrive
  uninitialised (every element must be written); `dbias` is `None` or float32 `(rows, h)` zeros.
- resampling kernels: see each op below; `out` is contiguous and uninitialised.

Second order (docs/ops.md §3): a backward run without `create_graph` calls the fused backward kernel.
With `create_graph=True` (gradient penalties) the attention backward recomputes the forward from
the sparse-logit primitives of `_sparse.py` on the forward's backend (`qk` over each query's
neighbour slots, softmax in float32, `av`) and differentiates that with autograd; each primitive's
backward is made of the others, so gradients of every order stay on the fused kernels, with memory
linear in N * K (K = the keys one query sees), never the dense N x N reference. Grid geometries
whose unshifted windows tile the map (global attention included) take `_window_grad.py` instead:
there a query's slots are its window, so the primitives are dense per-window products, and the
second order is written out in closed form. A backend without the primitives raises
`BackendUnavailableError` (whole-window grids do not need them). Inputs passed in several slots (q is k) get each
slot's own gradient (`_grads_through`). Pixel norm's second order goes through its reference.

Two families of the same ops share one body each (`_attention_ops`, `_linear_pair`):
- `transgan_fast::attn_fwd`, ...: `custom_op`s that run the kernel of the `backend` they are given
  (`ref`, `cpu`, `cuda`); torch.compile treats them as opaque calls with fake kernels.
- `transgan_fast::triton_attn_fwd`, ...: the Triton backend, registered with
  `torch.library.triton_op`, whose kernels launch through `wrap_triton`, so torch.compile and
  AOTAutograd trace into the Triton kernels themselves (docs/ops.md §5). Under the Triton interpreter
  (`TRITON_INTERPRET=1`, CPU tests), which cannot be traced, they are opaque `custom_op`s whose fake
  kernel is the same body with launches skipped on fake tensors.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _dispatch, _window_grad
from .geometry import AttnGeometry

# Import backends so their kernels are registered.
_dispatch._load_backend_modules()


# Tests set this to fill every kernel output with NaN before the kernel runs (docs/ops.md §4), so an
# element a kernel forgets to write fails the comparison instead of passing by luck.
POISON_OUTPUTS = False


def _empty(shape, dtype, device) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _k(backend: str, op: str):
    return _dispatch.kernel(backend, op)


def _lastdim_contig(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _bias32(bias: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    # The table is tiny; kernels read it as float32 whatever the activations' dtype
    # (float64 stays float64, for gradcheck on the reference kernels).
    if bias is None:
        return None
    return bias.to(torch.float64 if like.dtype == torch.float64 else torch.float32).contiguous()


def _dbias_buffer(bias: Optional[Tensor], like: Tensor) -> Tensor:
    dt = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.zeros(bias.shape if bias is not None else (0,), dtype=dt, device=like.device)


def _triton_traced() -> bool:
    """Register the Triton family with `triton_op` (False under the interpreter; see above)."""
    return os.environ.get("TRITON_INTERPRET", "0") != "1"


def _register(name: str, body, fake, traced: bool):
    """Register `body` as the custom op `transgan_fast::<name>` (schema from its annotations).

    traced=True (Triton family): a `triton_op` whose fake kernel is the body itself, or, under the
    interpreter, an opaque custom op with the body as fake kernel (launches skip fake tensors).
    """
    qual = f"transgan_fast::{name}"
    if traced and _triton_traced():
        return torch.library.triton_op(qual, body, mutates_args=())
    op = torch.library.custom_op(qual, body, mutates_args=())
    op.register_fake(body if traced else fake)
    return op


# ==============================================================================================
# Attention: `fwd`/`bwd` on (B, h, N, d) tensors, `qkv_fwd`/`qkv_bwd` on the packed projection
# (B, N, 3*h*d) -> (B, N, h*d).

def _split_qkv(qkv: Tensor, heads: int):
    B, N, C3 = qkv.shape
    d = C3 // (3 * heads)
    return qkv.unflatten(2, (3, heads, d)).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)


def _attn_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], geom: List[int],
              scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    B, h, N, d = q.shape
    out = _empty((B, h, N, d), q.dtype, q.device)
    lse = _empty((B, h, N), torch.float32, q.device)
    _k(backend, "attn_fwd")(_lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v),
                            _bias32(bias, q), AttnGeometry.from_list(geom), scale, out, lse)
    return out, lse


def _attn_fwd_fake(q, k, v, bias, geom, scale, backend):
    B, h, N, d = q.shape
    return q.new_empty((B, h, N, d)), q.new_empty((B, h, N), dtype=torch.float32)


def _attn_bwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], out: Tensor, lse: Tensor,
              dout: Tensor, geom: List[int], scale: float,
              backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv = (_empty(q.shape, q.dtype, q.device) for _ in range(3))
    dbias = _dbias_buffer(bias, q)
    _k(backend, "attn_bwd")(_lastdim_contig(q), _lastdim_contig(k), _lastdim_contig(v), _bias32(bias, q),
                            out, lse, dout.contiguous(), AttnGeometry.from_list(geom), scale,
                            dq, dk, dv, dbias if bias is not None else None)
    return dq, dk, dv, dbias


def _attn_bwd_fake(q, k, v, bias, out, lse, dout, geom, scale, backend):
    nb = bias.shape if bias is not None else (0,)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(nb, dtype=dt))


def _attn_qkv_fwd(qkv: Tensor, bias: Optional[Tensor], heads: int, geom: List[int], scale: float,
                  backend: str) -> Tuple[Tensor, Tensor]:
    qkv = _lastdim_contig(qkv)
    B, N, C3 = qkv.shape
    d = C3 // (3 * heads)
    q, k, v = _split_qkv(qkv, heads)
    out = _empty((B, N, heads, d), qkv.dtype, qkv.device)
    lse = _empty((B, heads, N), torch.float32, qkv.device)
    _k(backend, "attn_fwd")(q, k, v, _bias32(bias, q), AttnGeometry.from_list(geom), scale,
                            out.transpose(1, 2), lse)
    return out.view(B, N, heads * d), lse


def _attn_qkv_fwd_fake(qkv, bias, heads, geom, scale, backend):
    B, N, C3 = qkv.shape
    return qkv.new_empty((B, N, C3 // 3)), qkv.new_empty((B, heads, N), dtype=torch.float32)


def _attn_qkv_bwd(qkv: Tensor, bias: Optional[Tensor], out: Tensor, lse: Tensor, dout: Tensor,
                  heads: int, geom: List[int], scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    qkv = _lastdim_contig(qkv)
    B, N, C3 = qkv.shape
    d = C3 // (3 * heads)
    q, k, v = _split_qkv(qkv, heads)
    dqkv = _empty((B, N, C3), qkv.dtype, qkv.device)
    dq, dk, dv = _split_qkv(dqkv, heads)
    dbias = _dbias_buffer(bias, qkv)
    as_heads = lambda t: t.reshape(B, N, heads, d).transpose(1, 2)  # noqa: E731  (B, h, N, d)
    _k(backend, "attn_bwd")(q, k, v, _bias32(bias, q), as_heads(out.contiguous()), lse,
                            as_heads(dout.contiguous()), AttnGeometry.from_list(geom), scale,
                            dq, dk, dv, dbias if bias is not None else None)
    return dqkv, dbias


def _attn_qkv_bwd_fake(qkv, bias, out, lse, dout, heads, geom, scale, backend):
    nb = bias.shape if bias is not None else (0,)
    dt = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    return qkv.new_empty(qkv.shape), qkv.new_empty(nb, dtype=dt)


def _double_backward_needed(*tensors) -> bool:
    """True inside a backward run with create_graph=True whose result must itself be
    differentiable; then the backward recomputes a differentiable forward and uses autograd."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _grads_through(fn, inputs, grad_out):
    """Gradients of `fn(*inputs)` w.r.t. each input slot (None where not needed), themselves
    differentiable. Every slot enters `fn` as its own alias, so a tensor passed in two slots
    (q is k) or computed from another input (k = v * 1) gets its slot's partial derivative only:
    autograd sums the slots, and differentiating w.r.t. the tensors themselves would count every
    slot (or path) once per slot."""
    slots = [t.view_as(t) if t is not None and t.requires_grad else t for t in inputs]
    out = fn(*slots)
    need = [t for t in slots if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, need, grad_out, create_graph=True, allow_unused=True)
               if need else ())
    res = []
    for t in slots:
        if t is not None and t.requires_grad:
            g = next(got)
            res.append(torch.zeros_like(t) if g is None else g)
        else:
            res.append(None)
    return res


def _sparse_attention(backend: str, op: str):
    """`(q, k, v, bias, geom, scale) -> out` through the sparse-logit primitives of `backend`."""
    from . import _sparse
    _sparse.require_sparse_kernels(backend, op)
    return _sparse.sparse_attention


def _attention_ops(prefix: str, traced: bool) -> SimpleNamespace:
    """Register the four attention ops `<prefix>attn_fwd`, ... with their autograd."""
    ops = SimpleNamespace(
        fwd=_register(prefix + "attn_fwd", _attn_fwd, _attn_fwd_fake, traced),
        bwd=_register(prefix + "attn_bwd", _attn_bwd, _attn_bwd_fake, traced),
        qkv_fwd=_register(prefix + "attn_qkv_fwd", _attn_qkv_fwd, _attn_qkv_fwd_fake, traced),
        qkv_bwd=_register(prefix + "attn_qkv_bwd", _attn_qkv_bwd, _attn_qkv_bwd_fake, traced))

    def setup(ctx, inputs, output):
        q, k, v, bias, geom, scale, backend = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.geom, ctx.scale, ctx.backend = geom, scale, backend
        ctx.mark_non_differentiable(lse)

    def backward(ctx, dout, _dlse):
        q, k, v, bias, out, lse = ctx.saved_tensors
        if _double_backward_needed(q, k, v, bias, dout):
            geom = AttnGeometry.from_list(ctx.geom)
            if _window_grad.whole_windows(geom):
                grads = _window_grad.attention_grads(q, k, v, bias, out, lse, dout, geom, ctx.scale)
                return (*grads, None, None, None)
            attn = _sparse_attention(ctx.backend, "attention")
            f = lambda q, k, v, bias: attn(q, k, v, bias, geom, ctx.scale, ctx.backend)  # noqa: E731
            return (*_grads_through(f, (q, k, v, bias), dout), None, None, None)
        dq, dk, dv, dbias = ops.bwd(q, k, v, bias, out, lse, dout, ctx.geom, ctx.scale, ctx.backend)
        return dq, dk, dv, (dbias.to(bias.dtype) if bias is not None else None), None, None, None

    def qkv_setup(ctx, inputs, output):
        qkv, bias, heads, geom, scale, backend = inputs
        out, lse = output
        ctx.save_for_backward(qkv, bias, out, lse)
        ctx.heads, ctx.geom, ctx.scale, ctx.backend = heads, geom, scale, backend
        ctx.mark_non_differentiable(lse)

    def qkv_backward(ctx, dout, _dlse):
        qkv, bias, out, lse = ctx.saved_tensors
        if _double_backward_needed(qkv, bias, dout):
            geom = AttnGeometry.from_list(ctx.geom)
            B, N, C3 = qkv.shape
            if _window_grad.whole_windows(geom):
                heads_view = lambda t: t.reshape(B, N, ctx.heads, -1).transpose(1, 2)  # noqa: E731
                dq, dk, dv, dbias = _window_grad.attention_grads(
                    *_split_qkv(qkv, ctx.heads), bias, heads_view(out), lse, heads_view(dout),
                    geom, ctx.scale)
                dqkv = torch.stack([t.transpose(1, 2) for t in (dq, dk, dv)], 2)  # (B, N, 3, h, d)
                return dqkv.reshape(B, N, C3), dbias, None, None, None, None
            attn = _sparse_attention(ctx.backend, "attention_qkv")

            def f(qkv, bias):
                o = attn(*_split_qkv(qkv, ctx.heads), bias, geom, ctx.scale, ctx.backend)
                return o.transpose(1, 2).reshape(B, N, C3 // 3)             # (B, N, h*d)
            return (*_grads_through(f, (qkv, bias), dout), None, None, None, None)
        dqkv, dbias = ops.qkv_bwd(qkv, bias, out, lse, dout, ctx.heads, ctx.geom, ctx.scale,
                                  ctx.backend)
        return dqkv, (dbias.to(bias.dtype) if bias is not None else None), None, None, None, None

    ops.fwd.register_autograd(backward, setup_context=setup)
    ops.qkv_fwd.register_autograd(qkv_backward, setup_context=qkv_setup)
    return ops


def _triton_available() -> bool:
    return _dispatch._triton_status()[0]


def _declare_triton_kernels(ops: SimpleNamespace) -> None:
    """Tell torch which Triton kernels each `triton_op` launches. torch finds them by reading the
    op's source for `wrap_triton(kernel)` calls, which misses kernels launched through the backend
    table; AOTAutograd's cache hashes their source, so an edited kernel must not hit a stale entry."""
    if not _triton_traced():
        return
    from torch._library import triton as tl_lib
    from ._triton import kernels
    table = getattr(tl_lib, "triton_ops_to_kernels", None)
    if table is None:
        return
    for op in vars(ops).values():
        table[op._qualname] = kernels.ALL_KERNELS


_ATTN = _attention_ops("", traced=False)
_TRITON_ATTN = _attention_ops("triton_", traced=True) if _triton_available() else None
attn_fwd, attn_bwd, attn_qkv_fwd, attn_qkv_bwd = _ATTN.fwd, _ATTN.bwd, _ATTN.qkv_fwd, _ATTN.qkv_bwd


def _attn_family(backend: str) -> SimpleNamespace:
    return _TRITON_ATTN if backend == "triton" else _ATTN


def attention_fused(q, k, v, bias, geom: AttnGeometry, scale: float, backend: str):
    return _attn_family(backend).fwd(q, k, v, bias, geom.as_list(), scale, backend)[0]


def attention_qkv_fused(qkv, bias, heads: int, geom: AttnGeometry, scale: float, backend: str):
    return _attn_family(backend).qkv_fwd(qkv, bias, heads, geom.as_list(), scale, backend)[0]


# ==============================================================================================
# Linear resampling ops: each op's backward is its adjoint op (and vice versa).

def _linear_pair(name: str, adj_name: str, fwd_shape, adj_shape, prefix: str = "",
                 traced: bool = False):
    """Register `<prefix><name>` and its adjoint `<prefix><adj_name>` as custom ops
    `(x, H, W, backend)` running the backend kernels `name` / `adj_name`; H, W are the low-resolution
    map for shuffle/bicubic pairs and the high-resolution one for pooling."""

    def fwd_body(x: Tensor, H: int, W: int, backend: str) -> Tensor:
        out = _empty(fwd_shape(x.shape, H, W), x.dtype, x.device)
        _k(backend, name)(x.contiguous(), H, W, out)
        return out

    def adj_body(g: Tensor, H: int, W: int, backend: str) -> Tensor:
        out = _empty(adj_shape(g.shape, H, W), g.dtype, g.device)
        _k(backend, adj_name)(g.contiguous(), H, W, out)
        return out

    fwd = _register(prefix + name, fwd_body,
                    lambda x, H, W, backend: x.new_empty(fwd_shape(x.shape, H, W)), traced)
    adj = _register(prefix + adj_name, adj_body,
                    lambda g, H, W, backend: g.new_empty(adj_shape(g.shape, H, W)), traced)

    def setup(ctx, inputs, output):
        ctx.H, ctx.W, ctx.backend = inputs[1], inputs[2], inputs[3]

    fwd.register_autograd(lambda ctx, g: (adj(g, ctx.H, ctx.W, ctx.backend), None, None, None),
                          setup_context=setup)
    adj.register_autograd(lambda ctx, g: (fwd(g, ctx.H, ctx.W, ctx.backend), None, None, None),
                          setup_context=setup)
    return fwd, adj


def _shuffle_shape(s, H, W):  # (B, HW, C) -> (B, 4HW, C/4); H, W = low-res map
    return (s[0], 4 * s[1], s[2] // 4)


def _unshuffle_shape(s, H, W):
    return (s[0], s[1] // 4, 4 * s[2])


# bicubic: (B, HW, C) -> (B, 4HW, C); H, W = low-res map.
_bic, _bic_adj = _linear_pair("bicubic_upsample_seq", "bicubic_upsample_seq_adjoint",
                              lambda s, H, W: (s[0], 4 * s[1], s[2]),
                              lambda s, H, W: (s[0], s[1] // 4, s[2]))
# avg pool: (B, HW, C) -> (B, HW/4, C); H, W = high-res map.
_pool, _pool_adj = _linear_pair("avg_pool_seq", "avg_pool_seq_adjoint",
                                lambda s, H, W: (s[0], s[1] // 4, s[2]),
                                lambda s, H, W: (s[0], 4 * s[1], s[2]))


def _shuffle_ops(prefix: str, traced: bool) -> SimpleNamespace:
    """Pixel shuffle, its adjoint, and shuffle + position-embedding add."""
    ps, pu = _linear_pair("pixel_shuffle_seq", "pixel_unshuffle_seq", _shuffle_shape,
                          _unshuffle_shape, prefix, traced)

    def pos_body(x: Tensor, H: int, W: int, pos: Tensor, backend: str) -> Tensor:
        B, N, C = x.shape
        out = _empty((B, 4 * N, C // 4), x.dtype, x.device)
        _k(backend, "pixel_shuffle_seq")(x.contiguous(), H, W, pos.contiguous(), out)
        return out

    ps_pos = _register(prefix + "pixel_shuffle_seq_pos", pos_body,
                       lambda x, H, W, pos, backend: x.new_empty(_shuffle_shape(x.shape, H, W)),
                       traced)

    def setup(ctx, inputs, output):
        ctx.H, ctx.W, ctx.backend = inputs[1], inputs[2], inputs[4]
        ctx.pos_batch = inputs[3].shape[0]

    def backward(ctx, g):
        gpos = g.sum(0, keepdim=True) if ctx.pos_batch == 1 else g
        return pu(g, ctx.H, ctx.W, ctx.backend), None, None, gpos, None

    ps_pos.register_autograd(backward, setup_context=setup)
    return SimpleNamespace(ps=ps, pu=pu, ps_pos=ps_pos)


_SHUFFLE = _shuffle_ops("", traced=False)
_TRITON_SHUFFLE = _shuffle_ops("triton_", traced=True) if _triton_available() else None
if _triton_available():
    _declare_triton_kernels(_TRITON_ATTN)
    _declare_triton_kernels(_TRITON_SHUFFLE)
_ps, _pu, _ps_pos = _SHUFFLE.ps, _SHUFFLE.pu, _SHUFFLE.ps_pos


def _shuffle_family(backend: str) -> SimpleNamespace:
    return _TRITON_SHUFFLE if backend == "triton" else _SHUFFLE


def pixel_shuffle_seq_op(x, H, W, pos, backend):
    ops = _shuffle_family(backend)
    return ops.ps(x, H, W, backend) if pos is None else ops.ps_pos(x, H, W, pos, backend)


def pixel_unshuffle_seq_op(x, H, W, backend):
    return _shuffle_family(backend).pu(x, H, W, backend)


def bicubic_upsample_seq_op(x, H, W, backend):
    return _bic(x, H, W, backend)


def avg_pool_seq_op(x, H, W, backend):
    return _pool(x, H, W, backend)


# ==============================================================================================
# Pixel norm (non-linear): fused backward; second order through the reference.

@torch.library.custom_op("transgan_fast::pixel_norm", mutates_args=())
def _pixel_norm(x: Tensor, backend: str) -> Tensor:
    out = _empty(x.shape, x.dtype, x.device)
    _k(backend, "pixel_norm")(x.contiguous(), out)
    return out


@torch.library.custom_op("transgan_fast::pixel_norm_backward", mutates_args=())
def _pixel_norm_bwd(x: Tensor, g: Tensor, backend: str) -> Tensor:
    out = _empty(x.shape, x.dtype, x.device)
    _k(backend, "pixel_norm_backward")(x.contiguous(), g.contiguous(), out)
    return out


_pixel_norm.register_fake(lambda x, backend: x.new_empty(x.shape))
_pixel_norm_bwd.register_fake(lambda x, g, backend: x.new_empty(x.shape))


def _pn_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.backend = inputs[1]


def _pn_backward(ctx, g):
    (x,) = ctx.saved_tensors
    if _double_backward_needed(x, g):
        from .resample import pixel_norm_ref
        return _grads_through(pixel_norm_ref, (x,), g)[0], None
    return _pixel_norm_bwd(x, g, ctx.backend), None


_pixel_norm.register_autograd(_pn_backward, setup_context=_pn_setup)


def pixel_norm_op(x, backend):
    return _pixel_norm(x, backend)
