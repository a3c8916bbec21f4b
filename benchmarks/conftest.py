"""Shared benchmark helpers: backend availability, parity-before-timing, and recording.

Every benchmark (1) checks that the implementation matches the reference on the benchmark's own
inputs (docs/ops.md §4 tolerances), then (2) times it. Implementations of one case share a pytest-benchmark
`group`, so `pytest benchmarks/ --benchmark-only` prints them side by side; `benchmarks/report.py`
turns the saved JSON into a markdown table of speedups and a PNG chart.

`TGF_BENCH_QUICK=1` runs every benchmark once on small shapes (parity checks included, timings
meaningless): `.ci/run` uses it so the README's benchmark command cannot silently break.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import pytest
import torch

from transgan_fast.ops import _dispatch

# Smoke mode: small shapes, one round, no compiled peers (see the module docstring).
QUICK = os.environ.get("TGF_BENCH_QUICK", "0") == "1"


def unavailable(backend: str, device: str = "cpu", op: str = "attention",
                dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why `backend` cannot run `op` here (None if it can)."""
    _dispatch._load_backend_modules()
    if backend == "triton" and device == "cpu":
        return "triton: no CUDA device (the Triton interpreter is not a speed measurement)"
    if device == "cuda" and not torch.cuda.is_available():
        return f"{backend}: no CUDA device"
    return _dispatch._why_not(backend, op, torch.device(device), dtype)


def skip_unless(backend: str, device: str = "cpu", op: str = "attention",
                dtype: torch.dtype = torch.float32) -> None:
    why = unavailable(backend, device, op, dtype)
    if why:
        pytest.skip(why)


def check_parity(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5, what: str = "output"):
    """docs/ops.md §4 forward tolerance against a float64 (or same-dtype) reference."""
    scale = max(1.0, ref.abs().max().item())
    err = (out.double() - ref.double()).abs().max().item()
    assert err == err and err <= tol * scale, f"{what}: parity error {err:.3e} > {tol * scale:.3e}"


def record(benchmark, group: str, fn: Callable[[], object], flops: Optional[float] = None,
           rounds: int = 5, **info) -> None:
    """Time `fn` in `group`; store GFLOP/s (useful FLOPs only) and any extra info."""
    benchmark.group = group
    benchmark.extra_info.update(info)
    threads = torch.get_num_threads()
    benchmark.extra_info["threads"] = threads
    fn()  # warm-up (compilation, allocator)
    benchmark.pedantic(fn, rounds=1 if QUICK else rounds, iterations=1, warmup_rounds=1)
    if flops is not None:
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["gflops"] = round(flops / mean / 1e9, 2)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # docs/ops.md §7: CPU timings with 2 threads (the machine's cores); override with TGF_BENCH_THREADS.
    torch.set_num_threads(int(os.environ.get("TGF_BENCH_THREADS", "2")))
