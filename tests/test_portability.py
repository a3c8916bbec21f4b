"""Portability of the CPU extension: the x86-only SIMD dispatch is guarded, OpenMP is optional
and reported (docs/ops.md §5, §6).

The full checks run in `.ci/run`: `scripts/portability_check.py` compiles the CPU sources for
aarch64 with and without OpenMP, and the sdist is built and run without OpenMP.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transgan_fast as tf
from transgan_fast import _ext

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "portability_check.py"


def _cpu_info():
    if _ext.cpu_module is None:
        pytest.skip(f"cpu extension not built: {_ext.cpu_error}")
    return tf.backends()["cpu"]


def test_cpu_backend_reports_openmp_threads_and_simd():
    info = _cpu_info()
    assert isinstance(info["openmp"], bool), info
    assert info["threads"] == (torch.get_num_threads() if info["openmp"] else 1), info
    assert isinstance(info["simd"], str) and info["simd"], info
    if sys.platform.startswith("linux") and __import__("platform").machine() == "x86_64":
        assert info["simd"].startswith("x86-64"), info   # GCC build: dispatch at run time


def test_info_command_prints_the_cpu_build():
    click_testing = pytest.importorskip("click.testing", reason="the CLI needs click (train extra)")
    from transgan_fast.cli import main
    info = _cpu_info()
    res = click_testing.CliRunner().invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    want = "OpenMP" if info["openmp"] else "serial (built without OpenMP)"
    assert f"cpu kernels: {want}, {info['threads']} thread" in res.output, res.output


def test_cpu_sources_compile_for_aarch64():
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} not present (tests run outside a checkout)")
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs the aarch64 cross compiler aarch64-linux-gnu-g++ "
                    "(Debian: apt-get install g++-aarch64-linux-gnu)")
    p = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "ok  aarch64-openmp" in p.stdout, p.stdout
