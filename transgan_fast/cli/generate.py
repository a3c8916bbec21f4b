"""`transgan-fast generate`, `export`, `fit-control` and `control-demo`: everything that samples
a trained generator, ships it, or steers it."""
from __future__ import annotations

import os

import click

from . import BACKENDS, CTX, NOISE_MODES, _device_option, _require_train_extra, _seeds_option, main

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
    from ..train.sample import generate_images, load_generator, num_classes_of
    from ..train.logging import save_grid
    from ..train.checkpoint import list_checkpoints
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
    from ..train import checkpoint as ck
    from ..train.control_fit import load_control, load_encoders, parse_set, set_latents
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
    from ..deploy import ExportError, load_exported
    from ..train.logging import save_grid
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
    from ..deploy import ExportError, export_generator, load_generator
    from ..deploy.export import check_target
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
    from ..train.control_fit import fit_control, load_control, save_encoders
    from ..train.sample import load_generator
    from ..train import checkpoint as ck
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
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Run length of each run in thousands of "
              "images shown to D (fixed work: the result does not depend on machine load; the "
              "attribute networks train before it) [default: 24, the demo's; 0.2 with --quick].")
@click.option("--baseline/--no-baseline", default=True, help="Also train the uncontrolled baseline "
              "(as long again) and measure it the same way.")
@click.option("--quick", is_flag=True, help="A tiny model for a few seconds (tests, smoke "
              "checks) [default: off].")
@click.option("--unconditional", is_flag=True, help="The demo's model without the class, on "
              "'shapes' (shapes of varied size and place), with colour, background and size "
              "controlled [default: off].")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
def control_demo(outdir, kimg, baseline, quick, unconditional, seed, progress):
    """GAN-Control on the demo's class-conditional shapes model: train it with colour and
    background controlled, fit encoders, measure control accuracy and disentanglement against the
    uncontrolled demo model, write control_grid.png."""
    _require_train_extra()
    from ..train.control_demo import format_report, run_control_demo
    res = run_control_demo(outdir, kimg, quick, seed, baseline, progress, unconditional)
    click.echo(format_report(res))
    click.echo(f"wrote {res['grid']} and control.json beside it")
