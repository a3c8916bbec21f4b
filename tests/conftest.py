"""Shared test helpers: docs/ops.md §4 tolerances, output poisoning, capability skips."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter; the variable must be set before triton
# is first imported (importing transgan_fast loads the backends). The `auto` backend never picks
# triton for CPU tensors, so this only enables tests that ask for backend="triton" explicitly.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transgan_fast import _ext
from transgan_fast.ops import _library


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every kernel output starts as NaN, so unwritten elements fail (docs/ops.md §4)."""
    _library.POISON_OUTPUTS = True
    yield
    _library.POISON_OUTPUTS = False


@pytest.fixture(autouse=True)
def fresh_seed(request):
    # Fresh random inputs per test, but reproducible from the test's name when it fails.
    # (crc32, not hash(): str hashes are randomised per process, so a failure would not reproduce)
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def one_thread():
    """One intra-op thread: the test machine is shared, and OpenMP oversubscription stalls the
    trainer and CLI tests (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


requires_cpu_ext = pytest.mark.skipif(
    _ext.cpu_module is None, reason=f"C++ CPU extension not built: {_ext.cpu_error}")
requires_cuda_device = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine")
requires_triton_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1")


def scale_of(ref: torch.Tensor) -> float:
    return max(1.0, ref.abs().max().item()) if ref.numel() else 1.0


def assert_close_f32(out: torch.Tensor, ref64: torch.Tensor, grad: bool = False, tf32: bool = False,
                     what: str = "output"):
    """docs/ops.md §4: float32 against the float64 reference: 1e-5 (forward) / 1e-4 (gradients) times
    max(1, max|ref|); 3e-4 when TF32 may be used on GPU."""
    tol = (3e-4 if tf32 else (1e-4 if grad else 1e-5)) * scale_of(ref64)
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    err = (out.double() - ref64.double()).abs().max().item() if out.numel() else 0.0
    assert err == err, f"{what}: NaN in output (unwritten element or NaN leak)"
    assert err <= tol, f"{what}: max error {err:.3e} > tolerance {tol:.3e}"


def assert_close_lowp(out: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor,
                      grad: bool = False, what: str = "output"):
    """docs/ops.md §4: a float16/bfloat16 kernel's error against the float64 reference is at most 2x
    (gradients 3x) the error of the reference run in that dtype, plus 1e-3 absolute."""
    k = 3.0 if grad else 2.0
    err = (out.double() - ref64.double()).abs().max().item()
    base = (ref_lowp.double() - ref64.double()).abs().max().item()
    assert err == err, f"{what}: NaN in output"
    assert err <= k * base + 1e-3, f"{what}: error {err:.3e} > {k}x reference error {base:.3e} + 1e-3"
