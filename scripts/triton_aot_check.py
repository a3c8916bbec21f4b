"""Compile every Triton kernel ahead of time for sm_80 and sm_90, on a machine without a GPU.

Triton's interpreter (which runs the CPU test suite) never lowers a kernel to PTX, so constructs it
accepts can still fail to compile for a real device. This script builds each kernel for each
target, dtype and geometry kind through Triton's own compiler and `ptxas`, over the tile shapes of
the tuning space, and reports register use and spills; it fails if a kernel does not compile or
uses more shared memory than `tuning.smem_estimate` (the autotuner's pruning rule) allows for it.
No GPU is needed.

    python scripts/triton_aot_check.py            # every path, tile and head dim; sm_80 + sm_90
    python scripts/triton_aot_check.py --quick    # a few configurations (a smoke check; CI runs it)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # must be off before triton is imported

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from transgan_fast.ops._triton import tuning  # noqa: E402
from transgan_fast.ops._triton.attention_bwd import delta_kernel, dkdv_kernel, dq_kernel  # noqa: E402
from transgan_fast.ops._triton.attention_fwd import attn_fwd_kernel  # noqa: E402
from transgan_fast.ops._triton import bias_grad, sparse  # noqa: E402
from transgan_fast.ops._triton.bias_grad import bias_reduce_kernel  # noqa: E402
from transgan_fast.ops._triton.shuffle import shuffle_kernel, unshuffle_kernel  # noqa: E402
from transgan_fast.ops._triton.sparse import (sparse_av_kernel, sparse_avt_kernel,  # noqa: E402
                                              sparse_qk_kernel)

PTR = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


POINTERS = {"Q", "K", "V", "O", "DO", "Out", "DQ", "DK", "DV", "X", "Pos", "G",
            "A", "Bm", "Pr"}                                                       # activations
F32_POINTERS = {"Bias", "Lse", "Delta", "DBias", "DSlot"}                         # float32 tables


def signature(kernel, dtype: str, constexprs: dict) -> dict:
    """Triton signature: activations in `dtype`, float32 tables/statistics, int32 scalars."""
    sig = {}
    for p in kernel.params:
        name = p.name
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in POINTERS:
            sig[name] = PTR[dtype]
        elif name in F32_POINTERS:
            sig[name] = "*fp32"
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_usage(ptx: str, arch: int):
    """(registers, spill-store bytes) of the kernel, from Triton's bundled `ptxas -v`."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}",
                              "-o", os.path.join(tmp, "k.cubin"), path], capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spill = re.search(r"(\d+) bytes spill stores", res.stderr)
    return int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0


def compile_one(kernel, dtype, constexprs, arch, num_warps, num_stages, usage=True):
    """Compile to a cubin for sm_<arch>; (registers, spill bytes, shared bytes), -1/0 without usage."""
    src = ASTSource(fn=kernel, signature=signature(kernel, dtype, constexprs), constexprs=constexprs)
    c = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    regs, spills = ptxas_usage(c.asm["ptx"], arch) if usage else (-1, 0)
    return regs, spills, c.metadata.shared


