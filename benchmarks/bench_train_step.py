"""The released-recipe training step, on every backend that runs here: 4 discriminator steps with
WGAN-GP (+ drift), then 1 generator step at twice the batch (docs/transgan.md §4; `n_critic=4`,
DiffAugment as the preset's policy), run by the trainer's own `Trainer.step`.

Cases (pytest-benchmark `group` `train-<case>-<precision>`, backends side by side):
- `cifar10-b8`: the cifar10 preset, D batch 8 (G batch 16).
- `church256-b1`: the church256 preset, D batch 1 (G batch 2), no gradient accumulation.
- `natten-d-b8`: the cifar10 generator with a small discriminator built on
  `transgan_fast.nn.NeighborhoodAttention2D` (7x7 neighbourhoods on the 32x32 map), D batch 8.

Each backend starts from the same weights and seeds. The time of one recipe iteration is split
into the D steps (penalty included; `d_step_s` is the mean of the four) and the G step (`g_step_s`,
EMA update included) by timestamps taken after each optimizer step; `peak_rss_mib` is the peak
resident memory of the iteration above what the process held before it (Linux VmHWM after a
reset, with the allocator's freed pages returned to the system first). Before timing, every backend's losses of the first step are checked against `ref`'s.

Precisions: `fp32`, and `bf16` (CPU or CUDA autocast, ours against `ref` under the same autocast).
bf16 runs only where the processor has native bfloat16 arithmetic: without it (AVX2-only CPUs)
torch's bfloat16 matmuls are ~100x slower than float32 and the column would measure that.
`cuda`/`triton` run on a CUDA device when one is present.

One iteration per backend (`TGF_BENCH_TRAIN_ROUNDS` for more), after one warm-up trainer step
(none for church256: a step there takes minutes). `TGF_BENCH_QUICK=1`: shrunken models of the
same layouts, batch 2, and one D+G step instead of the recipe (the code path, not a measurement).

    python -m pytest benchmarks/bench_train_step.py --benchmark-only -q --benchmark-json=train.json
    python benchmarks/report.py train.json
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional

import pytest
import torch
import torch.nn as nn

from transgan_fast.models import build
from transgan_fast.nn import NeighborhoodAttention2D, set_backend
from transgan_fast.ops import _dispatch
from transgan_fast.train import Trainer, resolve_config
from transgan_fast.train.data import ArraySource
from transgan_fast.train.distributed import DistEnv

from _memory import PeakRSS
from conftest import QUICK

ROUNDS = int(os.environ.get("TGF_BENCH_TRAIN_ROUNDS", "1"))
BACKENDS = ["ref", "cpu", "auto", "cuda", "triton"]
PRECISIONS = ["fp32", "bf16"]
N_CRITIC = 1 if QUICK else 4      # steps per recipe iteration (the first one also updates G)


class NADiscriminator(nn.Module):
    """A small neighbourhood-attention discriminator: a 1x1 patch embedding, pre-norm blocks of
    `NeighborhoodAttention2D` + MLP on the full-resolution map, mean pool, linear head."""

    def __init__(self, resolution: int = 32, dim: int = 64, heads: int = 4, depth: int = 3,
                 kernel: int = 7, backend: str = "auto"):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, resolution, resolution, dim))
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            norm1=nn.LayerNorm(dim), attn=NeighborhoodAttention2D(dim, heads, kernel, rel_pos_bias=True,
                                                                  backend=backend),
            norm2=nn.LayerNorm(dim), mlp=nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(),
                                                       nn.Linear(4 * dim, dim))))
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, augment=None) -> torch.Tensor:
        if augment is not None:
            x = augment(x)
        t = self.embed(x).permute(0, 2, 3, 1) + self.pos                     # (B, H, W, C)
        for b in self.blocks:
            t = t + b["attn"](b["norm1"](t))
            t = t + b["mlp"](b["norm2"](t))
        return self.head(self.norm(t.mean((1, 2))))                          # (B, 1)


def _cifar_overrides():
    # 16x16 images: a 4x4 bottom map, one block per stage, an eighth of the channels.
    return dict(bottom=4, g_depths=(1, 1, 1), g_channels=(128, 32, 8),
                d_scales=((16, 2, 2, 0), (16, 4, 4, 0))) if QUICK else {}


def _models(case: str):
    torch.manual_seed(0)
    if case == "cifar10-b8":
        return build("cifar10", backend="ref", **_cifar_overrides())
    if case == "church256-b1":
        # 64x64 images: a 2x2 bottom map, one block per stage, narrow D scales.
        quick = dict(g_depths=(1,) * 6, g_channels=(256, 256, 256, 64, 16, 4), bottom=2,
                     d_scales=((16, 4, 4, 0), (8, 8, 8, 0), (8, 16, 16, 0))) if QUICK else {}
        return build("church256", backend="ref", **quick)
    G, _ = build("cifar10", backend="ref", **_cifar_overrides())
    return G, NADiscriminator(16 if QUICK else 32, dim=16 if QUICK else 64, depth=1 if QUICK else 3,
                              backend="ref")


CASES = {  # case -> (trainer preset, resolution, D batch)
    "cifar10-b8": ("cifar10", 16 if QUICK else 32, 2 if QUICK else 8),
    "church256-b1": ("church256", 64 if QUICK else 256, 1),
    "natten-d-b8": ("cifar10", 16 if QUICK else 32, 2 if QUICK else 8),
}
WARMUP_STEPS = {"cifar10-b8": 1, "church256-b1": 0, "natten-d-b8": 1}
if QUICK:
    WARMUP_STEPS = dict.fromkeys(CASES, 0)


def native_bf16(device: str) -> Optional[str]:
    """None if `device` computes in bfloat16 natively, else the reason it does not."""
    if device == "cuda":
        return None if torch.cuda.is_bf16_supported() else "bf16: this CUDA device has no bfloat16"
    cap = torch.backends.cpu.get_cpu_capability()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if {"avx512_bf16", "amx_bf16"} & set(flags) or "BF16" in cap.upper():
        return None
    return (f"bf16: the CPU has no native bfloat16 arithmetic (torch capability {cap}; no "
            f"avx512_bf16/amx_bf16 flag), so torch's bfloat16 matmuls run ~100x slower than "
            f"float32 and the column would time that emulation")


def _skip_reason(backend: str, precision: str) -> Optional[str]:
    device = "cuda" if backend in ("cuda", "triton") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return f"{backend}: no CUDA device"
    if precision == "bf16" and (why := native_bf16(device)):
        return why
    if backend in ("ref", "auto"):
        return None
    _dispatch._load_backend_modules()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return _dispatch._why_not(backend, "attention", torch.device(device), dtype)


class TimedTrainer(Trainer):
    """`Trainer` that stamps the clock after each optimizer step (D's comes first in a step)."""

    def _optimizer_step(self, net, opt, scaler):
        norm = super()._optimizer_step(net, opt, scaler)
        if self.env.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return norm


def _trainer(case: str, backend: str, precision: str) -> TimedTrainer:
    preset, res, batch = CASES[case]
    device = "cuda" if backend in ("cuda", "triton") else "cpu"
    G, D = _models(case)
    set_backend(G, backend)
    set_backend(D, backend)
    g = torch.Generator().manual_seed(0)
    source = ArraySource(torch.randint(0, 256, (64, 3, res, res), dtype=torch.uint8, generator=g),
                         "uniform noise")
    cfg = resolve_config(preset=preset, batch=batch, n_critic=N_CRITIC, accum_d=1, accum_g=1,
                         precision="fp32", device=device, backend=backend, metrics="", seed=0)
    tr = TimedTrainer(cfg, G, D, source, DistEnv(device=torch.device(device)))
    if precision == "bf16":  # the trainer's own autocast, with the dtype set directly
        tr.amp_dtype = torch.bfloat16
    tr.stamps = []
    return tr


def _iteration(tr: TimedTrainer) -> Dict[str, float]:
    """One recipe iteration (N_CRITIC trainer steps from a multiple of N_CRITIC); its split."""
    assert tr.step_idx % N_CRITIC == 0
    d, g = 0.0, 0.0
    first = None
    for _ in range(N_CRITIC):
        tr.stamps.clear()
        t0 = time.perf_counter()
        stats = tr.step()
        first = first or stats
        d += tr.stamps[0] - t0
        if len(tr.stamps) > 1:
            g += tr.stamps[1] - tr.stamps[0]
    return {"d": d, "g": g, "stats": first}


_first_stats: Dict[tuple, Dict[str, float]] = {}
STAT_KEYS = ("D/real", "D/fake", "D/gp", "G/loss")


def _check_against_ref(key: tuple, backend: str, stats: Dict[str, float], precision: str):
    if backend == "ref":
        _first_stats[key] = stats
        return
    ref = _first_stats.get(key)
    if ref is None:
        return  # `ref` was deselected; nothing to compare with
    tol = 5e-2 if precision == "bf16" else 2e-3
    for k in STAT_KEYS:
        if k in ref:
            err = abs(stats[k] - ref[k])
            assert err <= tol * max(1.0, abs(ref[k])), \
                f"{backend}: first-step {k} = {stats[k]:.6g}, ref {ref[k]:.6g} (|diff| {err:.3g})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_train_step(benchmark, case, precision, backend):
    why = _skip_reason(backend, precision)
    if why:
        pytest.skip(why)
    tr = _trainer(case, backend, precision)
    # Warm-up (and the parity check): the first step, or a lone D+G step on church256.
    warm = max(WARMUP_STEPS[case], 0)
    if warm:
        tr.step()
        first = tr.last_stats
        while tr.step_idx % N_CRITIC:
            tr.step()
    else:
        first = None
    parts = []
    peak = PeakRSS()

    def run():
        with peak:
            parts.append(_iteration(tr))

    benchmark.group = f"train-{case}-{precision}"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    _check_against_ref((case, precision), backend, first or parts[0]["stats"], precision)
    n = len(parts)
    benchmark.extra_info.update(
        backend=backend, precision=precision, threads=torch.get_num_threads(),
        d_batch=CASES[case][2], steps=N_CRITIC,
        d_step_s=round(sum(p["d"] for p in parts) / n / N_CRITIC, 4),
        g_step_s=round(sum(p["g"] for p in parts) / n, 4),
        peak_rss_mib=round(peak.extra_mib, 1) if peak.extra_mib is not None else None)
