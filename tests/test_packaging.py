"""Packaging contract (docs/ops.md §6): no torch in the build, no libtorch in the binaries, and the
package imports even when the extension is missing."""
import subprocess
import sys
from pathlib import Path

import pytest

from transgan_fast import _ext

ROOT = Path(__file__).resolve().parents[1]


def test_build_requirements_do_not_include_torch():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="needs tomllib (Python 3.11+) or tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["build-system"]["requires"]
    assert not any(r.lower().startswith("torch") for r in reqs), reqs


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_extension_does_not_link_against_torch(name):
    mod = getattr(_ext, f"{name}_module")
    if mod is None:
        pytest.skip(f"{name} extension not built: {getattr(_ext, f'{name}_error')}")
    out = subprocess.run(["ldd", mod.__file__], capture_output=True, text=True).stdout
    assert out, "ldd printed nothing"
    for lib in ("libtorch", "libc10", "libcudart.so"):  # cudart is linked statically
        assert lib not in out, f"{Path(mod.__file__).name} links {lib}:\n{out}"


def test_import_without_extension_reports_backends_unavailable(tmp_path):
    # Copy the pure-Python package without the compiled modules and import it from there.
    import shutil
    pkg = Path(_ext.__file__).parent
    dst = tmp_path / "transgan_fast"
    shutil.copytree(pkg, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = ("import transgan_fast as tf; b = tf.backends(); "
            "print(b['cpu']['built'], b['cpu']['usable'], b['cpu']['reason'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False False cpu: C++ extension not built"), out.stdout
