"""The `transgan-fast` command: `info` (what was built and what can run here) and `bench`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="transgan_fast")
def main():
    """transgan_fast: fused attention kernels for vision-transformer GANs, and TransGAN."""


@main.command()
def info():
    """Report each backend: built, usable here, why not, and the kernels it provides."""
    import torch

    import transgan_fast as tf

    click.echo(f"transgan_fast {tf.__version__}  torch {torch.__version__}  "
               f"threads {torch.get_num_threads()}  cuda available: {torch.cuda.is_available()}")
    click.echo(f"{'backend':8} {'built':6} {'usable':7} details")
    for name, e in tf.backends().items():
        detail = e["reason"] or f"ops: {', '.join(e['ops']) or '(none)'}"
        if name == "cuda" and e.get("archs") and e["usable"]:
            detail += f"  [built for {e['archs']}]"
        click.echo(f"{name:8} {str(e['built']).lower():6} {str(e['usable']).lower():7} {detail}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-k", "keyword", default=None, help="only benchmarks matching this pytest -k expression")
@click.option("--json", "json_path", default=None, type=click.Path(), help="save pytest-benchmark JSON here")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def bench(keyword, json_path, pytest_args):
    """Run the benchmark suite (benchmarks/ of a source checkout) side by side per case."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    if not root.is_dir():
        root = Path.cwd() / "benchmarks"
    if not root.is_dir():
        raise click.ClickException("benchmarks/ not found: run from a source checkout of transgan_fast")
    cmd = [sys.executable, "-m", "pytest", str(root), "--benchmark-only", "-q",
           "--benchmark-columns=mean,stddev,rounds", "--benchmark-sort=mean"]
    if keyword:
        cmd += ["-k", keyword]
    if json_path:
        cmd += [f"--benchmark-json={json_path}"]
    cmd += list(pytest_args)
    click.echo(" ".join(cmd))
    rc = subprocess.call(cmd)
    if json_path and rc == 0:
        subprocess.call([sys.executable, str(root / "report.py"), json_path])
    sys.exit(rc)


if __name__ == "__main__":
    main()
