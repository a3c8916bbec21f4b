"""Launch configurations and the launch itself: fixed defaults, the autotuning space for sm_80 /
sm_90, shared-memory pruning, and `launch`, which goes through `torch.library.wrap_triton`.

Autotuning (`triton.autotune`, keyed on the padded head dim, geometry kind, bias, map size, all four
geometry parameters - window/kernel size and shift/dilation, since the best tile follows the key
rectangle a query tile sees - and `BH`, batch * heads rounded up to a power of two, since the
number of programs decides how well a tile size fills the GPU; Triton adds the argument dtypes) runs on CUDA devices unless `TRANSGAN_FAST_TRITON_AUTOTUNE=0`; under
the interpreter (`TRITON_INTERPRET=1`) it is always off and a small fixed tile keeps tests fast.
Every configuration computes the same sums in float32 (only the tile order changes), so the choice
never moves results beyond docs/ops.md §4 tolerances.
"""
from __future__ import annotations

import os

import torch
import triton

AUTOTUNE_ENV = "TRANSGAN_FAST_TRITON_AUTOTUNE"

# Shared memory one block may use, when the device cannot be asked: sm_80 (A100) opt-in limit.
SM80_SMEM = 166912


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Autotune on a real GPU unless the environment switches it off."""
    return not interpreting() and os.environ.get(AUTOTUNE_ENV, "1") != "0"


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Ampere (sm_80: 164 KB smem, cp.async pipelining) and Hopper (sm_90: 228 KB smem). Small tiles
# matter for local attention, where a query tile's key rectangle is only a few hundred tokens, and
# for the rel-bias gather, whose (BLOCK_M, BLOCK_N) offsets and pointers cost registers: ptxas on
# sm_80 (`scripts/triton_aot_check.py`) spills 2-3 KB per thread for 64x64 tiles on 4 warps and
# for 128x32 tiles with bias at d=64, so those are left out; 8 warps carry the larger tiles.
SM80_CONFIGS = [
    _cfg(16, 32, 2, 2), _cfg(16, 32, 4, 2), _cfg(32, 32, 4, 2), _cfg(32, 32, 4, 3),
    _cfg(32, 64, 4, 2), _cfg(64, 32, 4, 2), _cfg(64, 32, 8, 2), _cfg(64, 32, 8, 3),
    _cfg(64, 64, 8, 2), _cfg(128, 64, 8, 2),
]
SM90_CONFIGS = SM80_CONFIGS + [_cfg(64, 32, 8, 4), _cfg(64, 64, 8, 3), _cfg(128, 64, 8, 3)]
# Fixed configurations when autotuning is off, by (bytes per element, head dims up to), best first;
# the first that fits is used. They spill least in that survey: float32's 3xTF32 dots hold each
# operand twice, so float32 needs small tiles, and at head dim 128-256 it spills whatever the tile
# (float16/bfloat16 are the GPU dtypes to train in; float32 is for checking).
DEFAULT_CONFIGS = [
    (2, 256, [_cfg(64, 32, 8, 2), _cfg(32, 32, 4, 2), _cfg(32, 32, 4, 1), _cfg(16, 16, 2, 1)]),
    (4, 64, [_cfg(32, 32, 4, 2), _cfg(32, 32, 4, 1), _cfg(16, 16, 2, 1)]),
    (4, 256, [_cfg(16, 32, 4, 2), _cfg(16, 32, 4, 1), _cfg(16, 16, 2, 1)]),
]
INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)

# A `triton.Config` that every attention launch uses instead of autotuning or the defaults, when
# set: for tests (every tile shape of the tuning space must give the same results) and for
# reproducing one configuration's behaviour. `None` in normal use.
override = None


def device_capability() -> int:
    """Major compute capability of the current CUDA device (8 when there is none)."""
    try:
        return torch.cuda.get_device_capability()[0]
    except Exception:  # noqa: BLE001  (no device: tuning spaces are irrelevant, sm_80 is safe)
        return 8


def smem_limit() -> int:
    """Bytes of shared memory one block may use on the current device."""
    try:
        return int(torch.cuda.get_device_properties(torch.cuda.current_device())
                   .shared_memory_per_block_optin)
    except Exception:  # noqa: BLE001
        return SM80_SMEM


def smem_estimate(bm: int, bn: int, stages: int, dp: int, elt: int) -> int:
    """Upper estimate of a kernel's shared memory: `4 + 2 * stages` tiles of `rows x DP` elements
    (the streamed pair - key and value, or query and dO - with `stages` buffers each, the resident
    pair and transposed operands; `rows` is the larger tile side, since one space serves all three
    kernels), a float32 `BLOCK_M x BLOCK_N` scratch and 2 KB of layout-conversion slack.
    `scripts/triton_aot_check.py` fails if any compiled kernel allocates more. Examples of what
    the compiler allocates: float32 dK/dV at d=256 with 16x16 tiles, 1 stage: 98304 B (estimate
    101376); float32 dQ at d=128 with 64x64 tiles, 2 stages: 262144 B (over either device)."""
    return (4 + 2 * max(stages, 1)) * max(bm, bn) * dp * elt + 4 * bm * bn + 2048


def fits(cfg, dp: int, elt: int, limit: int) -> bool:
    return smem_estimate(cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_stages, dp, elt) <= limit


def configs_for_device() -> list:
    """The autotuning space for the current CUDA device's compute capability."""
    return SM90_CONFIGS if device_capability() >= 9 else SM80_CONFIGS


