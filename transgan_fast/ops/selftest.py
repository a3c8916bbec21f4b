"""Parity self-checks of the fused backends against the plain-PyTorch reference.

The CUDA and Triton kernels are checked on CPU machines only by compiling them; a GPU, driver or
compiler that miscompiles one must not produce wrong numbers silently. So before `auto` first
uses a GPU backend in a process for a (kernel family, dtype, device), `ensure` runs a tiny instance
of that family on the backend (milliseconds once compiled), compares it with the float64 reference
and caches the verdict; a mismatch raises `SelfTestError` naming the backend and the way out.
`run_all` runs every check this machine can run (`transgan-fast selftest` prints them).

Families: `attention/<kind>` (forward and input gradients, with a relative-bias table, on the
geometry kind of the call), `shuffle` (pixel shuffle and its adjoint), `resample` (bicubic
upsampling, average pooling), `pixel_norm`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import _dispatch
from .geometry import BAND, CLIP, GRID, KIND_NAMES, NBHD, grid_geometry, local_geometry

# Error bound, relative to max(1, max|reference|): wrong kernels are off by O(1), while a correct
# one stays within docs/ops.md §4 (float32 1e-5 to 3e-4 with TF32; float16/bfloat16 a few ulps).
TOLERANCE = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


class SelfTestError(RuntimeError):
    """A backend failed its parity self-check on this device: it must not be used here."""


@dataclass(frozen=True)
class Result:
    """One self-check: `ok` is None when it could not run here (`detail` says why)."""

    backend: str
    family: str
    dtype: Optional[torch.dtype]  # None: the row stands for every dtype
    device: str
    ok: Optional[bool]
    error: float = float("nan")
    tolerance: float = float("nan")
    seconds: float = 0.0
    detail: str = ""


# (backend, family, dtype, device) -> Result; the verdict is computed once per process.
_VERDICTS: Dict[Tuple[str, str, torch.dtype, str], Result] = {}

_GEOMS = {
    GRID: lambda: grid_geometry((6, 7), (4, 3), (1, 2)),
    BAND: lambda: local_geometry((5, 6), "band1d", width=4),
    CLIP: lambda: local_geometry((7, 6), "window2d", (3, 5), "clip"),
    NBHD: lambda: local_geometry((9, 8), "window2d", (3, 3), "shift", (2, 2)),
}


def family_of(call: _dispatch.Call) -> str:
    """The kernel family a call runs (what one self-check covers)."""
    if call.op in ("attention", "attention_qkv"):
        return "attention/" + KIND_NAMES[call.dim("kind", GRID)]
    if call.op in ("pixel_shuffle_seq", "pixel_unshuffle_seq"):
        return "shuffle"
    if call.op in ("bicubic_upsample_seq", "avg_pool_seq"):
        return "resample"
    return call.op


def _attention_case(kind: int) -> Callable:
    def case(backend, dtype, device):
        from . import _library
        from .attention import attention_ref
        geom = _GEOMS[kind]()
        q, k, v = (torch.randn(2, 2, geom.N, 16, dtype=torch.float64, device=device)
                   for _ in range(3))
        bias = torch.randn(geom.bias_rows, 2, dtype=torch.float64, device=device)
        dout = torch.randn_like(q)
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = _library.attention_fused(*ins, bias.float(), geom, 0.25, backend)
        got = [out] + list(torch.autograd.grad(out, ins, dout.to(dtype)))
        ins64 = [t.requires_grad_() for t in (q, k, v)]
        ref = attention_ref(*ins64, geom, bias, 0.25)
        want = [ref] + list(torch.autograd.grad(ref, ins64, dout))
        return got, want
    return case


def _shuffle_case(backend, dtype, device):
    from . import _library
    from .resample import pixel_shuffle_seq_ref, pixel_unshuffle_seq_ref
    x = torch.randn(2, 12, 8, dtype=torch.float64, device=device)
    y = torch.randn(2, 48, 4, dtype=torch.float64, device=device)
    got = [_library.pixel_shuffle_seq_op(x.to(dtype), 3, 4, None, backend),
           _library.pixel_unshuffle_seq_op(y.to(dtype), 3, 4, backend)]
    return got, [pixel_shuffle_seq_ref(x, (3, 4)), pixel_unshuffle_seq_ref(y, (6, 8))]


def _resample_case(backend, dtype, device):
    from . import _library
    from .resample import avg_pool_seq_ref, bicubic_upsample_seq_ref
    x = torch.randn(2, 12, 8, dtype=torch.float64, device=device)
    y = torch.randn(2, 48, 8, dtype=torch.float64, device=device)
    got = [_library.bicubic_upsample_seq_op(x.to(dtype), 3, 4, backend),
           _library.avg_pool_seq_op(y.to(dtype), 6, 8, backend)]
    return got, [bicubic_upsample_seq_ref(x, (3, 4)), avg_pool_seq_ref(y, (6, 8))]


def _pixel_norm_case(backend, dtype, device):
    from . import _library
    from .resample import pixel_norm_ref
    x = torch.randn(3, 5, 24, dtype=torch.float64, device=device)
    return [_library.pixel_norm_op(x.to(dtype), backend)], [pixel_norm_ref(x)]


# family -> (case(backend, dtype, device) -> (outputs, float64 references), the op it needs)
CASES: Dict[str, Tuple[Callable, str]] = {
    **{"attention/" + KIND_NAMES[kind]: (_attention_case(kind), "attention") for kind in _GEOMS},
    "shuffle": (_shuffle_case, "pixel_shuffle_seq"),
    "resample": (_resample_case, "bicubic_upsample_seq"),
    "pixel_norm": (_pixel_norm_case, "pixel_norm"),
}


def run_check(backend: str, family: str, dtype: torch.dtype, device) -> Result:
    """Run one self-check now (no cache): the backend against the float64 reference."""
    device = torch.device(device)
    case, op = CASES[family]
    why = _dispatch.can_run(backend, _dispatch.Call(op, device, dtype))
    if why:
        return Result(backend, family, dtype, str(device), None, detail=why)
    t0 = time.perf_counter()
    # The check must not move the user's random streams, and runs the same under no_grad,
    # inference mode or autocast as outside them.
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            torch.manual_seed(0)
            got, want = case(backend, dtype, device)
    except Exception as exc:  # noqa: BLE001  (a crashing kernel is a failed check, with its message)
        return Result(backend, family, dtype, str(device), False, seconds=time.perf_counter() - t0,
                      detail=f"raised {type(exc).__name__}: {exc}")
    err, tol = 0.0, TOLERANCE.get(dtype, 2e-3)
    for g, w in zip(got, want):
        scale = max(1.0, w.detach().abs().max().item())
        e = (g.detach().double() - w.detach()).abs().max().item()
        err = max(err, e / scale if e == e else float("inf"))  # NaN (unwritten, leaked): fail
    ok = err <= tol
    return Result(backend, family, dtype, str(device), ok, err, tol, time.perf_counter() - t0,
                  "" if ok else f"max relative error {err:.3g} > tolerance {tol:.3g}")


def ensure(backend: str, call: _dispatch.Call) -> None:
    """Raise `SelfTestError` unless `backend` passed the self-check of `call`'s kernel family on
    its dtype and device (run once per process and cached, the failure included)."""
    family = family_of(call)
    if family not in CASES:
        return
    key = (backend, family, call.dtype, str(call.device))
    res = _VERDICTS.get(key)
    if res is None:
        res = _VERDICTS[key] = run_check(backend, family, call.dtype, call.device)
    if res.ok is False:
        dt = str(call.dtype).replace("torch.", "")
        raise SelfTestError(
            f"{call.op}: backend {backend!r} failed its self-check against the reference for "
            f"{family} in {dt} on {call.device} ({res.detail}), so it is not used. Run with "
            f"backend='ref' or TRANSGAN_FAST_BACKEND=ref (or pick another backend explicitly), and "
            f"see `transgan-fast selftest` for every check on this machine.")


def clear() -> None:
    """Forget every cached verdict (tests; a process normally keeps them)."""
    _VERDICTS.clear()


def run_all(devices: Optional[List[str]] = None, backends: Optional[List[str]] = None) -> List[Result]:
    """Every self-check for every fused backend (or those named) and dtype, on the given devices
    (default: cpu and cuda). Checks that cannot run here come back `ok=None` with the reason
    (one row per backend and device when the backend cannot run there at all)."""
    if devices is None:
        devices = ["cpu", "cuda"]
    _dispatch._load_backend_modules()
    out = []
    for device in devices:
        dev = torch.device(device)
        for backend in backends or ("cpu", "cuda", "triton"):
            dtypes = _dispatch.DTYPES[backend].get(dev.type, ())
            if not dtypes:
                continue  # e.g. the cpu backend on a CUDA device: nothing to check
            why = _dispatch.backend_unavailable_reason(backend, dev)
            if why:  # one row for the whole backend on this device
                out.append(Result(backend, "*", None, device, None, detail=why))
                continue
            for dtype in dtypes:
                for family, (_, op) in CASES.items():
                    if op not in _dispatch.OP_KERNELS or any(
                            k not in _dispatch.KERNELS[backend] for k in _dispatch.OP_KERNELS[op]):
                        out.append(Result(backend, family, dtype, device, None,
                                          detail=f"{backend}: has no {family} kernels"))
                        continue
                    out.append(run_check(backend, family, dtype, dev))
    return out
