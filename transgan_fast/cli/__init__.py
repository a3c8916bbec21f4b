"""The `transgan-fast` command: train, generate, export, demo, info, selftest, bench, convert.

    transgan-fast demo                      # a small TransGAN on built-in shapes, a few CPU minutes
    transgan-fast train --preset cifar10 --data cifar10:~/cifar-10-batches-py   # the released run
    torchrun --nproc_per_node 8 -m transgan_fast.cli train ...   # data parallel, same options
    transgan-fast generate --checkpoint runs/00000-.../ckpt-000001000.pt --seeds 0-63
    transgan-fast export --checkpoint runs/00000-... --format pt2 --out g.pt2   # docs/export.md
    transgan-fast info                      # which kernel backends are built and usable here
    transgan-fast selftest                  # every backend against the reference, as a table
    transgan-fast convert --official cifar_checkpoint.pth --preset cifar10 --out runs/released
    transgan-fast fit-control --checkpoint runs/00001-...-ctrl   # then generate --set colour=cyan

This module holds the command group, the shared option helpers, `train` and `demo`;
`generate.py` holds sampling, export and the GAN-Control commands, `tools.py` the backend and
checkpoint tools.
"""
from __future__ import annotations

import json
import os
import sys

# OpenMP threads that wait for work spin, by default for about 300,000 iterations. Beside another
# CPU-bound process the spinning threads of both fight for the cores: 20 demo training steps took
# 131 s beside a 2-thread matmul loop, 29 s with a spin count of 1000; idle, 40 steps took
# 19.5-20.8 s either way. OpenMP reads this once, when torch loads it, so it is set here,
# before anything imports torch (the package imports torch lazily). A policy the user chose
# (OMP_WAIT_POLICY or GOMP_SPINCOUNT) is kept. The variable is GNU OpenMP's (Linux torch wheels).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

try:
    import click
except ImportError as exc:  # a kernels-only install: the CLI's dependencies are an extra
    sys.exit(f"transgan-fast: the command line needs click ({exc}); install it with "
             f"pip install 'transgan_fast[cli]' (or 'transgan_fast[train]' to train)")

__all__ = ["main"]

CTX = dict(help_option_names=["-h", "--help"], show_default=True, max_content_width=110)
BACKENDS = ("auto", "ref", "cpu", "cuda", "triton")  # ops._dispatch.BACKENDS + auto (no torch import here)
NOISE_MODES = ("const", "random", "none")  # train.sample.NOISE_MODES
# Errors a user's input or files can cause: one line, exit status 1 (`--debug`: the traceback).
USER_ERRORS = (ValueError, OSError, RuntimeError, EOFError)


class _Main(click.Group):
    """The command group. User errors raised by a subcommand become one `Error: ...` line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except USER_ERRORS as exc:
            if ctx.params.get("debug"):
                raise
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise click.ClickException(f"{lines[0]} (--debug shows the traceback)") from exc


def _require_train_extra() -> None:
    """One clear line instead of an ImportError deep in the trainer when the extra is missing."""
    import importlib.util
    missing = [m for m in ("PIL", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"this command needs the 'train' extra (missing: "
                                   f"{', '.join(missing)}): pip install 'transgan_fast[train]'")


def _parse_seeds(text: str):
    """'0-3,7' -> [0, 1, 2, 3, 7]; raises ValueError on anything else."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{part!r} is not a seed or a range: use non-negative integers, "
                             f"e.g. '0-15' or '1,5,9'")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"range {part!r} is reversed; write {b}-{a}")
        if b >= 2 ** 32:
            raise ValueError(f"seed {b} is too large; seeds must be < 2**32")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError(f"no seeds in {text!r}; use e.g. '0-15' or '1,5,9'")
    return out


def _json_object(text: str) -> dict:
    """--model-json: a JSON object of model config overrides."""
    try:
        model = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--model-json")
    if not isinstance(model, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--model-json")
    return model


def _seeds_option(ctx, param, value):
    try:
        return _parse_seeds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param)


def _device_option(ctx, param, value):
    if value == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise click.BadParameter("cuda: no CUDA device is available here (use cpu or auto)",
                                     ctx, param)
    return value


