"""The `cuda` backend: wrappers that pass device pointers, shapes, strides and the current
stream to `_C_cuda`. Validation happens here and in `_library.py`; the module does none beyond
its own argument checks (head dim, geometry, sizes), which raise with a message."""
from __future__ import annotations

import torch

from .. import _ext
from ._dispatch import register_kernel, register_limit
from .neighbours import num_slots

_C = _ext.cuda_module

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_HEAD_DIM = 256
MAX_BATCH_HEADS = 65535  # the launch grid's y dimension holds batch * heads


@register_limit("cuda")
def attention_limits(call):
    """The attention kernels' shape limits (the C++ launcher checks the same)."""
    if call.op not in ("attention", "attention_qkv"):
        return None
    d, bh = call.dim("d"), call.dim("B", 1) * call.dim("heads", 1)
    if d is not None and d > MAX_HEAD_DIM:
        return f"head dim d={d} is above the supported {MAX_HEAD_DIM}"
    if bh > MAX_BATCH_HEADS:
        return f"batch * heads = {bh} is above the launch grid's limit {MAX_BATCH_HEADS}"
    return None

# Upper bound on the backward's per-slot dS scratch (deterministic dbias, csrc/cuda/bias_grad.cu):
# the batch is reduced in chunks of as many elements as fit, at least one.
DBIAS_SCRATCH_BYTES = 256 << 20


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _stream(t):
    return torch.cuda.current_stream(t.device).cuda_stream


def _on_device(fn):
    """Run a launcher with the tensors' device current (the C++ side queries and launches on the
    current device, with the stream of `torch.cuda.current_stream(device)`)."""
    import functools

    @functools.wraps(fn)
    def wrapper(first, *args):
        with torch.cuda.device(first.device):
            return fn(first, *args)
    return wrapper


def _view(t, name):
    """[ptr, stride_b, stride_h, stride_n] of a (B, h, N, d) view with a contiguous last dim."""
    if t.dim() != 4 or (t.stride(-1) != 1 and t.shape[-1] > 1):
        raise ValueError(f"cuda attention: {name} must be a (B, h, N, d) view with stride(-1) == 1; "
                         f"got shape {tuple(t.shape)}, strides {t.stride()}")
    return [t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)]


def _sparse(op: int, name: str, x, y, geom, out):
    """One sparse-logit primitive (csrc/cuda/sparse_attn.cu): x, y `(B, h, N, *)` with a contiguous
    last dim, out contiguous; the slot layout is `neighbours.py`'s, computed on the device."""
    B, h, N, d = y.shape
    K = num_slots(geom)
    if d > MAX_HEAD_DIM:
        raise ValueError(f"cuda {name}: head dim d={d} is above the supported {MAX_HEAD_DIM}")
    if y.dtype not in DTYPE_CODE:
        raise TypeError(f"cuda {name}: dtype {y.dtype} is not supported (float32, float16, bfloat16)")
    for arg, t in (("first argument", x), ("second argument", y)):
        if t.dim() != 4 or (t.stride(-1) != 1 and t.shape[-1] > 1):
            raise ValueError(f"cuda {name}: {arg} must be a (B, h, N, *) view with stride(-1) == 1; "
                             f"got shape {tuple(t.shape)}, strides {t.stride()}")
    if not out.is_contiguous():
        raise ValueError(f"cuda {name}: out must be contiguous; got strides {out.stride()}")
    _C.sparse_attn(op, DTYPE_CODE[y.dtype], geom.as_list(), [B, h, N, d, K], x.data_ptr(),
                   list(x.stride()[:3]), y.data_ptr(), list(y.stride()[:3]), out.data_ptr(),
                   _stream(y))


def _attn_dims(q):
    B, h, N, d = q.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"cuda attention: head dim d={d} is above the supported {MAX_HEAD_DIM}")
    if q.dtype not in DTYPE_CODE:
        raise TypeError(f"cuda attention: dtype {q.dtype} is not supported "
                        f"(float32, float16, bfloat16)")
    return [B, h, N, d]


