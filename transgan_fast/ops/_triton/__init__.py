"""The `triton` backend: flash-style masked attention (forward and backward) for every geometry
kind, and the fused pixel shuffle/unshuffle.

Triton is imported inside `try`, so a machine without it still imports `transgan_fast`; the
backend then reports itself unavailable through `_dispatch.backends()`.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

if triton is not None:
    from . import kernels  # noqa: F401  (registers the kernels)
