"""Packaging contract (docs/ops.md §6): no torch in the build, no libtorch in the binaries, and the
package imports even when the extension is missing."""
import subprocess
import tarfile
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


# ---------------------------------------------------------------------------------------------
# The sdist: everything `pip install <sdist>` needs to build the extension, plus the docs, tests
# and benchmarks the README points at. (.ci/run also installs from it in a fresh environment.)

@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    pytest.importorskip("build", reason="building an sdist needs the `build` package (test extra)")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip(f"no source tree at {ROOT} (tests run outside a checkout)")
    out = tmp_path_factory.mktemp("sdist")
    # --no-isolation: nothing is downloaded; an sdist needs only setuptools, not the extension's
    # build requirements (pybind11, cmake, ninja), hence --skip-dependency-check.
    p = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                        "--skip-dependency-check", "-o", str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (archive,) = out.glob("transgan_fast-*.tar.gz")
    with tarfile.open(archive) as tar:
        # "transgan_fast-0.1.0/csrc/cpu/x.cpp" -> "csrc/cpu/x.cpp"
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


def _tree(sub: str, suffixes) -> set:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / sub).rglob("*")
            if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts}


def test_sdist_holds_the_extension_sources(sdist_names):
    want = _tree("csrc", {".h", ".cpp", ".cu", ".cuh"}) | {"CMakeLists.txt", "setup.py",
                                                          "pyproject.toml"}
    assert len(want) > 20, want   # the walk found the sources
    missing = sorted(want - sdist_names)
    assert not missing, f"the sdist lacks {missing}"


def test_sdist_holds_license_docs_tests_and_benchmarks(sdist_names):
    want = ({"LICENSE", "README.md"} | _tree("docs", {".md"}) | _tree("tests", {".py"})
            | _tree("benchmarks", {".py"}) | _tree("transgan_fast", {".py"}))
    missing = sorted(want - sdist_names)
    assert not missing, f"the sdist lacks {missing}"
    assert not [n for n in sdist_names if n.endswith((".so", ".o", ".pyc"))], "build outputs shipped"


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License"), text[:80]
    assert "Copyright (c) 2026 the transgan_fast authors" in text
