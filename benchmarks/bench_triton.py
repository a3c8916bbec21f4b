"""GPU benchmarks of the Triton backend against SDPA, FlexAttention and NATTEN (spec §7).

Groups share their names with the CPU benchmarks (e.g. "local-7x7-32x32-d32-fwd") so one report
lines every implementation of a case up side by side. Each case records useful TFLOP/s (counting
only attended pairs: 4·B·heads·N·keys·d forward, 3.5x that for forward+backward) in `extra_info`.
On a machine without a CUDA device every case is skipped: the Triton interpreter runs on CPU
tensors for testing only and says nothing about speed.

Run: `python -m pytest benchmarks/bench_triton.py --benchmark-group-by=group`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transgan_fast.ops.attention import attention, grid_attention_ref
from transgan_fast.ops.geometry import bias_index, grid_geometry, local_geometry, visibility

GPU = torch.cuda.is_available()
NO_GPU = "no CUDA device: the Triton interpreter is not a speed measurement"
B, HEADS = 4, 4
DTYPE = torch.float16

CASES = [  # (group stem, geometry factory, head dim, with rel_bias)
    ("local-7x7-32x32-d32", lambda: local_geometry((32, 32), "window2d", (7, 7), "clip"), 32, False),
    ("local-7x7-64x64-d32", lambda: local_geometry((64, 64), "window2d", (7, 7), "clip"), 32, False),
    ("grid-16x16-64x64-d16", lambda: grid_geometry((64, 64), (16, 16)), 16, True),
    ("grid-16x16-64x64-d64", lambda: grid_geometry((64, 64), (16, 16)), 64, True),
    ("grid-16x16-128x128-d16", lambda: grid_geometry((128, 128), (16, 16)), 16, True),
    ("grid-16x16-128x128-d64", lambda: grid_geometry((128, 128), (16, 16)), 64, True),
    ("global-bias-32x32-d16", lambda: grid_geometry((32, 32), (32, 32)), 16, True),
]
IMPLS = ["triton", "sdpa", "flex", "natten"]


def _inputs(geom, d, with_bias, grad):
    q, k, v = (torch.randn(B, HEADS, geom.N, d, device="cuda", dtype=DTYPE, requires_grad=grad)
               for _ in range(3))
    bias = (torch.randn(geom.bias_rows, HEADS, device="cuda", dtype=torch.float32, requires_grad=grad)
            if with_bias else None)
    return q, k, v, bias


def _sdpa_fn(geom, bias):
    """SDPA baseline: partition + dense window bias for grids, a boolean N x N mask otherwise."""
    if geom.kind == 0:
        return lambda q, k, v: grid_attention_ref(q, k, v, geom, bias)
    mask = visibility(geom, "cuda")  # (N, N) bool
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flex_fn(geom, bias):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    vis = visibility(geom, "cuda")  # (N, N) bool, read inside mask_mod
    block_mask = create_block_mask(lambda b, h, qi, kj: vis[qi, kj], None, None, geom.N, geom.N,
                                   device="cuda")  # built once, cached for every call
    flex = torch.compile(flex_attention)
    if bias is None:
        return lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    idx = bias_index(geom, "cuda")  # (N, N) table rows

    def score_mod(score, b, h, qi, kj):
        return score + bias[idx[qi, kj], h].to(score.dtype)
    return lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


def _natten_fn(geom, bias):
    natten = pytest.importorskip("natten", reason="NATTEN is not installed")
    if geom.kind == 0 or bias is not None:
        pytest.skip("NATTEN has no windowed/shifted-window or rel-bias variant of this case")
    ks = 2 * geom.p[0] + 1

    def run(q, k, v):  # NATTEN wants (B, H, W, heads, d)
        to_map = lambda t: t.transpose(1, 2).reshape(B, geom.H, geom.W, HEADS, -1)  # noqa: E731
        return natten.na2d(to_map(q), to_map(k), to_map(v), kernel_size=ks)
    return run


def _flops(geom, d, mode):
    fwd = 4 * B * HEADS * geom.N * geom.max_keys() * d
    return fwd if mode == "fwd" else 3.5 * fwd


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("stem,make,d,with_bias", CASES, ids=[c[0] for c in CASES])
def test_attention(benchmark, stem, make, d, with_bias, mode, impl):
    if not GPU:
        pytest.skip(NO_GPU)
    geom = make()
    benchmark.group = f"{stem}-{mode}"
    q, k, v, bias = _inputs(geom, d, with_bias, grad=mode == "fwdbwd")
    fn = {"triton": lambda: (lambda q, k, v: attention(q, k, v, geom, bias, backend="triton")),
          "sdpa": lambda: _sdpa_fn(geom, bias), "flex": lambda: _flex_fn(geom, bias),
          "natten": lambda: _natten_fn(geom, bias)}[impl]()
    g = torch.randn(B, HEADS, geom.N, d, device="cuda", dtype=DTYPE)

    def step():
        out = fn(q, k, v)
        if mode == "fwdbwd":
            out.backward(g)
        torch.cuda.synchronize()

    for _ in range(3):  # compile / autotune / warm up outside the timing
        step()
    benchmark.pedantic(step, rounds=20, iterations=1)
    benchmark.extra_info["backend"] = impl
    benchmark.extra_info["tflops"] = _flops(geom, d, mode) / benchmark.stats.stats.mean / 1e12


@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("hw,c", [((32, 32), 256), ((64, 64), 128)])
def test_pixel_shuffle(benchmark, hw, c, impl):
    if not GPU:
        pytest.skip(NO_GPU)
    from transgan_fast.ops.resample import pixel_shuffle_seq
    H, W = hw
    benchmark.group = f"pixel-shuffle-pos-{H}x{W}-c{c}"
    x = torch.randn(8, H * W, c, device="cuda", dtype=DTYPE)
    pos = torch.randn(1, 4 * H * W, c // 4, device="cuda", dtype=DTYPE)

    def step():
        pixel_shuffle_seq(x, hw, pos, backend=impl)
        torch.cuda.synchronize()

    step()
    benchmark.pedantic(step, rounds=50, iterations=1)
    benchmark.extra_info["backend"] = impl
    benchmark.extra_info["GB/s"] = 2 * x.numel() * x.element_size() / benchmark.stats.stats.mean / 1e9
