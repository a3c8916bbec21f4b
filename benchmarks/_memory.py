"""Peak resident memory of a block of code, for the benchmarks (Linux only).

`PeakRSS` resets the kernel's peak counter (VmHWM, by writing 5 to /proc/self/clear_refs) to the
current resident size, after returning the allocator's freed pages to the system (glibc
`malloc_trim`), and reads how far the peak rose above that baseline while the block ran.
Without the trim, a block could fit in pages an earlier, larger block freed but the process still
holds, and report no extra memory.
"""
from __future__ import annotations

import ctypes
from typing import Optional

__all__ = ["rss_mib", "PeakRSS"]


def rss_mib(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; NaN where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _release_freed_memory() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline may include freed pages


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """`with PeakRSS() as m: ...` (or `m.start()` ... `m.stop()`) then `m.extra_mib`: the peak
    resident memory the block added (MiB), or None where the peak counter cannot be reset;
    `m.base_mib` is the baseline."""

    def __init__(self):
        self.base_mib = float("nan")
        self.extra_mib: Optional[float] = None
        self._exact = False

    def start(self) -> "PeakRSS":
        _release_freed_memory()
        self.base_mib = rss_mib("VmRSS")
        self._exact = _reset_peak()
        return self

    def stop(self) -> Optional[float]:
        if self._exact:
            self.extra_mib = rss_mib("VmHWM") - self.base_mib
        return self.extra_mib

    def __enter__(self) -> "PeakRSS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
