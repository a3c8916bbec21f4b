"""Compile the CPU kernels for targets and configurations this machine does not run.

The wheel built here is x86-64 with OpenMP; this script proves the other builds compile:

  aarch64, OpenMP       aarch64-linux-gnu-g++ -fopenmp   (e.g. Grace Hopper servers), with the
                        bindings (this Python's headers and pybind11, when importable)
  aarch64, serial       aarch64-linux-gnu-g++            (no OpenMP runtime), kernels only
  host, serial          g++ without -fopenmp             (--all only: `.ci/run` builds and runs
                        the serial x86 module for real when it installs the sdist)

Each compiles csrc/cpu/*.cpp (plus csrc/bindings_cpu.cpp where noted) to object files at -O2,
then checks the objects: the ELF machine
is the target's, and a serial object references no OpenMP runtime (`GOMP_*`, `omp_*`) while an
OpenMP object does. Linking and running need the target; `.ci/run` runs the serial x86 build for
real (the sdist install). Debian: `apt-get install g++-aarch64-linux-gnu`.

    python scripts/portability_check.py [--quick | --all] [--skip-missing]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ELF_MACHINE = {"aarch64": 183, "x86_64": 62}
OPENMP_MARKS = (b"GOMP_", b"\0omp_get_")   # runtime entry points in the symbol string table


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise RuntimeError(f"{path.name}: not an ELF object")
    return int.from_bytes(head[18:20], "little")


def sources(bindings: bool):
    srcs = sorted((ROOT / "csrc" / "cpu").glob("*.cpp"))
    return srcs + ([ROOT / "csrc" / "bindings_cpu.cpp"] if bindings else [])


def include_flags(bindings: bool):
    flags = ["-I", str(ROOT / "csrc")]
    if bindings:
        import pybind11
        flags += ["-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"]]
    return flags


def check(name: str, cxx: str, arch: str, openmp: bool, opt: str, bindings: bool, out: Path) -> str:
    """Compile every source; return a one-line summary or raise with the compiler's output."""
    flags = ["-std=c++17", opt, "-fno-math-errno", "-Wall", "-Werror", "-fPIC", "-c"]
    flags += ["-fopenmp"] if openmp else ["-fopenmp-simd", "-Wno-unknown-pragmas"]
    flags += include_flags(bindings)
    t0 = time.time()

    def one(src: Path) -> Path:
        obj = out / f"{name}-{src.stem}.o"
        p = subprocess.run([cxx, *flags, str(src), "-o", str(obj)], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"[{name}] {cxx} failed on {src.relative_to(ROOT)}:\n{p.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objs = list(pool.map(one, sources(bindings)))
    for obj in objs:
        if elf_machine(obj) != ELF_MACHINE[arch]:
            raise RuntimeError(f"[{name}] {obj.name}: ELF machine {elf_machine(obj)}, "
                               f"expected {ELF_MACHINE[arch]} ({arch})")
    blob = b"".join(o.read_bytes() for o in objs)
    uses_omp = any(m in blob for m in OPENMP_MARKS)
    if uses_omp != openmp:
        raise RuntimeError(f"[{name}] objects {'reference' if uses_omp else 'do not reference'} "
                           f"the OpenMP runtime, expected the opposite")
    return (f"ok  {name:<18} {len(objs)} objects ({arch}, {'OpenMP' if openmp else 'serial'}, "
            f"{opt}{', bindings' if bindings else ''}) in {time.time() - t0:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="aarch64 + OpenMP only, -O0, kernel sources only (the test suite's check)")
    ap.add_argument("--all", action="store_true", help="also the host serial build")
    ap.add_argument("--skip-missing", action="store_true",
                    help="skip a configuration whose compiler is not installed instead of failing")
    args = ap.parse_args(argv)
    try:
        import pybind11  # noqa: F401
        bindings = not args.quick
    except ImportError:
        bindings = False
        print("note: pybind11 is not importable; compiling the kernel sources only")
    host = "x86_64" if sysconfig.get_platform().endswith("x86_64") else os.uname().machine
    # (name, compiler, ELF machine, OpenMP, with the bindings)
    configs = [("aarch64-openmp", "aarch64-linux-gnu-g++", "aarch64", True, bindings)]
    if not args.quick:
        configs += [("aarch64-serial", "aarch64-linux-gnu-g++", "aarch64", False, False)]
    if args.all:
        configs += [("host-serial", os.environ.get("CXX", "g++"), host, False, bindings)]
    opt = "-O0" if args.quick else "-O2"
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, cxx, arch, openmp, with_bindings in configs:
            if shutil.which(cxx) is None:
                msg = f"{name}: compiler {cxx} not found (Debian: apt-get install g++-aarch64-linux-gnu)"
                if args.skip_missing:
                    print("skip", msg)
                    continue
                print("FAIL", msg)
                failed += 1
                continue
            try:
                print(check(name, cxx, arch, openmp, opt, with_bindings, Path(tmp)), flush=True)
            except RuntimeError as exc:
                print("FAIL", exc, flush=True)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
