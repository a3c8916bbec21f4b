"""Build the extension modules with CMake (see CMakeLists.txt); packaging lives in pyproject.toml.

Environment:
  TRANSGAN_FAST_CUDA=0|1        skip / require the CUDA module (default: build it if nvcc is found)
  TRANSGAN_FAST_CUDA_ARCHS      e.g. "80;90" (default) or "90"
  TRANSGAN_FAST_BUILD_JOBS      parallel compile jobs (default: CPU count)
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        import pybind11  # build-time only: an sdist needs no pybind11

        build_dir = Path(self.build_temp).resolve() / "cmake"
        out_dir = build_dir / "out"
        build_dir.mkdir(parents=True, exist_ok=True)
        jobs = os.environ.get("TRANSGAN_FAST_BUILD_JOBS", str(os.cpu_count() or 1))
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DTGF_OUTPUT_DIR={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        t0 = time.time()
        subprocess.check_call(cfg)
        subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])
        built = []
        for ext in list(self.extensions):
            short = ext.name.split(".")[-1]
            found = sorted(out_dir.glob(short + ".*"))
            if not found:
                self.extensions.remove(ext)  # e.g. the CUDA module without nvcc
                continue
            dest = Path(self.get_ext_fullpath(ext.name))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[0], dest)
            built.append(short)
        print(f"transgan_fast: built {', '.join(built)} in {time.time() - t0:.0f} s", flush=True)


setup(
    ext_modules=[CMakeExtension("transgan_fast._C_cpu"), CMakeExtension("transgan_fast._C_cuda")],
    cmdclass={"build_ext": CMakeBuild},
)