def prune_for_smem(configs, named_args, **kwargs):
    """Drop configurations whose tiles would not fit in shared memory for this head dim and dtype
    (float32 at head dim 128-256 rules out the large, deeply pipelined tiles on sm_80)."""
    dp = kwargs.get("DP", named_args.get("DP", 64))
    q = named_args.get("Q")
    elt = q.element_size() if q is not None else 4
    limit = smem_limit()
    keep = [c for c in configs if fits(c, dp, elt, limit)]
    return keep or [default_config(dp, elt)]


def default_config(dp: int, elt: int):
    """The fixed configuration used when autotuning is off: the first default that fits."""
    limit = smem_limit()
    candidates = next(c for e, top, c in DEFAULT_CONFIGS if e == min(elt, 4) and dp <= top) \
        if dp <= 256 else DEFAULT_CONFIGS[-1][2]
    for cfg in candidates:
        if fits(cfg, dp, elt, limit):
            return cfg
    return candidates[-1]


def dot_precision(dtype) -> str:
    """float32 inputs: exact IEEE products under the interpreter, 3xTF32 on tensor cores."""
    if dtype != torch.float32 or interpreting():
        return "ieee"
    return "tf32x3"


def launch(kernel, grid, *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)` through `torch.library.wrap_triton`: inside a `triton_op`,
    torch.compile then traces the kernel itself; in eager mode it is a direct launch.

    The interpreter cannot run on fake tensors (shape propagation, opcheck): there the launch is
    skipped, which is all a fake kernel needs, exactly as `wrap_triton`'s own fake rule does on GPU.
    """
    if interpreting():
        from torch._subclasses.fake_tensor import is_fake
        if any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
            return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


class Launcher:
    """Launches a kernel with the autotuned config (built once, cached per key) or the default."""

    def __init__(self, kernel, reset_to_zero=None):
        self.kernel = kernel
        self.reset_to_zero = reset_to_zero
        self._tuned = None

    def tuned(self):
        if self._tuned is None:
            self._tuned = triton.autotune(
                configs=configs_for_device(), key=["DP", "KIND", "HAS_BIAS", "H", "W", "P0", "P1", "P2", "P3", "BH"],
                reset_to_zero=self.reset_to_zero,
                prune_configs_by={"early_config_prune": prune_for_smem})(self.kernel)
        return self._tuned

    def __call__(self, grid, dp: int, elt: int, *args, **consts):
        """`grid(META)` -> launch grid; `dp` padded head dim; `elt` bytes per input element."""
        if override is not None:
            cfg = dict(override.kwargs, num_warps=override.num_warps, num_stages=override.num_stages)
            launch(self.kernel, grid, *args, **consts, **cfg)
            return
        if autotune_enabled():
            launch(self.tuned(), grid, *args, **consts)
            return
        if interpreting():
            cfg = dict(INTERPRETER_CONFIG)
        else:
            c = default_config(dp, elt)
            cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        launch(self.kernel, grid, *args, **consts, **cfg)
