"""`transgan-fast info`, `selftest`, `bench` and `convert`: which kernel backends work here, how
fast they are, and bringing the released TransGAN checkpoints in."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from . import CTX, _json_object, main

@main.command(context_settings=CTX)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table [default: off].")
def info(as_json):
    """Kernel backends: built, usable here, why not, and which kernels each provides."""
    import torch
    from .. import __version__, backends
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
    from ..ops import selftest as st
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
    from ..train.convert import convert_official
    model = _json_object(model_json)
    try:
        path = convert_official(official, preset, out_dir, images_seen, model)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc))
    click.echo(f"wrote {path}")
