"""`transgan-fast demo`: a small TransGAN trained on the built-in shapes in a few CPU minutes.

The model is the cifar10 preset shrunk to a 16² output (fewer channels and blocks) so that a
2-core CPU trains it visibly in minutes; `--quick` shrinks it further (16², one block per stage) for tests. After training it
writes `curves.png` (losses and SWD against kimg) and prints a one-screen summary.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from .config import TrainConfig, resolve_config
from .runner import RunResult, run_training

__all__ = ["DEMO_MODEL", "QUICK_MODEL", "demo_config", "run_demo", "plot_curves"]

# 16x16 output (4 -> 8 -> 16 tokens per side): on 2 CPU cores this takes ~650 steps in 3 minutes,
# enough for SWD to fall clearly; the 32x32 shrunk cifar10 model did not learn in 4 minutes.
DEMO_MODEL = dict(latent_dim=64, bottom=4, g_channels=[128, 32, 32], g_depths=[1, 1, 1],
                  g_upsample=["pixelshuffle", "bicubic"],
                  d_scales=[[48, 2, 2, 0], [16, 4, 4, 0]], d_stages=[["global"], ["global"]])
QUICK_MODEL = dict(latent_dim=32, bottom=4, g_channels=[32, 32, 32], g_depths=[1, 1, 1],
                   g_upsample=["bicubic", "bicubic"],
                   d_scales=[[24, 2, 2, 0], [8, 4, 4, 0]], d_stages=[["global"], ["global"]])


def demo_config(quick: bool = False, kimg: Optional[float] = None, seed: int = 0,
                backend: str = "auto") -> TrainConfig:
    """The demo's resolved TrainConfig (shapes data, the shrunk cifar10 model)."""
    if quick:
        return resolve_config(preset="cifar10", data="shapes", resolution=16, batch=16,
                              kimg=kimg or 0.2, tick_kimg=0.1, snapshot_ticks=1, metric_n=64,
                              shapes_n=512, model=QUICK_MODEL, seed=seed, backend=backend,
                              n_critic=2, ema_kimg=1.0)
    return resolve_config(preset="cifar10", data="shapes", resolution=16, batch=32,
                          kimg=kimg or 1000.0, tick_kimg=2.0, snapshot_ticks=2, metric_n=512,
                          shapes_n=8192, model=DEMO_MODEL, seed=seed, backend=backend,
                          n_critic=1, lr_g=2e-4, lr_d=2e-4, ema_kimg=2.0)


def plot_curves(result: RunResult, path: str) -> str:
    """Losses per tick and SWD per evaluation against kimg, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ks = [s["kimg"] for s in result.stats]
    for key in ("D/loss", "G/loss", "D/wdist"):
        a.plot(ks, [s.get(key, float("nan")) for s in result.stats], label=key)
    a.set_xlabel("kimg"), a.set_title("losses"), a.legend()
    mk = [m["kimg"] for m in result.metrics]
    b.plot(mk, [m.get("swd/avg", float("nan")) for m in result.metrics], "o-", label="swd/avg")
    b.set_xlabel("kimg"), b.set_title("SWD (x1e3, lower is better)"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_demo(outdir: str = "runs", minutes: float = 4.0, kimg: Optional[float] = None,
             quick: bool = False, seed: int = 0, backend: str = "auto",
             progress: bool = True) -> Dict[str, object]:
    """Train the demo model for `minutes` (or `kimg`), plot curves, return the summary."""
    cfg = demo_config(quick, kimg, seed, backend)
    max_s = None if kimg is not None else (minutes * 60 if not quick else None)
    result = run_training(cfg, outdir, resume=None, dry_run=False, progress=progress,
                          max_seconds=max_s)
    curves = plot_curves(result, os.path.join(result.run_dir, "curves.png"))
    swds = [m["swd/avg"] for m in result.metrics if "swd/avg" in m]
    grids = sorted(n for n in os.listdir(result.run_dir) if n.startswith("fakes"))
    summary = {
        "run_dir": result.run_dir, "steps": result.steps, "kimg": round(result.kimg, 2),
        "seconds": round(result.seconds, 1), "swd_initial": swds[0] if swds else None,
        "swd_final": swds[-1] if swds else None, "swd_best": min(swds) if swds else None,
        "curves": curves, "latest_grid": os.path.join(result.run_dir, grids[-1]) if grids else None,
        "backend": backend,
    }
    return summary


def format_summary(s: Dict[str, object]) -> str:
    """The one-screen summary printed by `transgan-fast demo`."""
    lines = ["", "=" * 64, "TransGAN demo finished",
             f"  run dir      {s['run_dir']}",
             f"  trained      {s['steps']} steps, {s['kimg']} kimg in {s['seconds']} s",
             f"  SWD (x1e3)   initial {s['swd_initial']:.1f} -> final {s['swd_final']:.1f} "
             f"(best {s['swd_best']:.1f})" if s["swd_initial"] is not None else "  SWD          n/a",
             f"  samples      {s['latest_grid']}",
             f"  curves       {s['curves']}",
             "=" * 64]
    return "\n".join(lines)
