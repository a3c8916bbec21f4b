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
@click.option("--data", default="shapes", help="'shapes' (built-in), an image folder, a .zip, "
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
    from .train.config import resolve_config
    from .train.runner import run_training
    model = _json_object(model_json)
    try:
        cfg = resolve_config(model=model, flip=mirror, **opts)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    run_training(cfg, outdir, resume=None if resume == "none" else resume, dry_run=dry_run,
                 progress=progress, max_seconds=max_minutes * 60 if max_minutes else None)


@main.command(context_settings=CTX)
@click.option("--checkpoint", "ckpt", default=None, help="A ckpt-*.pt file or a run directory "
              "(its newest readable checkpoint) [default: none; give it or --exported].")
@click.option("--exported", default=None, help="Run an exported .pt2 or .onnx generator "
              "(`transgan-fast export`) instead of a checkpoint [default: none].")
@click.option("--seeds", default="0-63", callback=_seeds_option,
              help="Latent seeds, e.g. '0-63' or '1,5,9'.")
@click.option("--out", default="samples.png", help="PNG grid path, or a directory with --files.")
@click.option("--files", is_flag=True, help="Write one PNG per seed into --out instead of a grid [default: off].")
@click.option("--raw", is_flag=True, help="Use the raw generator instead of the EMA one [default: off].")
@click.option("--class", "class_", type=int, default=None, help="Class to generate with a "
              "class-conditional checkpoint [default: a grid with one row per class, one column "
              "per seed].")
@click.option("--set", "set_", default=None, help="Attribute values of a controlled checkpoint, "
              "e.g. 'colour=yellow,size=0.7' (a class name or index, or a number), through the "
              "encoders of `fit-control` [default: none].")
@click.option("--encoders", default=None, help="Control encoders for --set [default: control.pt "
              "beside the checkpoint].")
@click.option("--noise-mode", type=click.Choice(NOISE_MODES), default="const",
              help="Attention noise of models that have it: 'const' derives it from each image's "
              "seed (same seed, same image), 'random' draws fresh noise every call, 'none' turns it off.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", help="Kernel backend.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              callback=_device_option, help="Device.")
def generate(ckpt, exported, seeds, out, files, raw, class_, set_, encoders, noise_mode, backend,
             device):
    """Sample images from a checkpoint (EMA generator) or an exported generator."""
    _require_train_extra()
    import torch
    from .train.sample import generate_images, load_generator, num_classes_of
    from .train.logging import save_grid
    from .train.checkpoint import list_checkpoints
    if (ckpt is None) == (exported is None):
        raise click.UsageError("give exactly one of --checkpoint and --exported")
    if exported is not None:
        if class_ is not None or set_ is not None:
            raise click.BadParameter("exported generators are unconditional",
                                     param_hint="--class" if class_ is not None else "--set")
        _check_out(out, files)
        return _generate_exported(exported, seeds, out, files, device)
    if not os.path.exists(ckpt) or (os.path.isdir(ckpt) and not list_checkpoints(ckpt)):
        raise click.BadParameter(f"no checkpoint at {ckpt!r}", param_hint="--checkpoint")
    _check_out(out, files)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                       else "cpu")
    G, path, notes = load_generator(ckpt, backend, raw, dev)
    for line in notes:
        click.echo(line, err=True)
    k = num_classes_of(G)
    if class_ is not None and not k:
        raise click.BadParameter(f"{class_}: {path} holds an unconditional generator (trained "
                                 f"without --cond class)", param_hint="--class")
    if class_ is not None and not 0 <= class_ < k:
        raise click.BadParameter(f"{class_} is out of range: the generator of {path} has {k} "
                                 f"classes, 0-{k - 1}", param_hint="--class")
    classes, names = None, [f"seed{s:05d}" for s in seeds]
    if k:  # one class, or every class: rows are classes, columns seeds
        kinds = [class_] if class_ is not None else list(range(k))
        classes = [c for c in kinds for _ in seeds]
        names = [f"seed{s:05d}-class{c}" for c in kinds for s in seeds]
        seeds = [s for _ in kinds for s in seeds]
    latents = _set_latents(G, path, set_, encoders, seeds) if set_ is not None else None
    imgs = generate_images(G, seeds, noise_mode, dev, classes=classes, latents=latents)
    if files:
        os.makedirs(out, exist_ok=True)
        for name, img in zip(names, imgs):
            save_grid(img[None], os.path.join(out, f"{name}.png"), nrow=1)
        click.echo(f"wrote {len(names)} images from {path} to {out}/")
    else:
        save_grid(imgs, out, **({"nrow": len(seeds) // len(kinds)} if k else {}))
        click.echo(f"wrote a grid of {len(names)} images from {path} to {out}")


def _set_latents(G, path, text, encoders, seeds):
    """The seeds' latents with the sub-spaces of `--set` filled by the control encoders."""
    import torch
    from .train import checkpoint as ck
    from .train.control_fit import load_control, load_encoders, parse_set, set_latents
    enc_path = encoders or os.path.join(os.path.dirname(os.path.abspath(path)), "control.pt")
    if not os.path.isfile(enc_path):
        raise click.BadParameter(f"no control encoders at {enc_path!r}: run transgan-fast "
                                 f"fit-control --checkpoint {path} first", param_hint="--encoders")
    layout, nets = load_control(ck.load_checkpoint(path), G.latent_dim)
    enc_layout, encs = load_encoders(enc_path)
    if (enc_layout.names, enc_layout.dim) != (layout.names, layout.dim):
        raise click.BadParameter(f"{enc_path} was fitted for {enc_layout.names} x {enc_layout.dim}; "
                                 f"{path} controls {layout.names} x {layout.dim}",
                                 param_hint="--encoders")
    z = torch.stack([torch.randn(G.latent_dim, generator=torch.Generator().manual_seed(s))
                     for s in seeds])
    return set_latents(z, layout, encs, parse_set(text, nets, layout))


def _check_out(out: str, files: bool) -> None:
    """--out must be writable before any work: a PNG-like file name in an existing directory, or
    with --files a directory (made if missing) whose parent exists."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"{out!r}: directory {parent!r} does not exist", param_hint="--out")
    if files:
        if os.path.exists(out) and not os.path.isdir(out):
            raise click.BadParameter(f"{out!r} is a file; --files writes into a directory",
                                     param_hint="--out")
        return
    if os.path.isdir(out):
        raise click.BadParameter(f"{out!r} is a directory; give a file name such as "
                                 f"{os.path.join(out, 'samples.png')!r} or add --files",
                                 param_hint="--out")
    from PIL import Image
    ext = os.path.splitext(out)[1].lower()
    if Image.registered_extensions().get(ext) not in Image.SAVE:
        raise click.BadParameter(f"{out!r} needs an image extension PIL can write, e.g. .png",
                                 param_hint="--out")


def _generate_exported(exported, seeds, out, files, device):
    """`generate --exported`: the same seeds and image files, from a .pt2 or .onnx artefact."""
    import torch
    from .deploy import ExportError, load_exported
    from .train.logging import save_grid
    try:
        gen = load_exported(exported, device="cuda" if device == "cuda" else "cpu")
    except ExportError as exc:
        raise click.ClickException(str(exc))
    seed_list = seeds  # parsed by the --seeds callback
    # The same latents as `generate --checkpoint` (train/sample.py): one generator per seed.
    z = torch.stack([torch.randn(gen.latent_dim, generator=torch.Generator().manual_seed(s))
                     for s in seed_list])
    imgs = gen(z)
    if files:
        os.makedirs(out, exist_ok=True)
        for s, img in zip(seed_list, imgs):
            save_grid(img[None], os.path.join(out, f"seed{s:05d}.png"), nrow=1)
    else:
        save_grid(imgs, out)
    click.echo(f"wrote {len(seed_list)} images from {exported} to {out}")


@main.command(context_settings=CTX)
@click.option("--checkpoint", "ckpt", required=True, help="A ckpt-*.pt file or a run directory "
              "(its newest checkpoint).")
@click.option("--format", "fmt", required=True, help="'pt2' (AOTInductor package) or 'onnx'.")
@click.option("--out", required=True, help="Output file (.pt2 or .onnx); a .json sidecar is "
              "written beside it.")
@click.option("--ema/--no-ema", default=True, help="Export the EMA generator (or the raw one).")
@click.option("--batch", type=int, default=None, help="Fixed batch size [default: dynamic batch].")
@click.option("--dynamic-batch", is_flag=True, help="Dynamic batch 1..4096; also what you get "
              "without --batch [default: off].")
@click.option("--device", default="cpu", help="'cpu' or 'cuda' (pt2 only: Triton kernels inside).")
@click.option("--noise", default="random", help="Attention-noise layers: 'random' (fresh draws "
              "per call) or 'zero' (switched off).")
@click.option("--verify/--no-verify", default=True, help="Run the artefact on 3 latents and record "
              "its distance to eager G in the sidecar ('check').")
def export(ckpt, fmt, out, ema, batch, dynamic_batch, device, noise, verify):
    """Export the generator (latent in, image out) as a .pt2 package or ONNX (docs/export.md)."""
    from .deploy import ExportError, export_generator, load_generator
    from .deploy.export import check_target
    try:
        if batch is not None and dynamic_batch:
            raise ExportError(f"--batch {batch} and --dynamic-batch exclude each other")
        check_target(fmt, out, device, batch)  # before the (slow) load, so typos fail at once
        G, info = load_generator(ckpt, ema=ema)
        slow = "; AOTInductor compiles for minutes on a CPU" if fmt == "pt2" else ""
        click.echo(f"exporting the {info['preset']} generator ({info['weights']}, step "
                   f"{info['step']}) to {fmt}{slow}")
        meta = export_generator(G, fmt, out, batch=batch, device=device, noise=noise, info=info,
                                check=verify)
    except ExportError as exc:
        raise click.ClickException(str(exc))
    chk = meta.get("check", {})
    note = (f"; max |exported - eager| = {chk['max_abs_diff_vs_eager']:.2e} on {chk['latents']} latents"
            if chk.get("ran") else f"; not checked: {chk['reason']}" if chk else "")
    click.echo(f"wrote {out} and {out}.json{note}")


@main.command(context_settings=CTX)
@click.option("--outdir", default="runs", help="Parent directory of the demo's run directory.")
@click.option("--kimg", type=float, default=None,
              help="Run length in thousands of images shown to D (fixed work, so the result does "
              "not depend on machine load) [default: 50; 0.2 with --quick].")
@click.option("--quick", is_flag=True, help="A tiny model for a few seconds (tests, smoke checks) [default: off].")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", help="Kernel backend.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="fp32",
              help="Autocast dtype (auto: bfloat16 where the CPU has AMX-BF16/AVX512-BF16 or the "
              "GPU supports it). bfloat16 has not been measured faster for the demo's small model, "
              "so the default is float32.")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def demo(outdir, kimg, quick, seed, backend, precision, progress):
    """Train a small TransGAN on built-in shapes for a fixed amount of work; write samples beside
    real images, curves, and a summary with SWD and the fraction of clear shapes."""
    _require_train_extra()
    from .train.demo import format_summary, run_demo
    summary = run_demo(outdir, kimg, quick, seed, backend, progress, precision)
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
@click.option("--device", "devices", multiple=True, help="Device to check (repeatable) "
              "[default: cpu and cuda].")
@click.option("--backend", "names", multiple=True, type=click.Choice(["cpu", "cuda", "triton"]),
              help="Backend to check (repeatable) [default: all].")
def selftest(devices, names):
    """Check every fused backend against the float64 reference on this machine (exit 1 on a
    mismatch). `auto` runs the same check before it first uses a GPU backend."""
    from .ops import selftest as st
    results = st.run_all(list(devices) or None, list(names) or None)
    rows = [("backend", "family", "dtype", "device", "result", "error", "tolerance", "detail")]
    for r in results:
        verdict = {True: "ok", False: "FAIL", None: "skipped"}[r.ok]
        num = (lambda x: "-" if x != x else f"{x:.1e}")  # noqa: E731  (NaN: not measured)
        dtype = "*" if r.dtype is None else str(r.dtype).replace("torch.", "")
        rows.append((r.backend, r.family, dtype, r.device, verdict,
                     num(r.error), num(r.tolerance), r.detail or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:7], widths)) + "  " + row[7])
    failed = [r for r in results if r.ok is False]
    ran = sum(r.ok is not None for r in results)
    click.echo(f"{ran} checks ran, {len(failed)} failed, {len(results) - ran} skipped")
    if failed:
        sys.exit(1)


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


@main.command(context_settings=CTX)
@click.option("--official", "official", required=True, help="A checkpoint of the released TransGAN "
              "code (VITA-Group/TransGAN): gen_state_dict, avg_gen_state_dict, dis_state_dict.")
@click.option("--preset", required=True, help="Its preset: cifar10, stl10, church256 or celebahq256.")
@click.option("--out", "out_dir", required=True, help="Run directory to write ckpt-<step>.pt into.")
@click.option("--images-seen", type=int, default=None, help="Real images the released run had "
              "shown D [default: epoch x the released loader's iterations x D batch].")
@click.option("--model-json", default="{}", help="JSON dict of model config overrides, for a "
              "shrunken model of the same layout (pass the same to `train --resume`).")
def convert(official, preset, out_dir, images_seen, model_json):
    """Convert a released TransGAN checkpoint for `generate` and `train --resume`."""
    from .train.convert import convert_official
    model = _json_object(model_json)
    try:
        path = convert_official(official, preset, out_dir, images_seen, model)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc))
    click.echo(f"wrote {path}")


@main.command("fit-control", context_settings=CTX)
@click.option("--checkpoint", "ckpt", required=True, help="A checkpoint of a `train --control` run, "
              "or its run directory (the newest readable checkpoint).")
@click.option("--out", default=None, help="Where to write the encoders [default: control.pt in the "
              "checkpoint's directory].")
@click.option("--n", "n", type=int, default=4096, help="Generated images the encoders learn from.")
@click.option("--steps", type=int, default=1000, help="Adam steps per encoder.")
@click.option("--seed", type=int, default=0, help="Seed of the latents and the encoders' training.")
@click.option("--raw", is_flag=True, help="Fit to the raw generator instead of the EMA one [default: off].")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", help="Kernel backend.")
def fit_control_cmd(ckpt, out, n, steps, seed, raw, backend):
    """Train control encoders (attribute value -> sub-space latent) for `generate --set`."""
    _require_train_extra()
    from .train.control_fit import fit_control, load_control, save_encoders
    from .train.sample import load_generator
    from .train import checkpoint as ck
    if not os.path.exists(ckpt):
        raise click.BadParameter(f"no checkpoint at {ckpt!r}", param_hint="--checkpoint")
    G, path, notes = load_generator(ckpt, backend, raw)
    for line in notes:
        click.echo(line, err=True)
    layout, nets = load_control(ck.load_checkpoint(path), G.latent_dim)
    out = out or os.path.join(os.path.dirname(os.path.abspath(path)), "control.pt")
    encs = fit_control(G, nets, layout, n=n, steps=steps, seed=seed)
    save_encoders(out, layout, encs, source=os.path.abspath(path))
    click.echo(f"wrote control encoders for {', '.join(layout.names)} ({n} samples of {path}) "
               f"to {out}")


@main.command("control-demo", context_settings=CTX)
@click.option("--outdir", default="runs", help="Parent directory of the two run directories.")
@click.option("--minutes", type=float, default=11.0, help="Training wall time of each run (the "
              "attribute networks train before it).")
@click.option("--baseline/--no-baseline", default=True, help="Also train the uncontrolled baseline "
              "(as long again) and measure it the same way.")
@click.option("--quick", is_flag=True, help="A tiny model for a few seconds (tests, smoke "
              "checks) [default: off].")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def control_demo(outdir, minutes, baseline, quick, seed, progress):
    """GAN-Control on the shapes: train (colour, background, size), fit encoders, measure control
    accuracy and disentanglement against an uncontrolled baseline, write control_grid.png."""
    _require_train_extra()
    from .train.control_demo import format_report, run_control_demo
    res = run_control_demo(outdir, minutes, quick, seed, baseline, progress)
    click.echo(format_report(res))
    click.echo(f"wrote {res['grid']} and control.json beside it")


if __name__ == "__main__":
    main()
