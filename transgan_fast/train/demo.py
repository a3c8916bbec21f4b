"""`transgan-fast demo`: a small class-conditional TransGAN trained on the built-in shapes for a
fixed amount of work.

The run length is counted in images (`kimg`), never in seconds, so the result does not depend on
how busy the machine is; the progress bar counts those images and its ETA is the time left.
The model is the cifar10 preset shrunk to a 16² output (fewer channels and blocks), with the
package's fused attention, conditioned on the shape's kind (circle, square, triangle: a class
embedding modulates every generator stage, and the discriminator is a projection discriminator),
trained on `shapes-centred` (every shape in the middle of a flat background of varied colour).
After training the demo measures what a person sees: a small CNN trained on labelled shapes (with
a "no clear shape" class of blurred, blob-like and noise images, see `shape_classifier`) reports
the fraction of samples recognised as a shape with high confidence (`shape_accuracy`) and the
fraction recognised as the kind they were generated for (`kind_accuracy`), next to SWD. It writes
`samples.png` (samples beside real images), `curves.png` (losses and SWD against kimg) and
`summary.json`, and prints a one-screen summary. `--quick` shrinks everything (model, data,
classifier) to seconds, for tests and smoke checks.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional

import torch

from .config import TrainConfig, resolve_config
from .data import SHAPE_CLASSES
from .runner import RunResult, run_training

__all__ = ["DEMO_MODEL", "QUICK_MODEL", "DEMO_DATA", "DEMO_KIMG", "DEMO_LR", "DEMO_LR_DECAY_START",
           "DEMO_PRECISION",
           "demo_config", "run_demo", "plot_curves", "format_summary"]

# 16x16 output (4 -> 8 -> 16 tokens per side). Non-saturating loss with the R1 penalty on reals
# (gamma 1), no augmentation, batch 32 for both D and G, one D step per G step. The 16x16 stage
# attends within 4x4 windows: with global attention there (256 keys, head dim 8) that block took
# about two thirds of every step. Every generator block cross-attends to 8 latent tokens of 64
# channels (the celebahq256 preset's self-modulation, shrunk), so each token sees the global
# colours; D tokenises with overlapping 4x4 patches at stride 2 (celebahq256's first scale).
# Measured at equal work (30 kimg, one thread each, two runs side by side), SWD as a share of
# initial: the previous recipe (gamma 0.1, no self-modulation, 2x2 patches) 112% at its default
# 50 kimg (collapsed), gamma 1 alone 67%, + self-modulation 43%, + overlapping patches 28%.
# The unconditional demo before this one added the minibatch standard deviation (groups of 4) to
# D's cls token (`d_mbstd`): at 30 kimg (one thread,
# Adam 5e-4) SWD 41.4 -> 28.0 of 135.2 (31% -> 21%) and more varied colours, but shape_accuracy
# 0.16 -> 0.08 (both draw blobs, not shapes). With it, R1 gamma 0.5: 22% / 0.08; Adam 1e-3:
# 38% / 0.11; a second 16x16 G block: 21% / 0.09, 40% slower; D without attention noise: 21% /
# 0.06; class-conditional (Adam 2e-4): SWD rose after 12 kimg, no sample a clear shape. Without
# it, lazy R1 (every 4th step) never left noise (0.00); batch 16 39% / 0.18, 10% slower.
# Class-conditional, on `shapes-centred`: measured at 24 kimg (one thread per run, two runs side by
# side), the class embedding (16 channels) is what makes the generator draw shapes in this budget.
# Unconditional, on `shapes` with the minibatch std above: shape_accuracy 0.04 (0.08 on
# `shapes-centred`, 0.50 after 96 kimg there). Class-conditional on `shapes-centred`: with the
# cifar10 preset's 128-channel class embedding training diverged (SWD 175 -> 116 -> 165, no
# clear shape: the embedding was two thirds of the stem's input); with 16 channels and the
# minibatch std 0.69 (samples of the requested kind 0.89); without the minibatch std 0.94 (0.99).
DEMO_MODEL = dict(latent_dim=64, bottom=4, g_channels=[128, 32, 32], g_depths=[1, 1, 1],
                  g_upsample=["pixelshuffle", "bicubic"], g_attn=["global", "global", "grid4"],
                  self_modulation=True, mod_tokens=8, mod_dim=64,
                  d_scales=[[48, 4, 2, 1], [16, 4, 4, 0]], d_stages=[["global"], ["global"]],
                  class_dim=16)
# The built-in data the demo trains on (an `open_source` spec).
DEMO_DATA = "shapes-centred"
QUICK_MODEL = dict(latent_dim=32, bottom=4, g_channels=[32, 32, 32], g_depths=[1, 1, 1],
                   g_upsample=["bicubic", "bicubic"], class_dim=8,
                   d_scales=[[24, 2, 2, 0], [8, 4, 4, 0]], d_stages=[["global"], ["global"]])
# The default run length (images shown to D, in thousands), with both rates falling linearly to 0
# over its second half (`DEMO_LR_DECAY_START`). At a constant rate the end of a run was a lottery:
# the demo command's seed 0 (two threads) had shape_accuracy 0.74 at 24 kimg and 0.45 at 30 (SWD
# 50 -> 70, D's gradient norm jumping to ~1400 in the last tick). Measured at two threads (the
# command, or its path in-process, equal to the digit), EMA samples, shape_accuracy / SWD share:
# 30 kimg decaying from 15: seeds 0 / 1 / 2 0.92 / 0.94 / 0.72 (seed 2 0.91 at 24 kimg, then
# its backgrounds lost their variety, SWD 45 -> 60); 24 kimg decaying from 12: 0.86 / 0.82 / 0.85,
# 26% / 21% / 33%, 157-214 s of training. Decaying over the whole run slowed learning (24 kimg, one
# thread, seeds 0 / 1: 0.76 / 0.54).
DEMO_KIMG = 24.0
DEMO_LR_DECAY_START = 0.5
DEMO_R1_GAMMA = 1.0
# Adam's step for both networks. Measured at 30 kimg (one thread per run, two side by side),
# shape_accuracy / SWD share: 2e-4 0.05 / 28%, 5e-4 0.16 / 31%, 1e-3 0.16 / 35% (and with
# R1 gamma 0.3 the 1e-3 run died at 6 kimg; gamma 3 0.06).
DEMO_LR = 5e-4
QUICK_KIMG = 0.2
# float32 unless asked: bfloat16 was not faster for this small model even with AMX-BF16 (2-core
# Xeon, 2 threads, alternating rounds of 10 steps: 0.32/0.47/0.55 s a step against float32's
# 0.34/0.45/0.32), and on AVX2-only CPUs it is ~100x slower, so the demo does not take `auto`'s.
DEMO_PRECISION = "fp32"
SAMPLES_N = 512        # samples scored by SWD and the shape classifier


def demo_config(quick: bool = False, kimg: Optional[float] = None, seed: int = 0,
                backend: str = "auto", precision: str = DEMO_PRECISION) -> TrainConfig:
    """The demo's resolved TrainConfig (`DEMO_DATA`, the shrunk class-conditional cifar10 model,
    `kimg` of work)."""
    if kimg is not None and kimg <= 0:
        raise ValueError(f"demo: kimg must be > 0; got {kimg}")
    if quick:
        return resolve_config(preset="cifar10", data=DEMO_DATA, resolution=16, batch=16, cond="class",
                              num_classes=len(SHAPE_CLASSES),
                              kimg=kimg or QUICK_KIMG, tick_kimg=0.1, snapshot_ticks=1, metric_n=64,
                              shapes_n=512, model=QUICK_MODEL, seed=seed, backend=backend,
                              n_critic=2, ema_kimg=1.0, precision=precision)
    kimg = kimg or DEMO_KIMG
    return resolve_config(preset="cifar10", data=DEMO_DATA, resolution=16, batch=32, cond="class",
                          num_classes=len(SHAPE_CLASSES),
                          kimg=kimg, tick_kimg=kimg / 10, snapshot_ticks=2, metric_n=SAMPLES_N,
                          shapes_n=8192, model=DEMO_MODEL, seed=seed, backend=backend,
                          loss="ns", r1_gamma=DEMO_R1_GAMMA, diffaug="", n_critic=1, g_batch=32,
                          lr_g=DEMO_LR, lr_d=DEMO_LR, lr_decay=True,
                          lr_decay_start=DEMO_LR_DECAY_START, ema_kimg=2.0, precision=precision)


def plot_curves(result: RunResult, path: str) -> str:
    """Losses per tick and SWD per evaluation against kimg, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    ks = [s["kimg"] for s in result.stats]
    for key in ("D/loss", "G/loss", "D/wdist"):
        if any(key in s for s in result.stats):
            a.plot(ks, [s.get(key, float("nan")) for s in result.stats], label=key)
    a.set_xlabel("kimg"), a.set_title("losses"), a.legend()
    mk = [m["kimg"] for m in result.metrics]
    b.plot(mk, [m.get("swd/avg", float("nan")) for m in result.metrics], "o-", label="swd/avg")
    b.set_xlabel("kimg"), b.set_title("SWD (x1e3, lower is better)"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_side_by_side(fakes: torch.Tensor, reals: torch.Tensor, path: str, n: int = 32) -> str:
    """One PNG: `n` samples (left, 4 rows) and `n` real images (right), a grey gap between."""
    from .logging import save_grid
    R = fakes.shape[-1]
    cols = n // 4
    gap = torch.zeros(4, 3, R, R)                                            # mid-grey column
    rows = [torch.cat([fakes[r * cols:(r + 1) * cols], gap[:1], reals[r * cols:(r + 1) * cols]])
            for r in range(4)]
    return save_grid(torch.cat(rows), path, nrow=2 * cols + 1)


def run_demo(outdir: str = "runs", kimg: Optional[float] = None, quick: bool = False,
             seed: int = 0, backend: str = "auto", progress: bool = True,
             precision: str = DEMO_PRECISION, cache_dir: Optional[str] = None
             ) -> Dict[str, object]:
    """Train the demo model for `kimg` (default `DEMO_KIMG`), measure and plot; return the summary.

    cache_dir: where the shape classifier is kept once trained (see `cached_shape_classifier`).
    """
    from .data import open_source
    from .loop import _seed_of
    from .shape_classifier import cached_shape_classifier, shape_accuracy
    cfg = demo_config(quick, kimg, seed, backend, precision)
    result = run_training(cfg, outdir, resume=None, dry_run=False, progress=progress)
    t0 = time.time()
    clf, clf_info = cached_shape_classifier(cfg.resolution, quick=quick, cache_dir=cache_dir)
    fakes, asked = _ema_samples(result.run_dir, cfg, SAMPLES_N if not quick else 64)
    reals = open_source(cfg.data, cfg.resolution, seed=_seed_of(cfg.seed, 99) % 2 ** 31,
                        shapes_n=fakes.shape[0])
    reals = reals.get_many(list(range(len(reals)))).float() / 127.5 - 1
    acc, acc_real = shape_accuracy(fakes, clf, labels=asked), shape_accuracy(reals, clf)
    picture = save_side_by_side(fakes, reals, os.path.join(result.run_dir, "samples.png"))
    curves = plot_curves(result, os.path.join(result.run_dir, "curves.png"))
    swds = [m["swd/avg"] for m in result.metrics if "swd/avg" in m]
    return {
        "run_dir": result.run_dir, "steps": result.steps, "kimg": round(result.kimg, 2),
        "seconds": round(result.seconds, 1), "measure_seconds": round(time.time() - t0, 1),
        "swd_initial": swds[0] if swds else None, "swd_final": swds[-1] if swds else None,
        "swd_ratio": swds[-1] / swds[0] if swds else None,
        "shape_accuracy": acc["shape_accuracy"], "kind_accuracy": acc.get("kind_accuracy"),
        "shape_unclear": acc["unclear"],
        "shape_mix": [acc[f"frac/{k}"] for k in range(3)],
        "shape_accuracy_reals": acc_real["shape_accuracy"], "classifier": clf_info,
        "samples": picture, "curves": curves, "precision": result.precision, "backend": backend,
        "seed": seed, "threads": torch.get_num_threads(),
    }


def _ema_samples(run_dir: str, cfg: TrainConfig, n: int):
    """`(images, classes)`: `n` EMA samples of the run's last checkpoint (fixed latents), float32
    in [-1, 1], and the class each was generated for (cycling through the classes; None for an
    unconditional generator)."""
    from .sample import load_generator, num_classes_of
    G, _, _ = load_generator(run_dir)
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))
    k = num_classes_of(G)
    y = torch.arange(n) % k if k else None
    with torch.no_grad():
        if y is None:
            return torch.cat([G(zz).float().clamp(-1, 1) for zz in z.split(128)]), None
        return torch.cat([G(zz, yy).float().clamp(-1, 1)
                          for zz, yy in zip(z.split(128), y.split(128))]), y


