"""Generator latency on the CPU: eager, torch.compile, the AOTInductor `.pt2` and ONNX Runtime.

Groups `generate-cifar10-b1` and `generate-cifar10-b16` (the cifar10 preset's generator, random
weights, float32, `TGF_BENCH_THREADS` threads, default 2), implementations side by side:
- `eager-ref`: every fused op on its plain-PyTorch reference;
- `eager-auto`: the fused CPU kernels (what `transgan-fast generate` runs);
- `compile`: `torch.compile` of eager-auto (the fused ops stay opaque calls);
- `pt2`: the package of `transgan-fast export --format pt2` (reference ops compiled by AOTInductor);
- `onnxruntime`: the file of `transgan-fast export --format onnx` on ONNX Runtime's CPU provider.

Every implementation is first checked against eager-ref on the benchmark's latents (docs/export.md
tolerance). Exporting and compiling the 63 M-parameter generator takes minutes of CPU; the
artefacts are kept in `TGF_BENCH_EXPORT_DIR` (default: a temporary directory) and reused when
present there. `extra_info["images_per_s"]` gives the throughput.

    python -m pytest benchmarks/bench_generate.py --benchmark-only -q
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

from transgan_fast.deploy import export_generator, load_exported
from transgan_fast.models import build
from transgan_fast.nn import set_backend

from conftest import QUICK, check_parity, record

BATCHES = (1, 2) if QUICK else (1, 16)
IMPLS = ("eager-ref", "eager-auto", "pt2", "onnxruntime", "compile")
ROUNDS = 1 if QUICK else int(os.environ.get("TGF_BENCH_GENERATE_ROUNDS", "5"))
# TGF_BENCH_QUICK=1: the cifar10 layout with one block per stage and a quarter of the channels;
# the minutes-long compiles (pt2, torch.compile) are left to tests/test_export.py there.
QUICK_CIFAR = dict(g_depths=(1, 1, 1), g_channels=(256, 64, 16)) if QUICK else {}
QUICK_SKIPS = ("pt2", "compile") if QUICK else ()
TOL = 1e-4  # docs/export.md


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    G, _ = build("cifar10", backend="auto", **QUICK_CIFAR)
    return G.eval()


@pytest.fixture(scope="module")
def export_dir():
    d = os.environ.get("TGF_BENCH_EXPORT_DIR")
    if d:
        os.makedirs(d, exist_ok=True)
        yield d
        return
    with tempfile.TemporaryDirectory(prefix="tgf-bench-export-") as tmp:
        yield tmp


def _artefact(G, fmt: str, export_dir: str):
    path = os.path.join(export_dir, f"g-cifar10.{fmt}")
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        export_generator(G, fmt, path, info={"preset": "cifar10"}, check=False)
    return load_exported(path)


_made = {}


def _impl(name: str, G, export_dir: str):
    """A callable z -> images for implementation `name` (built once per module)."""
    if name in _made:
        return _made[name]
    if name == "eager-ref":
        G_ref = set_backend(__import__("copy").deepcopy(G), "ref")
        fn = lambda z: G_ref(z).clamp(-1, 1)  # noqa: E731
    elif name == "eager-auto":
        fn = lambda z: G(z).clamp(-1, 1)  # noqa: E731
    elif name == "compile":
        compiled = torch.compile(G, dynamic=False)
        fn = lambda z: compiled(z).clamp(-1, 1)  # noqa: E731
    elif name == "pt2":
        fn = _artefact(G, "pt2", export_dir)
    else:
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install '.[export]')")
        pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install '.[export]')")
        fn = _artefact(G, "onnx", export_dir)
    _made[name] = fn
    return fn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
def test_generate_latency(benchmark, generator, export_dir, impl, batch):
    if impl in QUICK_SKIPS:
        pytest.skip(f"TGF_BENCH_QUICK=1: {impl} compiles for minutes; tests/test_export.py covers it")
    z = torch.randn(batch, generator.latent_dim, generator=torch.Generator().manual_seed(batch))
    ref_fn = _impl("eager-ref", generator, export_dir)
    fn = _impl(impl, generator, export_dir)
    with torch.no_grad():
        check_parity(fn(z), ref_fn(z), tol=TOL, what=impl)

        def run():
            return fn(z)

        record(benchmark, f"generate-cifar10-b{batch}", run, rounds=ROUNDS, impl=impl, batch=batch)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = round(batch / mean, 2)
    print(f"\ngenerate-cifar10-b{batch} {impl}: {mean * 1e3:.1f} ms ({batch / mean:.2f} images/s)")
