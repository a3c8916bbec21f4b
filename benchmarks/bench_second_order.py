"""The gradient-penalty pattern through one attention layer on the CPU: `grad` of the output with
`create_graph=True`, then the backward of the gradient's squared norm (WGAN-GP, R1).

Implementations side by side: the `cpu` backend (first order on the fused kernels, the penalty's
second order on the sparse-logit kernels of `ops/_sparse.py`), the `ref` backend (plain PyTorch
autograd; dense N x N for the local kinds, window-partitioned for grid), and SDPA with a dense mask
(the math kernel: PyTorch's CPU flash kernel has no double backward). Every implementation's
penalty gradients are first checked against the float64 reference on one (batch, head) slice of
the benchmark's own inputs; then each is timed (group `penalty-<case>`), and a memory group runs
one penalty step per implementation in a fresh process and records its peak extra RSS
(Linux VmHWM after a reset). Run:
`pytest benchmarks/bench_second_order.py --benchmark-only --benchmark-columns=mean,stddev,rounds`.
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
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import transgan_fast
from transgan_fast.ops.attention import attention, attention_ref
from transgan_fast.ops.geometry import bias_index, grid_geometry, local_geometry, visibility

from conftest import QUICK, check_parity, skip_unless

# (name, geometry constructor args, with rel_bias); B 2, 4 heads, d 32 throughout.
CASES = {
    "local7x7-32x32": (("local", 32, 7), False),
    "local7x7-64x64": (("local", 64, 7), False),
    "grid16-64x64": (("grid", 64, 16), True),
    "grid16-128x128": (("grid", 128, 16), True),
    "global-16x16": (("grid", 16, 16), True),
}
if QUICK:  # TGF_BENCH_QUICK=1: one small case per kind (the code path, not a measurement)
    CASES = {
        "local7x7-16x16": (("local", 16, 7), False),
        "grid8-32x32": (("grid", 32, 8), True),
        "global-8x8": (("grid", 8, 8), True),
    }
B, HEADS, D = 2, 4, 32
IMPLS = ("cpu", "ref", "sdpa")
# Dense peers hold several (B, heads, N, N) float32 tensors in the double backward; above this many
# logits per tensor (4 GiB) they do not fit the machine and are skipped with that reason.
DENSE_LIMIT = 2 ** 30


def make_geom(spec):
    kind, L, w = spec
    if kind == "local":
        return local_geometry((L, L), "window2d", (w, w), "clip")
    return grid_geometry((L, L), (w, w))


def inputs(geom, bias: bool, b: int = B, h: int = HEADS):
    g = torch.Generator().manual_seed(0)
    q, k, v, w = (torch.randn(b, h, geom.N, D, generator=g) for _ in range(4))
    rb = torch.randn(geom.bias_rows, h, generator=g) if bias else None
    return q, k, v, w, rb


def impl_fn(impl, geom, rb):
    """fn(q, k, v, rel_bias) -> out."""
    if impl in ("cpu", "ref"):
        return lambda q, k, v, r: attention(q, k, v, geom, r, backend=impl)
    vis = visibility(geom)

    def sdpa(q, k, v, r):
        mask = vis if r is None else r[bias_index(geom)].permute(2, 0, 1).masked_fill(~vis, float("-inf"))
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return sdpa


def penalty_step(fn, q, k, v, w, rb):
    """Gradients of |d(out . w)/d(q, k, v)|^2 w.r.t. q, k, v (and rel_bias)."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    rbl = rb.clone().requires_grad_(True) if rb is not None else None
    out = fn(*leaves, rbl)
    grads = torch.autograd.grad((out * w).sum(), leaves, create_graph=True)
    pen = sum(g.pow(2).sum() for g in grads)
    return torch.autograd.grad(pen, leaves + ([rbl] if rbl is not None else []))


