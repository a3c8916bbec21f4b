"""The `cpu` backend: thin wrappers that pass pointers, shapes and strides to `_C_cpu`.

The compiled module does no validation; everything is checked in Python before a launch
(contiguity of the innermost dim, dtype float32, shapes). Kernels not compiled into the module
are simply not registered, so `backends()` lists exactly what exists.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._dispatch import register_kernel

_C = _ext.cpu_module


def _ptr(t):
    return 0 if t is None else t.data_ptr()


if _C is not None:

    @register_kernel("cpu", "pixel_shuffle_seq")
    def pixel_shuffle_seq(x, H, W, *rest):
        pos, out = rest if len(rest) == 2 else (None, rest[0])
        B, N, C = x.shape
        pos_bstride = 0 if pos is None or pos.shape[0] == 1 else pos.stride(0)
        _C.pixel_shuffle_seq_f32(_ptr(x), _ptr(pos), _ptr(out), B, H, W, C,
                                 x.stride(0), x.stride(1), pos_bstride,
                                 torch.get_num_threads())

    @register_kernel("cpu", "pixel_unshuffle_seq")
    def pixel_unshuffle_seq(x, H, W, out):
        B, N, C = x.shape  # x is the high-res (2H x 2W) map with C channels
        _C.pixel_unshuffle_seq_f32(_ptr(x), _ptr(out), B, H, W, 4 * C,
                                   x.stride(0), x.stride(1), torch.get_num_threads())