@click.group(cls=_Main, context_settings=CTX)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error [default: off].")
def main(debug):
    """TransGAN with fused attention kernels: train, sample, inspect backends, benchmark."""


@main.command(context_settings=CTX)
@click.option("--preset", default="cifar10", help="Model and recipe preset (models.PRESETS).")
@click.option("--data", default="shapes", help="'shapes' or 'shapes-centred' (built-in; the second "
              "puts every shape in the middle), an image folder, a .zip, "
              "'cifar10:<dir of python batches>' or 'stl10:<*_X.bin or dir>'.")
@click.option("--outdir", default="runs", help="Parent directory of run directories.")
@click.option("--kimg", type=float, default=None, help="Train for this many thousand real images "
              "[default: the released run's: cifar10 128000, stl10 80000, church256/celebahq256 32000].")
@click.option("--resolution", type=int, default=None, help="Image size the data is resized to; must "
              "match the model [default: preset's].")
@click.option("--batch", type=int, default=None, help="Global D batch [default: preset's].")
@click.option("--g-batch", type=int, default=None, help="Global G batch [default: 2 x batch].")
@click.option("--n-critic", type=int, default=None, help="D steps per G step [default: preset's].")
@click.option("--accum-d", type=int, default=None, help="Gradient-accumulation rounds per D step [default: preset's].")
@click.option("--accum-g", type=int, default=None, help="Gradient-accumulation rounds per G step [default: preset's].")
@click.option("--loss", type=click.Choice(["wgangp-eps", "hinge", "ns"]), default="wgangp-eps",
              help="GAN loss.")
@click.option("--gp-weight", type=float, default=10.0, help="Gradient-penalty weight (wgangp-eps).")
@click.option("--drift", type=float, default=1e-3, help="Drift weight eps (wgangp-eps).")
@click.option("--r1-gamma", type=float, default=0.0, help="R1 penalty on real images, "
              "gamma/2 * E|grad D(x)|^2, with any loss (0: off).")
@click.option("--r1-every", type=int, default=1, help="Lazy R1: apply the penalty every this "
              "many D steps, weighted by that factor (StyleGAN2's lazy regularisation).")
@click.option("--lr-g", type=float, default=1e-4, help="Generator Adam learning rate.")
@click.option("--lr-d", type=float, default=1e-4, help="Discriminator Adam learning rate.")
@click.option("--lr-decay/--no-lr-decay", default=False, help="Both learning rates fall linearly "
              "to 0 over the run (the official --lr_decay) [default: off].")
@click.option("--lr-decay-start", type=float, default=0.0, help="With --lr-decay: the fraction of "
              "the run after which the decay starts (the official code: 0).")
@click.option("--grad-clip", type=float, default=5.0, help="Gradient-norm clip (0: off).")
@click.option("--diffaug", default=None, help="DiffAugment policy, e.g. 'translation,cutout,color'; "
              "'' for none [default: preset's].")
@click.option("--ema-kimg", type=float, default=500.0, help="EMA half-life in kimg.")
@click.option("--ema-rampup", type=float, default=None, help="EMA ramp-up ratio [default: preset's].")
@click.option("--ema-beta", type=float, default=None, help="Constant EMA beta, overriding the half-life rule [default: none].")
@click.option("--locality/--no-locality", default=False, help="v1 locality-aware attention schedule.")
@click.option("--sr-weight", type=float, default=0.0, help="v1 super-resolution co-training weight.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              help="Autocast dtype (CPU and GPU); auto: bfloat16 where the GPU supports it or the "
              "CPU has AMX-BF16/AVX512-BF16, else float32. Weights stay float32.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              callback=_device_option, help="Training device.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto",
              help="Kernel backend for the models (see `info`).")
@click.option("--model-json", default="{}", help="JSON dict of model config overrides, e.g. "
              "'{\"g_depths\": [1, 1, 1]}'.")
@click.option("--cond", type=click.Choice(["none", "class"]), default="none",
              help="'class': class-conditional training (class embedding into G's latent and a "
              "per-stage conditional scale/shift of its norms; projection D) on the data's labels: "
              "shapes (shape kind), CIFAR-10 batches, STL-10 train_X/train_y.bin, or a folder/zip "
              "with one subfolder per class (sorted names).")
