"""CPU attention, docs/ops.md §7 cases side by side: the fused `cpu` backend, the `ref` backend, SDPA
with a boolean mask / dense bias, window partition + SDPA (grid), compiled FlexAttention with a
cached block mask, NATTEN.

Each case has a forward group and a forward+backward group; every implementation is checked
against the float64 reference on the benchmark's own inputs before it is timed, and records
useful GFLOP/s (attended pairs only; forward+backward counts 3.5x the forward's
4*B*heads*pairs*d, the usual flash-attention convention). A memory group runs local and grid attention on a 128x128
map in subprocesses and records their peak extra RSS (Linux VmHWM after a reset) (O(N) for `cpu`, an N x N buffer for the
dense reference). Reduced-precision groups (`lowp-...`) time bfloat16 and float16 on the same
case: the `cpu` kernels beside the `cpu` float32 kernel, SDPA with a mask and compiled
FlexAttention in the same dtype. Run: `pytest benchmarks/bench_cpu_attention.py --benchmark-only`
(`TGF_BENCH_QUICK=1`: small cases, SDPA as the only peer, memory on a 32x32 map, reduced precision
on the smallest case: torch's bfloat16 matmul is slow on CPUs without native bfloat16).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

import transgan_fast
from transgan_fast.ops.attention import attention, attention_ref
from transgan_fast.ops.geometry import grid_geometry, local_geometry

from conftest import QUICK
from _common_cpu import (check_parity, cpu_unavailable, flex_peer, flex_unavailable,
                         natten_unavailable, partition_peer, record, sdpa_peer, skip_if,
                         useful_flops)

# (name, geometry, B, heads, d, with rel_bias, peers besides cpu/ref)
CASES = [
    ("local7x7-32x32-d32", local_geometry((32, 32), "window2d", (7, 7), "clip"), 2, 4, 32, False,
     ("sdpa", "flex", "natten")),
    ("local7x7-64x64-d32", local_geometry((64, 64), "window2d", (7, 7), "clip"), 1, 4, 32, False,
     ("sdpa", "flex", "natten")),
    ("grid16-64x64-d16-bias", grid_geometry((64, 64), (16, 16)), 2, 4, 16, True, ()),
    ("grid16-64x64-d64-bias", grid_geometry((64, 64), (16, 16)), 1, 4, 64, True, ()),
    ("grid16-128x128-d16-bias", grid_geometry((128, 128), (16, 16)), 1, 2, 16, True, ()),
    ("grid16-128x128-d64-bias", grid_geometry((128, 128), (16, 16)), 1, 2, 64, True, ()),
    ("global-32x32-d16-bias", grid_geometry((32, 32), (32, 32)), 4, 4, 16, True, ("sdpa", "flex")),
    # The float32 targets of the reduced-precision issue: local 7x7 forward against SDPA with a
    # mask, grid 8x8 forward+backward against window partition + SDPA.
    ("local7x7-32x32-d32-b8", local_geometry((32, 32), "window2d", (7, 7), "clip"), 8, 4, 32, False,
     ("sdpa",)),
    ("grid8-32x32-d32-b8", grid_geometry((32, 32), (8, 8)), 8, 4, 32, False, ("partition",)),
]
if QUICK:  # smoke run: every code path once, small maps; FlexAttention compiles for minutes
    CASES = [
        ("quick-local3x3-12x12-d8", local_geometry((12, 12), "window2d", (3, 3), "clip"), 1, 2, 8,
         False, ("sdpa",)),
        ("quick-grid4-10x10-d8-bias", grid_geometry((10, 10), (4, 4)), 1, 2, 8, True, ()),
        ("quick-global-8x8-d8-bias", grid_geometry((8, 8), (8, 8)), 2, 2, 8, True, ("sdpa",)),
        ("quick-grid4-8x8-d8-bias", grid_geometry((8, 8), (4, 4)), 1, 2, 8, True, ("partition",)),
    ]
# Reduced precision: (case as above, dtypes). Local 7x7 on 64x64 at batch 4 is the case.
LOWP_CASES = [
    ("local7x7-64x64-d32-b4", local_geometry((64, 64), "window2d", (7, 7), "clip"), 4, 4, 32, False,
     ("sdpa", "flex")),
]
if QUICK:
    LOWP_CASES = [CASES[0]]
LOWP_DTYPES = (torch.bfloat16, torch.float16)
# Forward parity against the float64 reference (inputs rounded to the dtype first); gradients 5x.
LOWP_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
IMPLS = ("cpu", "ref", "sdpa", "partition", "flex", "natten")
_ref_cache = {}


def _params():
    for c in CASES:
        for impl in IMPLS:
            if impl in ("cpu", "ref") or impl in c[6]:
                yield pytest.param(c, impl, id=f"{c[0]}-{impl}")


def _inputs(case):
    """Seeded inputs of a case, its float64 reference output and gradients (cached)."""
    name, geom, B, h, d, bias, _ = case
    if name not in _ref_cache:
        g = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(B, h, geom.N, d, generator=g) for _ in range(4))
        rb = torch.randn(geom.bias_rows, h, generator=g) if bias else None
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        rb64 = rb.double().requires_grad_() if bias else None
        out = attention_ref(*leaves, geom, rb64)
        grads = torch.autograd.grad(out, leaves + ([rb64] if bias else []), do.double())
        _ref_cache[name] = ((q, k, v, rb, do), out.detach(), grads)
    return _ref_cache[name]


def _impl(case, impl):
    """The implementation as fn(q, k, v) -> out, or a skip."""
    name, geom, B, h, d, bias, _ = case
    (q, k, v, rb, do), _, _ = _inputs(case)
    if impl in ("cpu", "ref"):
        skip_if(cpu_unavailable() if impl == "cpu" else None)
        return lambda q_, k_, v_: attention(q_, k_, v_, geom, rb, backend=impl)
    if impl == "sdpa":
        return sdpa_peer(geom, rb, h)
    if impl == "partition":
        return partition_peer(geom, rb, h)
    if impl == "flex":
        skip_if(flex_unavailable())
        return flex_peer(geom, rb, h)
    skip_if(natten_unavailable())
    pytest.skip("NATTEN is importable, but its na2d computes border='shift' neighbourhoods, not "
                "this case's border='clip' windows; no like-for-like call is wired here")


@pytest.mark.parametrize("case,impl", list(_params()))
def test_forward(benchmark, case, impl):
    name, geom, B, h, d, bias, _ = case
    fn = _impl(case, impl)
    (q, k, v, rb, do), ref, _ = _inputs(case)
    with torch.no_grad():
        check_parity(fn(q, k, v), ref)
        record(benchmark, f"fwd-{name}", lambda: fn(q, k, v),
               flops=useful_flops(geom, B, h, d), rounds=_rounds(impl, geom), impl=impl)


@pytest.mark.parametrize("case,impl", list(_params()))
def test_forward_backward(benchmark, case, impl):
    name, geom, B, h, d, bias, _ = case
    fn = _impl(case, impl)
    (q, k, v, rb, do), ref, ref_grads = _inputs(case)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def step():
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, do)

    try:
        grads = step()
    except Exception as exc:  # FlexAttention's CPU backward may be missing: report, do not fail
        if impl != "flex":
            raise
        pytest.skip(f"flex backward on CPU failed: {type(exc).__name__}: {str(exc)[:200]}")
    for what, a, b in zip("qkv", grads, ref_grads):
        check_parity(a, b, tol=1e-4, what=f"d{what}")
    record(benchmark, f"fwdbwd-{name}", step, flops=3.5 * useful_flops(geom, B, h, d),
           rounds=_rounds(impl, geom), impl=impl)


# ---------------------------------------------------------------------------------------------
# Reduced precision: bfloat16 / float16 beside our float32 kernel on the same case.

def _lowp_params():
    for c in LOWP_CASES:
        yield pytest.param(c, torch.float32, "cpu", id=f"{c[0]}-cpu-float32")
        for dt in LOWP_DTYPES:
            for impl in ("cpu",) + tuple(i for i in ("sdpa", "flex") if i in c[6]):
                yield pytest.param(c, dt, impl, id=f"{c[0]}-{impl}-{str(dt)[6:]}")


def _lowp_run(benchmark, case, dtype, impl, backward):
    name, geom, B, h, d, bias, _ = case
    fn = _impl(case, impl)
    (q, k, v, rb, do), ref, ref_grads = _inputs(case)
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))
    tol = LOWP_TOL[dtype]
    if not backward:
        with torch.no_grad():
            try:
                out = fn(q, k, v)
            except Exception as exc:  # compiled FlexAttention may lack a CPU kernel for the dtype
                if impl != "flex":
                    raise
                pytest.skip(f"flex {dtype} on CPU failed: {type(exc).__name__}: {str(exc)[:200]}")
            assert out.dtype == dtype
            check_parity(out, ref, tol=tol)
            record_fn = lambda: fn(q, k, v)  # noqa: E731
    else:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]

        def record_fn():
            return torch.autograd.grad(fn(*leaves), leaves, do)

        try:
            grads = record_fn()
        except Exception as exc:
            if impl != "flex":
                raise
            pytest.skip(f"flex {dtype} backward on CPU failed: {type(exc).__name__}: {str(exc)[:200]}")
        for what, a, b in zip("qkv", grads, ref_grads):
            check_parity(a, b, tol=5 * tol, what=f"d{what}")
    group = f"lowp-{'fwdbwd' if backward else 'fwd'}-{name}"
    flops = useful_flops(geom, B, h, d) * (3.5 if backward else 1.0)
    with torch.no_grad() if not backward else torch.enable_grad():
        record(benchmark, group, record_fn, flops=flops, rounds=_rounds(impl, geom),
               impl=f"{impl}-{str(dtype)[6:]}", dtype=str(dtype)[6:])


@pytest.mark.parametrize("case,dtype,impl", list(_lowp_params()))
def test_lowp_forward(benchmark, case, dtype, impl):
    _lowp_run(benchmark, case, dtype, impl, backward=False)


@pytest.mark.parametrize("case,dtype,impl", list(_lowp_params()))
def test_lowp_forward_backward(benchmark, case, dtype, impl):
    _lowp_run(benchmark, case, dtype, impl, backward=True)


def _rounds(impl, geom):
    # The dense peers are slow on the larger maps; a couple of rounds keep the suite short.
    return 5 if impl == "cpu" or geom.N <= 1024 else 2


# ---------------------------------------------------------------------------------------------
# Memory: peak extra RSS of one forward+backward at 128x128 tokens (quick: 32x32), in a fresh
# process.

MEM_SIDE = 32 if QUICK else 128

# The child imports the package from sys.argv[1]: the directory this process imported
# transgan_fast from (the installed package; the source tree only for an editable install), never
# the checkout beside this file, which holds no compiled extension after `pip install .`.
_MEM_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path[:0] = [sys.argv[1], sys.argv[5]]  # the parent's package directory, then benchmarks/
    import transgan_fast
    from transgan_fast.ops.attention import attention
    from transgan_fast.ops.geometry import grid_geometry, local_geometry
    kind, backend, side = sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(2)
    geom = (local_geometry((side, side), "window2d", (7, 7), "clip") if kind == "local"
            else grid_geometry((side, side), (16, 16)))
    rb = torch.randn(geom.bias_rows, 1) if kind == "grid" else None
    q, k, v = (torch.randn(1, 1, geom.N, 16, requires_grad=True) for _ in range(3))
    small = grid_geometry((4, 4), (2, 2))   # warm every code path before the baseline
    t = torch.randn(1, 1, 16, 16, requires_grad=True)
    attention(t, t, t, small, backend=backend).sum().backward()
    from _memory import PeakRSS
    with PeakRSS() as peak:
        out = attention(q, k, v, geom, rb, backend=backend)
        out.sum().backward()
    print(json.dumps({"extra_peak_mib": peak.extra_mib, "package": transgan_fast.__file__,
                      "qkv_mib": 3 * q.numel() * 4 / 2 ** 20}))
""")


@pytest.mark.parametrize("kind", ["local", "grid"])
@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_memory(benchmark, kind, backend):
    skip_if(cpu_unavailable() if backend == "cpu" else None)
    package_parent = str(Path(transgan_fast.__file__).resolve().parents[1])
    res = {}

    def run():
        # cwd outside any checkout: `python -c` puts the working directory first on sys.path.
        bench_dir = str(Path(__file__).resolve().parent)
        p = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, package_parent, kind, backend,
                            str(MEM_SIDE), bench_dir],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
        assert p.returncode == 0, f"memory child failed:\n{p.stderr[-3000:]}"
        res.update(json.loads(p.stdout.strip().splitlines()[-1]))

    benchmark.group = f"memory-{kind}-{MEM_SIDE}x{MEM_SIDE}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert Path(res["package"]).resolve() == Path(transgan_fast.__file__).resolve(), res["package"]
    n = MEM_SIDE * MEM_SIDE
    benchmark.extra_info.update(res, impl=backend, nxn_float32_mib=n * n * 4 / 2 ** 20)
