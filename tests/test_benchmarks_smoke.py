"""The benchmarks run against the package this interpreter imports — after `pip install .` that
is the installed package, never the checkout beside benchmarks/, which has no compiled extension.

The whole suite runs in `.ci/run` (`TGF_BENCH_QUICK=1 pytest benchmarks/ --benchmark-only`); this
test pins the part that once broke: the memory benchmark's child process.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transgan_fast import _ext

ROOT = Path(__file__).resolve().parents[1]


def test_memory_benchmark_child_ignores_the_source_tree(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="needs pytest-benchmark (test extra)")
    if _ext.cpu_module is None:
        pytest.skip(f"cpu extension not built: {_ext.cpu_error}")
    if not (ROOT / "benchmarks").is_dir():
        pytest.skip(f"no benchmarks/ beside {ROOT / 'tests'} (tests run outside a checkout)")
    # A checkout whose transgan_fast/ cannot be imported, standing where the source tree would.
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "transgan_fast").mkdir()
    (tmp_path / "transgan_fast" / "__init__.py").write_text(
        'raise ImportError("imported the source tree beside benchmarks/")\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TGF_BENCH_QUICK"] = "1"
    p = subprocess.run([sys.executable, "-m", "pytest", "bench_cpu_attention.py::test_memory[cpu-local]",
                        "--benchmark-only", "-q", "-p", "no:cacheprovider"],
                       cwd=tmp_path / "benchmarks", env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "1 passed" in p.stdout, p.stdout[-2000:]
