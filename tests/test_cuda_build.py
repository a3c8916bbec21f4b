"""The built CUDA module, checked without a GPU: it imports (static runtime), exposes every
launcher the `cuda` backend calls, was compiled for sm_80 and sm_90, and a launch with no device
fails with a clear "no CUDA device" error that `backends()` also reports."""
from __future__ import annotations

import ast
import inspect

import pytest
import torch

import transgan_fast
from transgan_fast import _ext
from transgan_fast.ops import _cuda, _dispatch

pytestmark = pytest.mark.skipif(_ext.cuda_module is None,
                                reason=f"CUDA extension module was not built: {_ext.cuda_error}")

no_device = pytest.mark.skipif(torch.cuda.is_available() and _ext.cuda_device_count() > 0,
                               reason="a CUDA device is present, so the no-device path cannot run")


def _called_launchers():
    """Names `_C.<name>` called anywhere in transgan_fast/ops/_cuda.py."""
    tree = ast.parse(inspect.getsource(_cuda))
    return {n.func.attr for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name) and n.func.value.id == "_C"}


def test_module_exposes_every_launcher_the_backend_calls():
    called = _called_launchers()
    assert {"attn_fwd", "attn_bwd", "bicubic_upsample_seq", "avg_pool_seq", "pixel_norm",
            "pixel_shuffle_seq", "pixel_unshuffle_seq", "sparse_attn"} <= called
    missing = sorted(n for n in called if not callable(getattr(_ext.cuda_module, n, None)))
    assert not missing, f"_C_cuda lacks {missing}"


def test_backend_registers_every_kernel_of_every_op():
    needed = {k for kernels in _dispatch.OP_KERNELS.values() for k in kernels}
    missing = sorted(needed - set(_dispatch.KERNELS["cuda"]))
    assert not missing, f"cuda backend has no kernel for {missing}"


def test_archs_cover_sm80_and_sm90():
    archs = _ext.cuda_module.archs().split(",")
    assert "sm_80" in archs and "sm_90" in archs, archs


@no_device
def test_launch_without_device_raises_clearly():
    assert _ext.cuda_device_count() == 0
    C = _ext.cuda_module
    calls = {
        "attn_fwd": lambda: C.attn_fwd(0, [4, 4, 0, 4, 4, 0, 0, 4, 4], [1, 1, 16, 8], 0.5,
                                       [0, 0, 0, 0] * 4, 0, 0, 0),
        "attn_bwd": lambda: C.attn_bwd(0, [4, 4, 0, 4, 4, 0, 0, 4, 4], [1, 1, 16, 8], 0.5,
                                       [0, 0, 0, 0] * 8, 0, 0, 0, 0, 0, 0, 0),
        "bicubic_upsample_seq": lambda: C.bicubic_upsample_seq(0, 0, 0, 1, 2, 2, 4, False, 0),
        "avg_pool_seq": lambda: C.avg_pool_seq(0, 0, 0, 1, 2, 2, 4, True, 0),
        "pixel_norm": lambda: C.pixel_norm(0, 0, 0, 0, 4, 4, 0),
        "pixel_shuffle_seq": lambda: C.pixel_shuffle_seq(0, 0, 0, 0, 1, 2, 2, 4, 0, 0, 0, 0),
        "sparse_qk": lambda: C.sparse_attn(0, 0, [4, 4, 0, 4, 4, 0, 0, 4, 4], [1, 1, 16, 8, 16], 0,
                                           [0, 0, 0], 0, [0, 0, 0], 0, 0),
        "sparse_avt": lambda: C.sparse_attn(2, 0, [4, 4, 0, 4, 4, 0, 0, 4, 4], [1, 1, 16, 8, 16], 0,
                                            [0, 0, 0], 0, [0, 0, 0], 0, 0),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"{name}: no CUDA device"):
            call()


@no_device
def test_backends_report_why_cuda_is_unusable():
    info = transgan_fast.backends()["cuda"] if hasattr(transgan_fast, "backends") \
        else _dispatch.backends()["cuda"]
    assert info["built"] and not info["usable"]
    assert "no CUDA device" in info["reason"]
    assert "sm_80" in info["archs"] and "sm_90" in info["archs"]


@no_device
def test_explicit_cuda_backend_request_says_why():
    from transgan_fast.ops.attention import grid_attention
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(_dispatch.BackendUnavailableError, match="cuda"):
        grid_attention(q, q, q, (4, 4), (4, 4), backend="cuda")
