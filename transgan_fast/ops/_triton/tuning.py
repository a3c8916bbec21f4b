"""Launch configurations: fixed defaults and the autotuning space for sm_80 / sm_90.

Autotuning (`triton.autotune`, keyed on the padded head dim and the geometry kind) runs on CUDA
devices unless `TRANSGAN_FAST_TRITON_AUTOTUNE=0`; under the interpreter (`TRITON_INTERPRET=1`)
it is always off and the small fixed default keeps tests fast.
"""
from __future__ import annotations

import os

import triton

AUTOTUNE_ENV = "TRANSGAN_FAST_TRITON_AUTOTUNE"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Autotune on a real GPU unless the environment switches it off."""
    return not interpreting() and os.environ.get(AUTOTUNE_ENV, "1") != "0"


def default_config(dp: int) -> dict:
    """Fixed launch parameters used when autotuning is off."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if dp >= 128:
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Ampere (sm_80: 164 KB smem, cp.async pipelining) and Hopper (sm_90: 228 KB smem). Small tiles
# matter for local attention, where a query tile's key rectangle is only a few hundred tokens.
SM80_CONFIGS = [
    _cfg(16, 32, 2, 2), _cfg(32, 32, 4, 2), _cfg(32, 64, 4, 2), _cfg(64, 32, 4, 2),
    _cfg(64, 64, 4, 2), _cfg(64, 64, 4, 3), _cfg(128, 32, 4, 3), _cfg(128, 64, 8, 2),
]
SM90_CONFIGS = SM80_CONFIGS + [
    _cfg(64, 64, 4, 4), _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 2), _cfg(64, 128, 4, 3),
]


def configs_for_device() -> list:
    """The autotuning space for the current CUDA device's compute capability."""
    try:
        import torch
        major, _ = torch.cuda.get_device_capability()
    except Exception:  # noqa: BLE001  (no device: the space is irrelevant)
        major = 8
    return SM90_CONFIGS if major >= 9 else SM80_CONFIGS


def prune_for_dp(configs, named_args, **kwargs):
    """Drop tiles that would not fit in shared memory for large head dims."""
    dp = named_args.get("DP", kwargs.get("DP", 64))
    keep = [c for c in configs if not (dp >= 256 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)
            and not (dp >= 128 and c.kwargs["BLOCK_M"] >= 128 and c.kwargs["BLOCK_N"] >= 128)]
    return keep or configs[:1]


def dot_precision(dtype) -> str:
    """float32 inputs: exact IEEE products under the interpreter, 3xTF32 on tensor cores."""
    import torch
    if dtype != torch.float32 or interpreting():
        return "ieee"
    return "tf32x3"


class Launcher:
    """Launches a kernel with the autotuned config (built once, cached per key) or the default."""

    def __init__(self, kernel, reset_to_zero=None):
        self.kernel = kernel
        self.reset_to_zero = reset_to_zero
        self._tuned = None

    def __call__(self, grid, dp, *args, **consts):
        if autotune_enabled():
            if self._tuned is None:
                self._tuned = triton.autotune(
                    configs=configs_for_device(), key=["DP", "KIND", "HAS_BIAS"],
                    reset_to_zero=self.reset_to_zero,
                    prune_configs_by={"early_config_prune": prune_for_dp})(self.kernel)
            self._tuned[grid](*args, **consts)
            return
        cfg = default_config(dp)
        self.kernel[grid(cfg)](*args, **consts, **cfg)