def _unavailable(impl, geom, b=B):
    if impl == "cpu":
        skip_unless("cpu")
    elif b * HEADS * geom.N * geom.N > DENSE_LIMIT and (impl == "sdpa" or geom.kind != 0):
        pytest.skip(f"{impl}: dense (B, heads, N, N) logits at N={geom.N} need "
                    f"{b * HEADS * geom.N ** 2 * 4 / 2 ** 30:.0f} GiB per tensor")


def _time(benchmark, group, fn, impl, **info):
    """Time `fn`; the parity check just ran the same code paths, so the slow peers (a minute per
    step on the larger maps) get one timed round and no warm-up."""
    benchmark.group = group
    benchmark.extra_info.update(info, impl=impl, threads=torch.get_num_threads())
    fast = impl == "cpu"
    benchmark.pedantic(fn, rounds=3 if fast else 1, iterations=1, warmup_rounds=1 if fast else 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_penalty(benchmark, case, impl):
    spec, bias = CASES[case]
    geom = make_geom(spec)
    _unavailable(impl, geom)
    q, k, v, w, rb = inputs(geom, bias)
    fn = impl_fn(impl, geom, rb)
    # Parity on the first (batch, head) slice against the float64 reference.
    sl = lambda t: t[:1, :1]  # noqa: E731
    rb1 = rb[:, :1] if rb is not None else None
    got = penalty_step(impl_fn(impl, geom, rb1), sl(q), sl(k), sl(v), sl(w), rb1)
    ref_fn = lambda q_, k_, v_, r: attention_ref(q_, k_, v_, geom, r)  # noqa: E731
    want = penalty_step(ref_fn, *(sl(t).double() for t in (q, k, v, w)),
                        rb1.double() if rb1 is not None else None)
    for what, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
        check_parity(a, b, tol=1e-4, what=f"{impl} {what}")
    _time(benchmark, f"penalty-{case}", lambda: penalty_step(fn, q, k, v, w, rb), impl,
          N=geom.N, B=B, heads=HEADS, d=D)


# ---------------------------------------------------------------------------------------------
# Memory: peak extra RSS of one penalty step, in a fresh process.

_MEM_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path[:0] = [sys.argv[1], sys.argv[4]]  # the parent's package directory, then benchmarks/
    import transgan_fast
    import bench_second_order as bs
    case, impl = sys.argv[2], sys.argv[3]
    torch.set_num_threads(2)
    spec, bias = bs.CASES[case]
    geom = bs.make_geom(spec)
    small = bs.make_geom(("grid", 4, 2))     # warm every code path before the baseline
    bs.penalty_step(bs.impl_fn(impl, small, None), *bs.inputs(small, False, 1, 1))
    q, k, v, w, rb = bs.inputs(geom, bias)
    fn = bs.impl_fn(impl, geom, rb)
    from _memory import PeakRSS
    with PeakRSS() as peak:
        bs.penalty_step(fn, q, k, v, w, rb)
    print(json.dumps({"extra_peak_mib": peak.extra_mib, "package": transgan_fast.__file__}))
""")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_penalty_memory(benchmark, case, impl):
    spec, _ = CASES[case]
    geom = make_geom(spec)
    _unavailable(impl, geom)
    # The child imports transgan_fast from where this process did (the installed package), never
    # the checkout beside this file, which has no compiled extension after `pip install .`; its
    # cwd is outside any checkout, since `python -c` puts the working directory first on sys.path.
    package_parent = str(Path(transgan_fast.__file__).resolve().parents[1])
    bench_dir = str(Path(__file__).resolve().parent)
    res = {}

    def run():
        p = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, package_parent, case, impl, bench_dir],
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
        assert p.returncode == 0, f"memory child failed:\n{p.stderr[-3000:]}"
        res.update(json.loads(p.stdout.strip().splitlines()[-1]))

    benchmark.group = f"memory-penalty-{case}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert Path(res.pop("package")).resolve() == Path(transgan_fast.__file__).resolve()
    benchmark.extra_info.update(res, impl=impl, N=geom.N)
