"""Backend registry and dispatch shared by every op.

A backend is a table `{op_name: kernel}` plus the devices and dtypes it serves and the shape
limits of its kernels. Backend modules (`_cpu.py`, `_cuda.py`, `_triton/`, and `_ref_kernels.py`)
fill `KERNELS` with `register_kernel` and `LIMITS` with `register_limit`. `can_run(backend, call)`
answers for one exact call (`Call`: op, device, dtype and the op's dimensions): built, device,
dtype, kernels present, and every limit (head dim, batch * heads, ...). `resolve()` turns the
user's `backend=` argument (or `TRANSGAN_FAST_BACKEND`) into a backend name: `auto` takes the first
backend of the device's order that can run the call and logs the choice once (logger
"transgan_fast", level INFO; the reasons the others could not are in the same line); when none can,
the error lists every backend's reason. An explicit request that cannot run raises
`BackendUnavailableError` saying why. Nothing falls back silently and nothing is cast silently.
Before `auto` first uses a GPU backend for a kernel family, dtype and device, `selftest.ensure`
checks it against the reference (see `selftest.py`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import _ext

log = logging.getLogger("transgan_fast")

BACKENDS = ("ref", "cpu", "cuda", "triton")
ENV_VAR = "TRANSGAN_FAST_BACKEND"

# KERNELS[backend][op] -> callable; filled by the backend modules at import.
KERNELS: Dict[str, Dict[str, Callable]] = {b: {} for b in BACKENDS}

# dtypes each backend accepts, per device type.
DTYPES = {
    "ref": {"cpu": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
            "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64)},
    "cpu": {"cpu": (torch.float16, torch.bfloat16, torch.float32)},
    "cuda": {"cuda": (torch.float16, torch.bfloat16, torch.float32)},
    # On the CPU only under the interpreter, which computes bfloat16 dot products wrongly.
    "triton": {"cuda": (torch.float16, torch.bfloat16, torch.float32),
               "cpu": (torch.float16, torch.float32)},
}

# The kernels of the second-order path of attention (`_sparse.py`).
SPARSE_KERNELS = ("sparse_qk", "sparse_av", "sparse_avt")

# The kernels a public op needs from a backend (forward and backward).
OP_KERNELS = {
    "attention": ("attn_fwd", "attn_bwd"),
    "attention_qkv": ("attn_fwd", "attn_bwd"),
    "pixel_shuffle_seq": ("pixel_shuffle_seq", "pixel_unshuffle_seq"),
    "pixel_unshuffle_seq": ("pixel_shuffle_seq", "pixel_unshuffle_seq"),
    "bicubic_upsample_seq": ("bicubic_upsample_seq", "bicubic_upsample_seq_adjoint"),
    "avg_pool_seq": ("avg_pool_seq", "avg_pool_seq_adjoint"),
    "pixel_norm": ("pixel_norm", "pixel_norm_backward"),
    # Sparse-logit primitives (`_sparse.py`): each one's backward runs the other two.
    "sparse_qk": SPARSE_KERNELS,
    "sparse_av": SPARSE_KERNELS,
    "sparse_avt": SPARSE_KERNELS,
}

# `auto` order per device type: fastest first.
AUTO_ORDER = {"cpu": ("cpu", "ref"), "cuda": ("cuda", "triton", "ref")}


# LIMITS[backend] -> checks `(call) -> reason or None`; filled by the backend modules at import.
LIMITS: Dict[str, List[Callable[["Call"], Optional[str]]]] = {b: [] for b in BACKENDS}

# GPU backends: `auto` self-checks them once per (kernel family, dtype, device) before first use.
GPU_BACKENDS = ("cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """A backend cannot run this call (not built, wrong device, dtype, shape beyond its limits)."""


@dataclass(frozen=True)
class Call:
    """One call of an op as the backends judge it: op name, device, dtype and the op's dimensions
    (attention: `B`, `heads`, `N`, `d`, `kind`; empty for ops without shape limits)."""

    op: str
    device: torch.device
    dtype: torch.dtype
    dims: Tuple[Tuple[str, int], ...] = ()

    def dim(self, name: str, default: Optional[int] = None) -> Optional[int]:
        return dict(self.dims).get(name, default)


def register_kernel(backend: str, op: str):
    """Decorator: make `fn` the `backend` kernel of `op`."""
    def deco(fn):
        KERNELS[backend][op] = fn
        return fn
    return deco


def register_limit(backend: str):
    """Decorator: add `fn(call) -> reason or None` to the limits `backend` checks for every call."""
    def deco(fn):
        LIMITS[backend].append(fn)
        return fn
    return deco


def _triton_status() -> Tuple[bool, Optional[str], bool]:
    """(importable, reason if not, interpreter on)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})", False
    return True, None, os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_unavailable_reason(backend: str, device: Optional[torch.device] = None) -> Optional[str]:
    """Why `backend` cannot run on `device` (None: it can, as far as the build goes)."""
    dev = device.type if device is not None else None
    if backend == "ref":
        return None
    if backend == "cpu":
        if _ext.cpu_module is None:
            return f"cpu: C++ extension {_ext.cpu_error}; reinstall with `pip install .`"
        if dev not in (None, "cpu"):
            return f"cpu: runs on CPU tensors only; got a tensor on {device}"
        return None
    if backend == "cuda":
        if _ext.cuda_module is None:
            return f"cuda: CUDA extension {_ext.cuda_error}"
        if dev not in (None, "cuda"):
            return f"cuda: runs on CUDA tensors only; got a tensor on {device}"
        if _ext.cuda_device_count() <= 0 or not torch.cuda.is_available():
            return "cuda: built for " + _ext.cuda_module.archs() + "; no CUDA device"
        return None
    if backend == "triton":
        ok, why, interp = _triton_status()
        if not ok:
            return f"triton: {why}"
        if dev == "cpu" and not interp:
            return "triton: CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1)"
        if dev in (None, "cuda") and not torch.cuda.is_available():
            return "triton: no CUDA device (CPU tensors run only under TRITON_INTERPRET=1)"
        return None
    return f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}"


