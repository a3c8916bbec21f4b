"""Loading of the compiled extension modules.

The extension is two pybind11 modules built by CMake (`pip install .`): `_C_cpu` (always) and
`_C_cuda` (when a CUDA compiler was found). Neither links against torch. Importing this package
never fails because one is missing: the affected backends report themselves unavailable, with the
import error as the reason (NATTEN's habit).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple


def _load(name: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    try:
        return importlib.import_module(f"transgan_fast.{name}"), None
    except ImportError as exc:  # not built, or built for another Python
        return None, f"not built ({exc})"


cpu_module, cpu_error = _load("_C_cpu")
cuda_module, cuda_error = _load("_C_cuda")


def cuda_device_count() -> int:
    """Devices the CUDA module sees (0 with no driver/device); -1 if the module is missing."""
    if cuda_module is None:
        return -1
    return int(cuda_module.device_count())