if _C is not None:

    @register_kernel("cuda", "attn_fwd")
    @_on_device
    def attn_fwd(q, k, v, bias, geom, scale, out, lse):
        """Fused attention forward into `out` (B, h, N, d) and `lse` (B, h, N) float32."""
        if q.numel() == 0:
            return  # nothing to compute (an empty grid is not a valid launch)
        dims = _attn_dims(q)
        views = _view(q, "q") + _view(k, "k") + _view(v, "v") + _view(out, "out")
        _C.attn_fwd(DTYPE_CODE[q.dtype], geom.as_list(), dims, float(scale), views, _ptr(bias),
                    _ptr(lse), _stream(q))

    @register_kernel("cuda", "attn_bwd")
    @_on_device
    def attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias):
        """Fused attention backward into dq, dk, dv (fully written) and dbias (accumulated)."""
        if q.numel() == 0:
            return  # empty gradients; dbias stays zero
        dims = _attn_dims(q)
        B, h, N, _ = q.shape
        delta = torch.empty((B, h, N), dtype=torch.float32, device=q.device)  # rowsum(dO * O)
        views = (_view(q, "q") + _view(k, "k") + _view(v, "v") + _view(out, "out") +
                 _view(dout, "dout") + _view(dq, "dq") + _view(dk, "dk") + _view(dv, "dv"))
        dslot, chunk = None, 0
        if bias is not None:
            K = num_slots(geom)
            chunk = max(1, min(B, DBIAS_SCRATCH_BYTES // (h * N * K * 4)))
            dslot = torch.empty((chunk, h, N, K), dtype=torch.float32, device=q.device)
        _C.attn_bwd(DTYPE_CODE[q.dtype], geom.as_list(), dims, float(scale), views, _ptr(bias),
                    _ptr(dbias), _ptr(lse.contiguous()), _ptr(delta), _stream(q), _ptr(dslot), chunk)

    @register_kernel("cuda", "sparse_qk")
    @_on_device
    def sparse_qk(a, b, geom, out):
        """out (B, h, N, K) = a_i . b_key(i,s) over the neighbour slots, 0 at empty slots."""
        _sparse(0, "sparse_qk", a, b, geom, out)

    @register_kernel("cuda", "sparse_av")
    @_on_device
    def sparse_av(p, v, geom, out):
        """out (B, h, N, d) = sum over slots of p[i, s] v_key(i,s)."""
        _sparse(1, "sparse_av", p, v, geom, out)

    @register_kernel("cuda", "sparse_avt")
    @_on_device
    def sparse_avt(p, x, geom, out):
        """out (B, h, N, d): row m = sum of p[i, s] x_i over the (i, s) whose key is m."""
        _sparse(2, "sparse_avt", p, x, geom, out)

    @register_kernel("cuda", "pixel_shuffle_seq")
    @_on_device
    def pixel_shuffle_seq(x, H, W, *rest):
        """(B, HW, C) -> (B, 4HW, C/4), optional fused pos-embed add."""
        pos, out = rest if len(rest) == 2 else (None, rest[0])
        B, N, C = x.shape
        pos_bstride = 0 if pos is None or pos.shape[0] == 1 else pos.stride(0)
        _C.pixel_shuffle_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(pos), _ptr(out), B, H, W, C,
                             x.stride(0), x.stride(1), pos_bstride, _stream(x))

    @register_kernel("cuda", "pixel_unshuffle_seq")
    @_on_device
    def pixel_unshuffle_seq(x, H, W, out):
        """Inverse of pixel_shuffle_seq; H, W the low-resolution map."""
        B, N, C = x.shape
        _C.pixel_unshuffle_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(out), B, H, W, 4 * C,
                               x.stride(0), x.stride(1), _stream(x))

    @register_kernel("cuda", "bicubic_upsample_seq")
    @_on_device
    def bicubic_upsample_seq(x, H, W, out):
        """(B, HW, C) -> (B, 4HW, C), bicubic x2 (A=-0.75, align_corners=False)."""
        B, N, C = x.shape
        _C.bicubic_upsample_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(out), B, H, W, C, False, _stream(x))

    @register_kernel("cuda", "bicubic_upsample_seq_adjoint")
    @_on_device
    def bicubic_upsample_seq_adjoint(g, H, W, out):
        """Adjoint of bicubic_upsample_seq: (B, 4HW, C) -> (B, HW, C)."""
        B, N4, C = g.shape
        _C.bicubic_upsample_seq(DTYPE_CODE[g.dtype], _ptr(g), _ptr(out), B, H, W, C, True, _stream(g))

    @register_kernel("cuda", "avg_pool_seq")
    @_on_device
    def avg_pool_seq(x, H, W, out):
        """2x2 average pooling; H, W the high-resolution map."""
        B, N, C = x.shape
        _C.avg_pool_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(out), B, H, W, C, False, _stream(x))

    @register_kernel("cuda", "avg_pool_seq_adjoint")
    @_on_device
    def avg_pool_seq_adjoint(g, H, W, out):
        """Adjoint of avg_pool_seq: (B, HW/4, C) -> (B, HW, C)."""
        B, N4, C = g.shape
        _C.avg_pool_seq(DTYPE_CODE[g.dtype], _ptr(g), _ptr(out), B, H, W, C, True, _stream(g))

    @register_kernel("cuda", "pixel_norm")
    @_on_device
    def pixel_norm(x, out):
        """x / sqrt(mean(x^2, -1) + 1e-8)."""
        C = x.shape[-1]
        _C.pixel_norm(DTYPE_CODE[x.dtype], _ptr(x), 0, _ptr(out), x.numel() // max(C, 1), C, _stream(x))

    @register_kernel("cuda", "pixel_norm_backward")
    @_on_device
    def pixel_norm_backward(x, g, out):
        """Gradient of pixel_norm at x for upstream gradient g."""
        C = x.shape[-1]
        _C.pixel_norm(DTYPE_CODE[x.dtype], _ptr(x), _ptr(g), _ptr(out), x.numel() // max(C, 1), C,
                      _stream(x))