def format_summary(s: Dict[str, object]) -> str:
    """The one-screen summary printed by `transgan-fast demo` (the names of summary.json)."""
    if s["swd_initial"] is not None:
        swd = [f"  swd_initial      {s['swd_initial']:.1f}  (SWD x1e3 of the untrained generator)",
               f"  swd_final        {s['swd_final']:.1f}  ({100 * s['swd_ratio']:.0f}% of initial)"]
    else:
        swd = ["  swd_initial      n/a", "  swd_final        n/a"]
    mix = " / ".join(f"{v:.2f}" for v in s["shape_mix"])
    lines = ["", "=" * 72, "TransGAN demo finished",
             f"  run dir          {s['run_dir']}",
             f"  trained          {s['steps']} steps, {s['kimg']} kimg in {s['seconds']} s "
             f"(+{s['measure_seconds']} s measuring)",
             f"  precision        {s['precision']}",
             *swd,
             f"  shape_accuracy   {s['shape_accuracy']:.2f}  (samples that are a clear shape; "
             f"real images: {s['shape_accuracy_reals']:.2f})",
             *([f"  kind_accuracy    {s['kind_accuracy']:.2f}  (samples that are a clear shape of "
                f"the kind asked for)"] if s.get("kind_accuracy") is not None else []),
             f"  shapes           circle / square / triangle {mix}",
             f"  samples | reals  {s['samples']}",
             f"  curves           {s['curves']}",
             "=" * 72]
    return "\n".join(lines)
