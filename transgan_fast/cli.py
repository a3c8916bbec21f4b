"""The `transgan-fast` command: train, generate, demo, info, bench.

    transgan-fast demo                      # a small TransGAN on built-in shapes, a few CPU minutes
    transgan-fast train --preset cifar10 --data cifar10:~/cifar-10-batches-py --kimg 50000
    torchrun --nproc_per_node 8 -m transgan_fast.cli train ...   # data parallel, same options
    transgan-fast generate --checkpoint runs/00000-.../ckpt-000001000.pt --seeds 0-63
    transgan-fast info                      # which kernel backends are built and usable here
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

try:
    import click
except ImportError as exc:  # a kernels-only install: the CLI's dependencies are an extra
    sys.exit(f"transgan-fast: the command line needs click ({exc}); install it with "
             f"pip install 'transgan_fast[cli]' (or 'transgan_fast[train]' to train)")

__all__ = ["main"]

CTX = dict(help_option_names=["-h", "--help"], show_default=True, max_content_width=110)


def _require_train_extra() -> None:
    """One clear line instead of an ImportError deep in the trainer when the extra is missing."""
    import importlib.util
    missing = [m for m in ("PIL", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"this command needs the 'train' extra (missing: "
                                   f"{', '.join(missing)}): pip install 'transgan_fast[train]'")


def _parse_seeds(text: str):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if not out:
        raise click.BadParameter(f"no seeds in {text!r}; use e.g. '0-15' or '1,5,9'")
    return out


@click.group(context_settings=CTX)
def main():
    """TransGAN with fused attention kernels: train, sample, inspect backends, benchmark."""


@main.command(context_settings=CTX)
@click.option("--preset", default="cifar10", help="Model and recipe preset (models.PRESETS).")
@click.option("--data", default="shapes", help="'shapes' (built-in), an image folder, a .zip, "
              "'cifar10:<dir of python batches>' or 'stl10:<*_X.bin or dir>'.")
@click.option("--outdir", default="runs", help="Parent directory of run directories.")
@click.option("--kimg", type=float, default=1000.0, help="Train for this many thousand real images.")
@click.option("--batch", type=int, default=None, help="Global D batch [default: preset's].")
@click.option("--g-batch", type=int, default=None, help="Global G batch [default: 2 x batch].")
@click.option("--n-critic", type=int, default=None, help="D steps per G step [default: preset's].")
@click.option("--accum-d", type=int, default=None, help="Gradient-accumulation rounds per D step [default: preset's].")
@click.option("--accum-g", type=int, default=None, help="Gradient-accumulation rounds per G step [default: preset's].")
@click.option("--loss", type=click.Choice(["wgangp-eps", "hinge", "ns"]), default="wgangp-eps",
              help="GAN loss.")
@click.option("--gp-weight", type=float, default=10.0, help="Gradient-penalty weight (wgangp-eps).")
@click.option("--drift", type=float, default=1e-3, help="Drift weight eps (wgangp-eps).")
@click.option("--lr-g", type=float, default=1e-4, help="Generator Adam learning rate.")
@click.option("--lr-d", type=float, default=1e-4, help="Discriminator Adam learning rate.")
@click.option("--grad-clip", type=float, default=5.0, help="Gradient-norm clip (0: off).")
@click.option("--diffaug", default=None, help="DiffAugment policy, e.g. 'translation,cutout,color'; "
              "'' for none [default: preset's].")
@click.option("--ema-kimg", type=float, default=500.0, help="EMA half-life in kimg.")
@click.option("--ema-rampup", type=float, default=None, help="EMA ramp-up ratio [default: preset's].")
@click.option("--ema-beta", type=float, default=None, help="Constant EMA beta, overriding the half-life rule [default: none].")
@click.option("--locality/--no-locality", default=False, help="v1 locality-aware attention schedule.")
@click.option("--sr-weight", type=float, default=0.0, help="v1 super-resolution co-training weight.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast dtype on GPU (CPU runs float32).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="Training device.")
@click.option("--backend", default="auto", help="Kernel backend for the models (see `info`).")
@click.option("--model-json", default="{}", help="JSON dict of model config overrides, e.g. "
              "'{\"g_depths\": [1, 1, 1]}'.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--mirror/--no-mirror", default=True, help="Random horizontal flips of the reals.")
@click.option("--tick-kimg", type=float, default=4.0, help="Progress line every this many kimg.")
@click.option("--snapshot-ticks", type=int, default=10, help="Checkpoint + grid + metrics every N ticks.")
@click.option("--keep-ckpt", type=int, default=3, help="Checkpoints to keep.")
@click.option("--metrics", default="swd", help="Comma list of swd, fid, is ('' for none).")
@click.option("--metric-n", type=int, default=2048, help="Images per metric evaluation.")
@click.option("--inception-weights", default=None, help="Local Inception checkpoint for FID/IS [default: none].")
@click.option("--resume", default="auto", help="'auto' (newest matching run), 'none', a run dir "
              "or a checkpoint file.")
@click.option("--max-minutes", type=float, default=None, help="Stop (with a snapshot) after this much wall time [default: none].")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and exit [default: off].")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def train(outdir, resume, dry_run, model_json, mirror, max_minutes, progress, **opts):
    """Train TransGAN (single process, or every rank under torchrun)."""
    _require_train_extra()
    from .train.config import resolve_config
    from .train.runner import run_training
    try:
        model = json.loads(model_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--model-json")
    if not isinstance(model, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--model-json")
    try:
        cfg = resolve_config(model=model, flip=mirror, **opts)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    run_training(cfg, outdir, resume=None if resume == "none" else resume, dry_run=dry_run,
                 progress=progress, max_seconds=max_minutes * 60 if max_minutes else None)


@main.command(context_settings=CTX)
@click.option("--checkpoint", "ckpt", required=True, help="A ckpt-*.pt file or a run directory "
              "(its newest checkpoint).")
@click.option("--seeds", default="0-63", help="Latent seeds, e.g. '0-63' or '1,5,9'.")
@click.option("--out", default="samples.png", help="PNG grid path, or a directory with --files.")
@click.option("--files", is_flag=True, help="Write one PNG per seed into --out instead of a grid [default: off].")
@click.option("--raw", is_flag=True, help="Use the raw generator instead of the EMA one [default: off].")
@click.option("--backend", default="auto", help="Kernel backend.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Device.")
def generate(ckpt, seeds, out, files, raw, backend, device):
    """Sample images from a checkpoint (EMA generator)."""
    _require_train_extra()
    import torch
    from .train import checkpoint as ck
    from .train.config import TrainConfig
    from .train.logging import save_grid
    from .train.runner import build_models
    path = ck.latest_checkpoint(ckpt) if os.path.isdir(ckpt) else ckpt
    if not path or not os.path.isfile(path):
        raise click.BadParameter(f"no checkpoint at {ckpt!r}", param_hint="--checkpoint")
    state = ck.load_checkpoint(path)
    cfg = TrainConfig.from_dict({**state["config"], "backend": backend})
    G, _ = build_models(cfg)
    G.load_state_dict(state["G" if raw else "G_ema"])
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                       else "cpu")
    G = G.to(dev).eval()
    if hasattr(G, "set_progress"):
        G.set_progress(float(state.get("epoch", 0.0)))
    seed_list = _parse_seeds(seeds)
    z = torch.stack([torch.randn(G.latent_dim, generator=torch.Generator().manual_seed(s))
                     for s in seed_list])
    with torch.no_grad():
        imgs = torch.cat([G(zz.to(dev)).float().clamp(-1, 1).cpu() for zz in z.split(32)])
    if files:
        os.makedirs(out, exist_ok=True)
        for s, img in zip(seed_list, imgs):
            save_grid(img[None], os.path.join(out, f"seed{s:05d}.png"), nrow=1)
        click.echo(f"wrote {len(seed_list)} images to {out}/")
    else:
        save_grid(imgs, out)
        click.echo(f"wrote a grid of {len(seed_list)} images to {out}")


@main.command(context_settings=CTX)
@click.option("--outdir", default="runs", help="Parent directory of the demo's run directory.")
@click.option("--minutes", type=float, default=4.0, help="Training wall time (ignored with --kimg).")
@click.option("--kimg", type=float, default=None, help="Train for this many kimg instead of a time [default: none].")
@click.option("--quick", is_flag=True, help="A tiny model for a few seconds (tests, smoke checks) [default: off].")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--backend", default="auto", help="Kernel backend.")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def demo(outdir, minutes, kimg, quick, seed, backend, progress):
    """Train a small TransGAN on built-in shapes; write sample grids, curves and a summary."""
    _require_train_extra()
    from .train.demo import format_summary, run_demo
    summary = run_demo(outdir, minutes, kimg, quick, seed, backend, progress)
    with open(os.path.join(summary["run_dir"], "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    click.echo(format_summary(summary))


@main.command(context_settings=CTX)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table [default: off].")
def info(as_json):
    """Kernel backends: built, usable here, why not, and which kernels each provides."""
    import torch
    from . import __version__, backends
    table = backends()
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    click.echo(f"transgan_fast {__version__}, torch {torch.__version__}, "
               f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    rows = [("backend", "built", "usable", "reason", "ops")]
    for name, r in table.items():
        rows.append((name, "yes" if r["built"] else "no", "yes" if r["usable"] else "no",
                     r["reason"] or "-", ", ".join(r["ops"]) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    cpu = table["cpu"]
    if "openmp" in cpu:
        click.echo(f"cpu kernels: {'OpenMP' if cpu['openmp'] else 'serial (built without OpenMP)'}, "
                   f"{cpu['threads']} thread{'s' if cpu['threads'] != 1 else ''}, SIMD {cpu['simd']}")


@main.command(context_settings=CTX)
@click.option("-k", "keyword", default=None, help="Only benchmarks matching this pytest -k expression [default: all].")
@click.option("--path", default="benchmarks", help="Benchmark directory.")
def bench(keyword, path):
    """Run the pytest-benchmark suites (pytest <path> --benchmark-only)."""
    if not os.path.isdir(path):
        raise click.UsageError(f"benchmark directory {path!r} not found (run from the repository root)")
    cmd = [sys.executable, "-m", "pytest", path, "--benchmark-only", "-q"]
    if keyword:
        cmd += ["-k", keyword]
    click.echo(" ".join(cmd))
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