@click.option("--num-classes", type=int, default=None, help="Number of classes with --cond class "
              "[default: the data's].")
@click.option("--control", default="", help="GAN-Control: comma list of attributes, each with a "
              "latent sub-space and a frozen attribute network: a built-in name of the shapes data "
              "(kind, colour, size, position, background) or name=module:callable returning an "
              "nn.Module (images -> embedding). docs/control.md [default: none].")
@click.option("--control-dim", type=int, default=8, help="Latent entries per controlled attribute "
              "(the rest of the latent is free).")
@click.option("--control-weight", type=float, default=1.0, help="Weight of each attribute's "
              "contrastive loss in G's loss.")
@click.option("--control-pos-margin", type=float, default=0.05, help="Pairs sharing a sub-space "
              "are pulled within this embedding distance.")
@click.option("--control-neg-margin", type=float, default=0.25, help="Pairs not sharing it are "
              "pushed beyond this embedding distance.")
@click.option("--control-start", type=float, default=0.0, help="Fraction of the run before the "
              "contrastive losses start (the GAN alone until then).")
@click.option("--control-net-steps", type=int, default=400, help="Adam steps that train each "
              "built-in attribute network on the data's labels when the run starts.")
@click.option("--seed", type=int, default=0, help="Seeds everything: model init, noise, data order, "
              "augmentation (same seed, same run on the same machine and thread count).")
@click.option("--mirror/--no-mirror", default=True, help="Random horizontal flips of the reals.")
@click.option("--tick-kimg", type=float, default=4.0, help="Progress line every this many kimg.")
@click.option("--snapshot-ticks", type=int, default=10, help="Checkpoint + grid + metrics every N ticks.")
@click.option("--keep-ckpt", type=int, default=3, help="Checkpoints to keep.")
@click.option("--metrics", default="swd", help="Comma list of swd, fid, is ('' for none).")
@click.option("--metric-n", type=int, default=2048, help="Images per metric evaluation.")
@click.option("--inception-weights", default=None, help="Local Inception checkpoint for FID/IS [default: none].")
@click.option("--resume", default="auto", help="'auto' (newest run with the same options), 'none', a "
              "run dir or a checkpoint file (an older checkpoint continues in a new run dir).")
@click.option("--max-minutes", type=float, default=None, help="Stop (with a snapshot) after this much wall time [default: none].")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and exit [default: off].")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def train(outdir, resume, dry_run, model_json, mirror, max_minutes, progress, **opts):
    """Train TransGAN (single process, or every rank under torchrun)."""
    _require_train_extra()
    from ..train.config import resolve_config
    from ..train.runner import run_training
    model = _json_object(model_json)
    try:
        cfg = resolve_config(model=model, flip=mirror, **opts)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    run_training(cfg, outdir, resume=None if resume == "none" else resume, dry_run=dry_run,
                 progress=progress, max_seconds=max_minutes * 60 if max_minutes else None)


@main.command(context_settings=CTX)
@click.option("--outdir", default="runs", help="Parent directory of the demo's run directory.")
@click.option("--kimg", type=float, default=None,
              help="Run length in thousands of images shown to D (fixed work, so the result does "
              "not depend on machine load) [default: 24; 0.2 with --quick].")
@click.option("--quick", is_flag=True, help="A tiny model for a few seconds (tests, smoke checks) [default: off].")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", help="Kernel backend.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="fp32",
              help="Autocast dtype (auto: bfloat16 where the CPU has AMX-BF16/AVX512-BF16 or the "
              "GPU supports it). bfloat16 was not faster for the demo's small model, even with "
              "AMX-BF16, so the default is float32.")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def demo(outdir, kimg, quick, seed, backend, precision, progress):
    """Train a small class-conditional TransGAN (class = circle, square or triangle) on built-in
    shapes for a fixed amount of work; write samples beside real images, curves, and a summary
    with SWD, the fraction of clear shapes and the fraction of the kind asked for."""
    _require_train_extra()
    from ..train.demo import format_summary, run_demo
    summary = run_demo(outdir, kimg, quick, seed, backend, progress, precision)
    with open(os.path.join(summary["run_dir"], "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    click.echo(format_summary(summary))



# The other commands register themselves on `main` when their modules load.
from . import generate, tools  # noqa: E402,F401
