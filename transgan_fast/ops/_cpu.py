"""The `cpu` backend: thin wrappers that pass pointers, shapes and strides to `_C_cpu`.

The compiled module does no validation; everything is checked in Python before a launch
(contiguity of the innermost dim, dtypes, shapes). Every kernel exists for float32, bfloat16 and
float16 tensors (`<kernel>_f32`, `_bf16`, `_f16`), computing in float32 (docs/ops.md §4); the
softmax statistics (`lse`), the bias table and its gradient are float32 whatever the activations
are. Kernels not compiled into the module are simply not registered, so `backends()` lists exactly
what exists.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._dispatch import register_kernel

_C = _ext.cpu_module


def _ptr(t):
    return 0 if t is None else t.data_ptr()


# Suffix of the compiled kernel for each storage dtype.
_SUFFIX = {torch.float32: "_f32", torch.bfloat16: "_bf16", torch.float16: "_f16"}


def _fn(name, op, *ts):
    """The compiled kernel `name` for the dtype of `ts` (one dtype for all, one the table knows)."""
    dts = {t.dtype for t in ts if t is not None}
    if len(dts) != 1 or next(iter(dts)) not in _SUFFIX:
        names = ", ".join(str(d).replace("torch.", "") for d in _SUFFIX)
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in dts))
        raise TypeError(f"cpu {op}: expects tensors of one dtype among {names}; got {got}")
    return getattr(_C, name + _SUFFIX[next(iter(dts))])


if _C is not None:

    @register_kernel("cpu", "pixel_shuffle_seq")
    def pixel_shuffle_seq(x, H, W, *rest):
        pos, out = rest if len(rest) == 2 else (None, rest[0])
        B, N, C = x.shape
        pos_bstride = 0 if pos is None or pos.shape[0] == 1 else pos.stride(0)
        _fn("pixel_shuffle_seq", "pixel_shuffle_seq", x, pos, out)(
            _ptr(x), _ptr(pos), _ptr(out), B, H, W, C, x.stride(0), x.stride(1), pos_bstride,
            torch.get_num_threads())

    @register_kernel("cpu", "pixel_unshuffle_seq")
    def pixel_unshuffle_seq(x, H, W, out):
        B, N, C = x.shape  # x is the high-res (2H x 2W) map with C channels
        _fn("pixel_unshuffle_seq", "pixel_unshuffle_seq", x, out)(
            _ptr(x), _ptr(out), B, H, W, 4 * C, x.stride(0), x.stride(1), torch.get_num_threads())

    def _view(t):
        """[data_ptr, stride(0), stride(1), stride(2)] of a (B, h, N, d) view with stride(-1) == 1."""
        if t.stride(-1) != 1:
            raise ValueError(f"cpu attention: innermost dim must be contiguous; got strides {t.stride()}")
        return [t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)]

    def _check_f32(name, *ts):
        for t in ts:
            if t is not None and t.dtype != torch.float32:
                raise TypeError(f"cpu {name}: expects float32 statistics and bias tensors; got {t.dtype}")

    @register_kernel("cpu", "attn_fwd")
    def attn_fwd(q, k, v, bias, geom, scale, out, lse):
        fn = _fn("attn_fwd", "attn_fwd", q, k, v, out)
        _check_f32("attn_fwd", bias, lse)
        if q.numel() == 0:
            return  # nothing to compute; empty views have no meaningful strides
        B, h, N, d = q.shape
        fn(_view(q), _view(k), _view(v), _view(out), lse.data_ptr(), _ptr(bias),
           0 if bias is None else bias.shape[0], B, h, N, d, geom.as_list(), float(scale),
           torch.get_num_threads())

    @register_kernel("cpu", "attn_bwd")
    def attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias):
        fn = _fn("attn_bwd", "attn_bwd", q, k, v, out, dout, dq, dk, dv)
        _check_f32("attn_bwd", bias, lse, dbias)
        if q.numel() == 0:
            return  # empty gradients; dbias stays zero
        B, h, N, d = q.shape
        fn(_view(q), _view(k), _view(v), _view(out), _view(dout), _view(dq), _view(dk), _view(dv),
           lse.data_ptr(), _ptr(bias), _ptr(dbias), 0 if bias is None else bias.shape[0], B, h, N,
           d, geom.as_list(), float(scale), torch.get_num_threads())

    # Sparse-logit primitives (contract in `_sparse.py`): x/y views, p the contiguous slots.
    def _sparse_call(kern, name, x, y, out, p, geom):
        fn = _fn(kern, name, x, y, out, p)
        if not p.is_contiguous():
            raise ValueError(f"cpu {name}: the (B, h, N, K) slot tensor must be contiguous; "
                             f"got strides {p.stride()}")
        B, h, N, d = x.shape
        fn([] if x is None else _view(x), [] if y is None else _view(y),
           [] if out is None else _view(out), p.data_ptr(), B, h, N, d, geom.as_list(),
           torch.get_num_threads())

    @register_kernel("cpu", "sparse_qk")
    def sparse_qk(a, b, geom, out):
        _sparse_call("sparse_qk", "sparse_qk", a, b, None, out, geom)

    @register_kernel("cpu", "sparse_av")
    def sparse_av(p, v, geom, out):
        _sparse_call("sparse_av", "sparse_av", v, None, out, p, geom)

    @register_kernel("cpu", "sparse_avt")
    def sparse_avt(p, x, geom, out):
        _sparse_call("sparse_avt", "sparse_avt", x, None, out, p, geom)

    def _map_kernel(op):
        """Register a resampling kernel `(x, H, W, out)` over contiguous (B, N, C) maps."""
        @register_kernel("cpu", op)
        def kernel(x, H, W, out):
            _fn(op, op, x, out)(x.data_ptr(), out.data_ptr(), x.shape[0], H, W, x.shape[2],
                                torch.get_num_threads())
        return kernel

    for _op in ("bicubic_upsample_seq", "bicubic_upsample_seq_adjoint", "avg_pool_seq",
                "avg_pool_seq_adjoint"):
        _map_kernel(_op)

    @register_kernel("cpu", "pixel_norm")
    def pixel_norm(x, out):
        C = x.shape[-1]
        _fn("pixel_norm", "pixel_norm", x, out)(x.data_ptr(), out.data_ptr(),
                                                 x.numel() // max(C, 1), C, torch.get_num_threads())

    @register_kernel("cpu", "pixel_norm_backward")
    def pixel_norm_backward(x, g, out):
        C = x.shape[-1]
        _fn("pixel_norm_backward", "pixel_norm_backward", x, g, out)(
            x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel() // max(C, 1), C,
            torch.get_num_threads())
