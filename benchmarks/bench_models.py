"""Whole-model benchmarks: the TransGAN generator on every backend that can run it here.

Groups (pytest-benchmark `group`, implementations side by side):
- `model-cifar10-G-fwdbwd-b8`: CIFAR-10 generator, forward + backward, batch 8
  (docs/ops.md §7 target: the fastest backend >= 1.5x the same model on `ref`).
- `model-church256-G-fwd-b1`: LSUN-Church 256 generator (205 M parameters), forward, batch 1,
  with the peak resident memory of the forward in `extra_info` (`peak_rss_mb`, `forward_rss_mb`).

Each model is built once and switched between backends with `set_backend`, and each backend's
output is checked against `ref` before it is timed. Rounds default to 1 (the models are large and
the machine small); set `TGF_BENCH_MODEL_ROUNDS` for more. `TGF_BENCH_QUICK=1` keeps the
presets' layouts (attention kinds, upsampling) with one block per stage, a quarter (cifar10) or
half (church256, and a 128x128 output) of the channels, and batch 2.

    python -m pytest benchmarks/bench_models.py --benchmark-only -q
"""
from __future__ import annotations

import os

import pytest
import torch

from transgan_fast.models import build
from transgan_fast.nn import set_backend
from transgan_fast.ops import _dispatch

from _memory import PeakRSS, rss_mib
from conftest import QUICK

ROUNDS = int(os.environ.get("TGF_BENCH_MODEL_ROUNDS", "1"))
BATCH = 2 if QUICK else 8
QUICK_CIFAR = dict(g_depths=(1, 1, 1), g_channels=(256, 64, 16)) if QUICK else {}
QUICK_CHURCH = dict(g_depths=(1,) * 6, g_channels=(512, 512, 512, 128, 32, 8), bottom=4) if QUICK else {}
BACKENDS = ["ref", "auto", "cpu", "cuda", "triton"]
# Kernel-level ops the generators call.
MODEL_OPS = ("attention_qkv", "pixel_shuffle_seq", "bicubic_upsample_seq", "pixel_norm")
_times = {}


def _skip_unless_model_runs(backend: str) -> None:
    if backend in ("ref", "auto"):
        return
    if backend != "cpu":
        pytest.skip(f"{backend}: the model benchmarks run on CPU tensors")
    _dispatch._load_backend_modules()
    why = [w for op in MODEL_OPS if (w := _dispatch._why_not(backend, op, torch.device("cpu"), torch.float32))]
    if why:
        pytest.skip("; ".join(why))


_outputs = {}


def _time(benchmark, group, backend, model, fn, before_timing=None, **info):
    """Time `fn` (which seeds the RNG, so the attention noise repeats) on `backend`, then check
    its output against `ref`'s output for the same input (computed here if `ref` did not run)."""
    benchmark.group = group
    benchmark.extra_info.update(backend=backend, threads=torch.get_num_threads(), **info)
    set_backend(model, backend)
    if before_timing is not None:
        before_timing()
    # One warm-up round: the first call of a backend pays one-off costs (thread pools, allocator).
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1).detach()
    mean = benchmark.stats.stats.mean
    _times[(group, backend)] = mean
    if backend == "ref":
        _outputs[group] = out
    else:
        if group not in _outputs:
            set_backend(model, "ref")
            _outputs[group] = fn().detach()
        ref = _outputs[group]
        err = (out - ref).abs().max().item()
        tol = 1e-4 * max(1.0, ref.abs().max().item())
        assert err <= tol, f"{backend}: model output differs from ref by {err:.3e} > {tol:.3e}"
        if (group, "ref") in _times:
            benchmark.extra_info["speedup_vs_ref"] = round(_times[(group, "ref")] / mean, 3)


@pytest.fixture(scope="module")
def cifar_g():
    torch.set_num_threads(int(os.environ.get("TGF_BENCH_THREADS", "2")))
    G, _ = build("cifar10", backend="ref", **QUICK_CIFAR)
    return G


@pytest.fixture(scope="module")
def church_g():
    G, _ = build("church256", backend="ref", **QUICK_CHURCH)
    return G.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cifar10_generator_fwd_bwd_b8(benchmark, cifar_g, backend):
    _skip_unless_model_runs(backend)
    z = torch.randn(BATCH, cifar_g.latent_dim, generator=torch.Generator().manual_seed(1))

    def step():
        cifar_g.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = cifar_g(z)
        out.square().mean().backward()
        return out

    _time(benchmark, f"model-cifar10-G-fwdbwd-b{BATCH}", backend, cifar_g, step,
          params=sum(p.numel() for p in cifar_g.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_church256_generator_fwd_b1(benchmark, church_g, backend):
    _skip_unless_model_runs(backend)
    z = torch.randn(1, church_g.latent_dim, generator=torch.Generator().manual_seed(1))
    peak = PeakRSS()

    @torch.no_grad()
    def fwd():
        torch.manual_seed(0)
        return church_g(z)

    _time(benchmark, "model-church256-G-fwd-b1", backend, church_g, fwd, before_timing=peak.start,
          weights_mb=round(sum(p.numel() for p in church_g.parameters()) * 4 / 2 ** 20, 1))
    extra = peak.stop()
    benchmark.extra_info.update(peak_rss_mb=round(rss_mib("VmHWM"), 1),
                                forward_rss_mb=round(extra, 1) if extra is not None else None,
                                peak_is_forward_only=extra is not None and ROUNDS == 1)
