"""GPU attention benchmarks: the `cuda` backend beside `triton`, the reference, SDPA with a dense
mask, compiled FlexAttention with a cached block mask, and NATTEN (when installed).

Groups are named `<case>-<map>-d<d>-<fwd|fwdbwd>` like the CPU benchmarks (e.g.
`grid-16x16-64x64-d64-fwd`), so `pytest benchmarks/ --benchmark-only` lists every implementation of
a case together. Each implementation is first checked against the float32 reference on the same
inputs, then timed with CUDA synchronisation; `extra_info` holds useful TFLOP/s, counting only
attended pairs (`4 * B * heads * pairs * d` forward, 2.5x that for the backward), and that rate as
a percentage of the device's dense float16 matrix-multiply rate measured in the same session
(`pct_matmul`). The fused pixel shuffle (+ position add) is timed here too, cuda/triton/ref.
Every test skips with "no CUDA device" on machines without a GPU: the Triton interpreter that runs
the Triton kernels in the CPU test suite says nothing about speed.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

from transgan_fast.ops import _dispatch
from transgan_fast.ops.geometry import NBHD, bias_index, grid_geometry, local_geometry, visibility

A = importlib.import_module("transgan_fast.ops.attention")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

DTYPE = torch.float16
# (name, geometry factory, B, heads, d, with rel_bias)
CASES = [
    ("grid-16x16-64x64-d64", lambda: grid_geometry((64, 64), (16, 16)), 8, 4, 64, True),
    ("grid-16x16-64x64-d16", lambda: grid_geometry((64, 64), (16, 16)), 8, 4, 16, True),
    ("grid-16x16-128x128-d64", lambda: grid_geometry((128, 128), (16, 16)), 2, 4, 64, True),
    ("local-7x7-32x32-d32", lambda: local_geometry((32, 32), kernel_size=7, border="clip"), 16, 4, 32, False),
    ("local-7x7-64x64-d32", lambda: local_geometry((64, 64), kernel_size=7, border="clip"), 8, 4, 32, False),
    ("natten-7x7-64x64-d32", lambda: local_geometry((64, 64), kernel_size=7, border="shift"), 8, 4, 32, False),
    ("global-bias-32x32-d16", lambda: grid_geometry((32, 32), (32, 32)), 16, 4, 16, True),
]
IMPLS = ["cuda", "triton", "ref", "sdpa", "flex", "natten"]


def _sync_timer(fn: Callable[[], object]) -> Callable[[], None]:
    def run():
        fn()
        torch.cuda.synchronize()
    return run


def _sdpa(geom, bias):
    mask = visibility(geom, "cuda")                                    # (N, N) bool
    if bias is None:
        return lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    idx = bias_index(geom, "cuda")

    def f(q, k, v, b):
        dense = b[idx].permute(2, 0, 1).to(q.dtype)                    # (h, N, N)
        dense = dense.masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense.unsqueeze(0))
    return f


def _flex(geom, bias, B, h):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        pytest.skip(f"flex: FlexAttention unavailable ({exc})")
    mask = visibility(geom, "cuda")
    idx = bias_index(geom, "cuda")
    block_mask = create_block_mask(lambda b, hh, i, j: mask[i, j], None, None, geom.N, geom.N,
                                   device="cuda")
    compiled = torch.compile(flex_attention)
    if bias is None:
        return lambda q, k, v, b: compiled(q, k, v, block_mask=block_mask)

    def f(q, k, v, b):
        score = lambda s, bb, hh, i, j: s + b[idx[i, j], hh].to(s.dtype)  # noqa: E731
        return compiled(q, k, v, score_mod=score, block_mask=block_mask)
    return f


def _natten(geom):
    if geom.kind != NBHD:
        pytest.skip("natten: only neighbourhood (border='shift') geometries")
    try:
        import natten  # noqa: F401
        from natten.functional import na2d
    except ImportError as exc:
        pytest.skip(f"natten: not installed ({exc})")
    (k1, k2), (d1, d2) = geom.nbhd_kernel, geom.nbhd_dilation
    H, W = geom.H, geom.W

    def f(q, k, v, b):
        B, h, N, d = q.shape
        to_map = lambda t: t.transpose(1, 2).reshape(B, H, W, h, d)  # noqa: E731  (B, H, W, h, d)
        o = na2d(to_map(q), to_map(k), to_map(v), kernel_size=(k1, k2), dilation=(d1, d2))
        return o.reshape(B, N, h, d).transpose(1, 2)
    return f


def _impl(name, geom, bias, B, h) -> Optional[Callable]:
    if name in ("cuda", "triton"):
        why = _dispatch._why_not(name, "attention", torch.device("cuda"), DTYPE)
        if why:
            pytest.skip(why)
        return lambda q, k, v, b: A.attention(q, k, v, geom, b, backend=name)
    if name == "ref":
        return lambda q, k, v, b: A.attention_ref(q, k, v, geom, b)
    if name == "sdpa":
        return _sdpa(geom, bias)
    if name == "flex":
        return _flex(geom, bias, B, h)
    return _natten(geom)


def _inputs(geom, B, h, d, bias, grad):
    q, k, v = (torch.randn(B, h, geom.N, d, device="cuda", dtype=DTYPE, requires_grad=grad)
               for _ in range(3))
    b = (torch.randn(geom.bias_rows, h, device="cuda", requires_grad=grad) * 0.5).detach() \
        .requires_grad_(grad) if bias else None
    return q, k, v, b


def _check(fn, q, k, v, b, geom):
    ref = A.attention_ref(q.detach().float(), k.detach().float(), v.detach().float(), geom,
                          None if b is None else b.detach().float())
    out = fn(q, k, v, b).float()
    err = (out - ref).abs().max().item()
    assert err == err and err <= 2e-2 * max(1.0, ref.abs().max().item()), f"parity error {err:.3e}"


@pytest.fixture(scope="session")
def matmul_tflops() -> float:
    """The device's measured dense float16 matmul rate (TFLOP/s), the denominator of `pct_matmul`."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=DTYPE) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def _record(benchmark, group, impl, fn, flops, matmul_tflops):
    benchmark.group = group
    benchmark.extra_info["backend"] = impl
    fn()  # warm-up: compilation, autotuning, allocator
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=2)
    tflops = flops / benchmark.stats.stats.mean / 1e12
    benchmark.extra_info["tflops"] = round(tflops, 3)
    benchmark.extra_info["gflops"] = round(tflops * 1e3, 1)
    benchmark.extra_info["matmul_tflops"] = round(matmul_tflops, 1)
    benchmark.extra_info["pct_matmul"] = round(100.0 * tflops / matmul_tflops, 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_attention_fwd(benchmark, case, impl, matmul_tflops):
    name, make, B, h, d, bias = case
    geom = make()
    fn = _impl(impl, geom, bias, B, h)
    q, k, v, b = _inputs(geom, B, h, d, bias, grad=False)
    with torch.no_grad():
        _check(fn, q, k, v, b, geom)
        pairs = int(visibility(geom, "cuda").sum())
        _record(benchmark, f"{name}-fwd", impl, _sync_timer(lambda: fn(q, k, v, b)),
                4.0 * B * h * pairs * d, matmul_tflops)


@pytest.mark.parametrize("impl", ["cuda", "triton", "ref", "sdpa", "flex"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_attention_fwdbwd(benchmark, case, impl, matmul_tflops):
    name, make, B, h, d, bias = case
    geom = make()
    fn = _impl(impl, geom, bias, B, h)
    q, k, v, b = _inputs(geom, B, h, d, bias, grad=True)
    g = torch.randn(B, h, geom.N, d, device="cuda", dtype=DTYPE)
    leaves = [t for t in (q, k, v, b) if t is not None]

    def step():
        torch.autograd.grad(fn(q, k, v, b), leaves, g)

    pairs = int(visibility(geom, "cuda").sum())
    _record(benchmark, f"{name}-fwdbwd", impl, _sync_timer(step), 3.5 * 4.0 * B * h * pairs * d,
            matmul_tflops)


@pytest.mark.parametrize("impl", ["cuda", "triton", "ref"])
@pytest.mark.parametrize("B,H,W,C", [(32, 8, 8, 1024), (32, 16, 16, 256), (8, 64, 64, 64)],
                         ids=lambda v: str(v))
def test_pixel_shuffle_pos(benchmark, impl, B, H, W, C):
    """Same shapes as the CPU group in bench_resample.py; memory-bound, so GB/s is reported."""
    from transgan_fast.ops.resample import pixel_shuffle_seq, pixel_shuffle_seq_ref
    why = _dispatch._why_not(impl, "pixel_shuffle_seq", torch.device("cuda"), DTYPE)
    if why:
        pytest.skip(why)
    x = torch.randn(B, H * W, C, device="cuda", dtype=DTYPE)
    pos = torch.randn(1, 4 * H * W, C // 4, device="cuda", dtype=DTYPE)
    out = pixel_shuffle_seq(x, (H, W), pos, backend=impl)
    ref = pixel_shuffle_seq_ref(x.float(), (H, W), pos.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-3, atol=1e-3, msg=f"{impl}: parity")
    benchmark.group = f"gpu-pixel_shuffle_seq+pos-{B}x{H}x{W}x{C}"
    benchmark.extra_info["backend"] = impl
    run = _sync_timer(lambda: pixel_shuffle_seq(x, (H, W), pos, backend=impl))
    run()
    benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=2)
    moved = (x.numel() * 2 + pos.numel()) * x.element_size()  # read x and pos, write the output
    benchmark.extra_info["GB/s"] = round(moved / benchmark.stats.stats.mean / 1e9, 1)