def attention_jobs(arch: int, quick: bool):
    """(kernel, dtype, constexprs, config) covering every code path, every tile, every head dim."""
    space = tuning.SM90_CONFIGS if arch >= 90 else tuning.SM80_CONFIGS
    limit = 232448 if arch >= 90 else tuning.SM80_SMEM
    kernels = (attn_fwd_kernel, dkdv_kernel, dq_kernel)
    cases = []  # (dtype, kind, has_bias, dp, configs or None for the default)
    if quick:
        cases = [("fp16", 0, True, 64, None), ("fp32", 3, False, 128, None)]
    else:
        cases += [(dt, kind, hb, 64, None) for dt in PTR for kind in range(4) for hb in (False, True)]
        cases += [("fp16", 0, True, 64, space), ("fp32", 3, False, 128, space)]
        cases += [(dt, 2, True, dp, None) for dt in PTR for dp in (16, 32, 128, 256)]
    for dtype, kind, has_bias, dp, cfgs in cases:
        elt = 4 if dtype == "fp32" else 2
        cfgs = cfgs or [tuning.default_config(dp, elt)]
        for kern in kernels:
            backward_pass = kern is dkdv_kernel
            ax = 0 if kind == 0 else (2 if kind == 3 and not backward_pass else 1)
            for cfg in cfgs:
                if not tuning.fits(cfg, dp, elt, limit):
                    continue
                consts = dict(KIND=kind, AX0=ax, AX1=ax, HAS_BIAS=has_bias, DP=dp,
                              PREC="tf32x3" if dtype == "fp32" else "ieee", **cfg.kwargs)
                yield kern, dtype, consts, cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few configurations per target")
    ap.add_argument("--archs", default="80,90", help="compute capabilities (default: 80,90)")
    ap.add_argument("--no-usage", action="store_true", help="skip the ptxas -v register report")
    a = ap.parse_args(argv)
    failures, done, t0, worst = [], 0, time.time(), {}
    for arch in (int(x) for x in a.archs.split(",")):
        jobs = list(attention_jobs(arch, a.quick))
        jobs += [(k, dt, c, triton.Config({}, num_warps=4, num_stages=2))
                 for k, c in ((delta_kernel, dict(DP=64, BLOCK=64)),
                              (shuffle_kernel, dict(HAS_POS=True, BLOCK_T=64, BLOCK_C=64)),
                              (unshuffle_kernel, dict(BLOCK_T=64, BLOCK_C=64)))
                 for dt in (("fp16",) if a.quick else PTR)]
        # Sparse-logit primitives and the dbias reduction at their GPU tiles, every kind.
        jobs += [(k, dt, dict(KIND=kind, **dict(zip(("BLOCK_M", "BLOCK_S", "BLOCK_D"),
                                                    sparse.GPU_BLOCKS[op]))),
                  triton.Config({}, num_warps=4, num_stages=1))
                 for op, k in (("qk", sparse_qk_kernel), ("av", sparse_av_kernel),
                               ("avt", sparse_avt_kernel))
                 for kind in range(4) for dt in (("fp16",) if a.quick else PTR)]
        br, bi = bias_grad.GPU_BLOCKS
        jobs += [(bias_reduce_kernel, "fp32", dict(KIND=kind, BLOCK_R=br, BLOCK_I=bi),
                  triton.Config({}, num_warps=4, num_stages=1)) for kind in range(4)]
        for kern, dtype, consts, cfg in jobs:
            what = (f"sm_{arch} {kern.__name__} {dtype} "
                    + " ".join(f"{k}={v}" for k, v in consts.items())
                    + f" warps={cfg.num_warps} stages={cfg.num_stages}")
            try:
                regs, spills, smem = compile_one(kern, dtype, consts, arch, cfg.num_warps, cfg.num_stages,
                                                 usage=not a.no_usage)
            except Exception as exc:  # noqa: BLE001  (report every failing configuration)
                failures.append(what)
                print(f"FAILED {what}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
                continue
            done += 1
            if "BLOCK_N" in consts:  # the pruning estimate must bound what the compiler allocated
                est = tuning.smem_estimate(consts["BLOCK_M"], consts["BLOCK_N"], cfg.num_stages,
                                           consts["DP"], 4 if dtype == "fp32" else 2)
                if smem > est:
                    failures.append(what)
                    print(f"FAILED {what}: shared memory {smem} B > tuning.smem_estimate {est} B")
            key = (arch, kern.__name__)
            worst[key] = max(worst.get(key, (0, 0)), (spills, regs))
            if spills:
                print(f"spills {spills} B, {regs} regs, smem {smem} B: {what}")
        print(f"sm_{arch}: {done} compiled, {len(failures)} failed so far ({time.time() - t0:.0f} s)",
              flush=True)
    for (arch, name), (spills, regs) in sorted(worst.items()):
        print(f"  sm_{arch} {name:18s} worst: {spills} B spilled, {regs} registers")
    print("FAILED" if failures else "all compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