def _why_not(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    why = backend_unavailable_reason(backend, device)
    if why:
        return why
    # The reference is plain PyTorch: any device PyTorch runs it on.
    allowed = DTYPES[backend].get("cpu" if backend == "ref" else device.type, ())
    if not allowed:
        return f"{backend}: does not run on {device.type} tensors"
    if dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        return (f"{backend}: dtype {str(dtype).replace('torch.', '')} is not supported on "
                f"{device.type} (supported: {names})")
    missing = [k for k in OP_KERNELS.get(op, (op,)) if k not in KERNELS[backend]]
    if missing:
        return f"{backend}: has no kernel for {op} (missing: {', '.join(missing)})"
    return None


def can_run(backend: str, call: Call) -> Optional[str]:
    """Why `backend` cannot run `call` ("<backend>: <reason>"), or None when it can."""
    _load_backend_modules()
    why = _why_not(backend, call.op, call.device, call.dtype)
    if why:
        return why
    for limit in LIMITS.get(backend, ()):
        why = limit(call)
        if why:
            return f"{backend}: {why}"
    return None


_logged = set()


def resolve(op: str, backend: Optional[str], tensors: Sequence[Tuple[str, Optional[torch.Tensor]]],
            dims: Optional[Dict[str, int]] = None) -> str:
    """Pick the backend for one call of `op`.

    `tensors` is a sequence of `(argument name, tensor or None)`: they must share one device.
    `dims` are the op's dimensions that backends' limits judge (see `Call`).
    """
    _load_backend_modules()
    present = [(n, t) for n, t in tensors if t is not None]
    name0, t0 = present[0]
    for n, t in present[1:]:
        if t.device != t0.device:
            raise ValueError(f"{op}: all tensors must be on one device; {name0} is on {t0.device} "
                             f"but {n} is on {t.device}")
    call = Call(op, t0.device, t0.dtype, tuple(sorted((dims or {}).items())))
    requested = backend if backend is not None else "auto"
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    if requested not in ("auto",) + BACKENDS:
        raise ValueError(f"{op}: backend must be one of {('auto',) + BACKENDS}; got {requested!r}")
    if requested != "auto":
        why = can_run(requested, call)
        if why:
            raise BackendUnavailableError(f"{op}: backend {why}")
        return requested
    skipped = []
    for cand in AUTO_ORDER.get(call.device.type, ("ref",)):
        why = can_run(cand, call)
        if why is not None:
            skipped.append(why)
            continue
        if cand in GPU_BACKENDS and not torch.compiler.is_compiling():
            from . import selftest
            selftest.ensure(cand, call)
        key = (op, call.device.type, call.dtype, cand)
        # Logger calls cannot be traced by torch.compile; the eager path logs the choice.
        if key not in _logged and not torch.compiler.is_compiling():
            _logged.add(key)
            log.info("transgan_fast: %s on %s/%s -> backend %r%s", op, call.device.type,
                     str(call.dtype).replace("torch.", ""), cand,
                     f" (skipped: {'; '.join(skipped)})" if skipped else "")
        return cand
    raise BackendUnavailableError(
        f"{op}: no backend can run this call ({call.device.type}, "
        f"{str(call.dtype).replace('torch.', '')}, {dict(call.dims) or 'no shape limits'}):\n  "
        + "\n  ".join(skipped)
        + f"\n(`logging.getLogger('transgan_fast').setLevel(logging.INFO)` logs every choice)")


def kernel(backend: str, op: str) -> Callable:
    return KERNELS[backend][op]


def backends() -> Dict[str, Dict[str, object]]:
    """What was built, what is usable on this machine, and why not.

    Returns `{backend: {"built": bool, "usable": bool, "reason": str | None, "ops": [...]}}`;
    "usable" is judged for the backend's native device (CPU for `cpu`, CUDA for `cuda`/`triton`).
    A built `cpu` backend adds `openmp` (False: serial kernels), `threads` (what its kernels use
    now: `torch.get_num_threads()` with OpenMP, else 1) and `simd` (vector ISA in use).
    """
    _load_backend_modules()
    out = {}
    for b in BACKENDS:
        if b == "ref":
            built, reason = True, None
        elif b == "cpu":
            built, reason = _ext.cpu_module is not None, backend_unavailable_reason("cpu")
        elif b == "cuda":
            built = _ext.cuda_module is not None
            reason = backend_unavailable_reason("cuda", torch.device("cuda"))
        else:
            built = _triton_status()[0]
            reason = backend_unavailable_reason("triton", torch.device("cuda"))
            if reason and _triton_status()[2]:
                reason = None  # interpreter on: usable on CPU tensors
        info = {"built": built, "usable": reason is None, "reason": reason,
                "ops": sorted(KERNELS[b])}
        if b == "cuda" and _ext.cuda_module is not None:
            info["archs"] = _ext.cuda_module.archs()
        if b == "cpu" and _ext.cpu_module is not None:
            build = _ext.cpu_module.build_info()
            info.update(openmp=build["openmp"], simd=build["simd"],
                        threads=torch.get_num_threads() if build["openmp"] else 1)
        out[b] = info
    return out


_backends_loaded = False


def _load_backend_modules() -> None:
    # Once only: besides saving time, this keeps the imports (and the ImportError of an absent
    # backend module) out of code that torch.compile traces.
    global _backends_loaded
    if _backends_loaded:
        return
    _backends_loaded = True
    from . import _ref_kernels, _cpu  # noqa: F401  (registration side effects)
    try:
        from . import _cuda  # noqa: F401
    except ImportError:
        pass
    try:
        from . import _triton  # noqa: F401
    except ImportError:
        pass
