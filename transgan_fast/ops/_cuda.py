"""The `cuda` backend: wrappers that pass device pointers, shapes, strides and the current
stream to `_C_cuda`. Validation happens here and in `_library.py`; the module does none."""
from __future__ import annotations

import torch

from .. import _ext
from ._dispatch import register_kernel

_C = _ext.cuda_module

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _stream(t):
    return torch.cuda.current_stream(t.device).cuda_stream


if _C is not None:

    @register_kernel("cuda", "pixel_shuffle_seq")
    def pixel_shuffle_seq(x, H, W, *rest):
        pos, out = rest if len(rest) == 2 else (None, rest[0])
        B, N, C = x.shape
        pos_bstride = 0 if pos is None or pos.shape[0] == 1 else pos.stride(0)
        _C.pixel_shuffle_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(pos), _ptr(out), B, H, W, C,
                             x.stride(0), x.stride(1), pos_bstride, _stream(x))

    @register_kernel("cuda", "pixel_unshuffle_seq")
    def pixel_unshuffle_seq(x, H, W, out):
        B, N, C = x.shape
        _C.pixel_unshuffle_seq(DTYPE_CODE[x.dtype], _ptr(x), _ptr(out), B, H, W, 4 * C,
                               x.stride(0), x.stride(1), _stream(x))
