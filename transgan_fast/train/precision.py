"""Training precision: which autocast dtype `--precision auto|fp32|bf16|fp16` means on a device.

On a CUDA device `auto` is bfloat16 where the GPU supports it. On the CPU `auto` is bfloat16 only
where the processor has native bfloat16 instructions (AMX-BF16 tiles or AVX512-BF16 dot
products), detected at run time: elsewhere torch's bfloat16 matmul converts in software and runs
far slower than float32 (about 100x on an AVX2-only EPYC), so `auto` keeps float32 there.
`bf16` and `fp16` are honoured on both devices when asked for. Parameters, optimizer states and
checkpoints stay float32 (the master weights); only the autocast regions compute in low precision.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["PRECISIONS", "cpu_bf16_support", "choose_precision", "pick_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _cpuinfo_flags() -> Optional[set]:
    """The processor's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_bf16_support() -> Tuple[bool, str]:
    """`(native, what was found)`: whether this CPU has AMX-BF16 or AVX512-BF16, at run time.

    Reads the kernel's feature flags where it can (Linux), else asks torch's own CPU probe.
    """
    flags = _cpuinfo_flags()
    if flags is not None:
        found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
        if found:
            return True, "the CPU has " + " and ".join(f.upper().replace("_", "-") for f in found)
        return False, "the CPU has neither AMX-BF16 nor AVX512-BF16 (/proc/cpuinfo)"
    probe = getattr(torch, "cpu", None)
    amx = getattr(probe, "_is_amx_tile_supported", lambda: False)()
    dot = getattr(probe, "_is_avx512_bf16_supported", lambda: False)()
    if amx or dot:
        return True, "the CPU has " + ("AMX tiles" if amx else "AVX512-BF16") + " (torch's probe)"
    return False, "the CPU has neither AMX nor AVX512-BF16 (torch's probe)"


def choose_precision(precision: str, device: torch.device) -> Tuple[Optional[torch.dtype], str]:
    """`(autocast dtype or None for float32, why)` for `precision` on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None, "float32 as asked (--precision fp32)"
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        name = str(dtype).replace("torch.", "")
        return dtype, f"{name} autocast on {device.type} as asked (--precision {precision})"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: bfloat16 autocast, the GPU supports bfloat16"
        return None, "auto: float32, the GPU does not support bfloat16"
    if device.type == "cpu":
        native, why = cpu_bf16_support()
        if native:
            return torch.bfloat16, f"auto: bfloat16 autocast, {why}"
        return None, f"auto: float32, {why} (bfloat16 would run in software, slower)"
    return None, f"auto: float32 on {device.type}"


def pick_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of `choose_precision` (None: float32, no autocast)."""
    return choose_precision(precision, device)[0]
