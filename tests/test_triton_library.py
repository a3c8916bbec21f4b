"""The Triton backend's `torch.library` registration (docs/ops.md §5, issue item 4).

- Without the interpreter the Triton ops are `triton_op`s: AOTAutograd (what torch.compile runs)
  must trace *into* them and find the Triton kernels themselves in the graph. That tracing needs no
  GPU (only running the graph does), so it is checked here in a subprocess without
  `TRITON_INTERPRET`, with autotuning on and off.
- Under the interpreter they are opaque custom ops whose fake kernel is the op body with launches
  skipped: `opcheck` holds them to the same registration rules as the other backends.
- The kernels compile to cubins for sm_80 and sm_90 (Triton's compiler and ptxas, no GPU needed).
- On a GPU, `torch.compile(fullgraph=True)` with inductor must match eager, forward and backward.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import assert_close_f32, requires_cuda_device, requires_triton_interpreter
from transgan_fast.ops import _dispatch, _library
from transgan_fast.ops.attention import attention, attention_qkv
from transgan_fast.ops.geometry import grid_geometry, local_geometry
from transgan_fast.ops.resample import pixel_shuffle_seq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON = _dispatch._triton_status()[0]
requires_triton = pytest.mark.skipif(not TRITON, reason="triton is not installed")

_TRACE_SCRIPT = textwrap.dedent("""
    import json, torch
    from functorch.compile import aot_function
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from transgan_fast.ops import _library
    from transgan_fast.ops.geometry import grid_geometry, local_geometry

    class Traced(Exception):
        pass

    def kernel_name(k):
        while type(k).__name__ != "JITFunction":  # Autotuner -> JITFunction
            k = k.fn
        return k.__name__

    def kernels_in(fn, *args):
        found = []
        def compiler(gm, inputs):  # sees the graph; no GPU to run it on, so stop here
            for n in gm.graph.nodes:
                if "triton_kernel_wrapper" in str(n.target):
                    found.append(kernel_name(kernel_side_table.get_kernel(n.kwargs["kernel_idx"])))
            raise Traced
        try:
            aot_function(fn, fw_compiler=compiler)(*args)
        except Traced:
            pass
        return found

    T, S = _library._TRITON_ATTN, _library._TRITON_SHUFFLE
    res = {"fwd_kind": type(T.fwd).__module__}
    for name, geom in [("grid", grid_geometry((6, 7), (4, 3), (1, 2))),
                       ("nbhd", local_geometry((7, 9), "window2d", (5, 3), "shift"))]:
        g = geom.as_list()
        q, k, v = (torch.randn(1, 2, geom.N, 24) for _ in range(3))
        b = torch.randn(geom.bias_rows, 2)
        o, lse = torch.randn_like(q), torch.randn(1, 2, geom.N)
        res[name + "_fwd"] = kernels_in(lambda q, k, v, b: T.fwd(q, k, v, b, g, 0.3, "triton")[0] + 1,
                                        q, k, v, b)
        res[name + "_bwd"] = kernels_in(
            lambda q, k, v, b, o, l: T.bwd(q, k, v, b, o, l, o, g, 0.3, "triton")[0] + 1,
            q, k, v, b, o, lse)
        qkv = torch.randn(1, geom.N, 3 * 2 * 8)
        res[name + "_qkv_fwd"] = kernels_in(
            lambda x, b: T.qkv_fwd(x, b, 2, g, 0.3, "triton")[0] + 1, qkv, b)
    x = torch.randn(2, 12, 8)
    pos = torch.randn(1, 48, 2)
    res["shuffle_pos"] = kernels_in(lambda x, p: S.ps_pos(x, 3, 4, p, "triton") + 1, x, pos)
    res["unshuffle"] = kernels_in(lambda y: S.pu(y, 3, 4, "triton") + 1, torch.randn(2, 48, 2))
    print("RESULT", json.dumps(res))
""")


@requires_triton
@pytest.mark.parametrize("autotune", ["1", "0"], ids=["autotune", "fixed-config"])
def test_aot_autograd_traces_into_the_triton_kernels(autotune):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRANSGAN_FAST_TRITON_AUTOTUNE"] = autotune
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-2000:] + res.stderr[-4000:]
    got = json.loads(lines[-1][len("RESULT "):])
    for name in ("grid", "nbhd"):
        assert got[name + "_fwd"] == ["attn_fwd_kernel"], got
        assert got[name + "_qkv_fwd"] == ["attn_fwd_kernel"], got
        assert got[name + "_bwd"] == ["delta_kernel", "dkdv_kernel", "dq_kernel"], got
    assert got["shuffle_pos"] == ["shuffle_kernel"], got
    assert got["unshuffle"] == ["unshuffle_kernel"], got


def _has_nvidia_compiler() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.exists(get_ptxas(80).path)
    except Exception:  # noqa: BLE001  (no NVIDIA backend in this triton build)
        return False


@requires_triton
@pytest.mark.slow
@pytest.mark.skipif(not TRITON or not _has_nvidia_compiler(),
                    reason="triton's NVIDIA backend (bundled ptxas) is not installed")
def test_kernels_compile_for_sm80_and_sm90():
    """The interpreter never lowers a kernel to PTX, so a construct it accepts may still fail on a
    GPU: compile the attention kernels (every pass, grid with bias and NATTEN in float16/float32) and
    the resampling kernels to cubins for sm_80 and sm_90 with Triton's own compiler and ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "triton_aot_check.py"),
                          "--quick", "--no-usage"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=1200)
    assert res.returncode == 0 and "all compiled" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sm_80: 25 compiled" in res.stdout and "sm_90: 50 compiled" in res.stdout, res.stdout


@requires_triton_interpreter
@pytest.mark.parametrize("geom", [grid_geometry((5, 6), (3, 4), (1, 2)),
                                  local_geometry((5, 5), "window2d", (3, 3), "shift")],
                         ids=["grid", "nbhd"])
def test_opcheck_triton_ops(geom):
    """Schema, fake kernel, autograd registration and AOT dispatch of the Triton ops (on a GPU the
    AOT check runs the kernels traced through `wrap_triton`; under the interpreter, opaquely)."""
    _library.POISON_OUTPUTS = False  # opcheck compares runs; poisoning is for kernel tests
    T = _library._TRITON_ATTN
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 2, geom.N, 16, device=dev, requires_grad=True) for _ in range(3))
    bias = torch.randn(geom.bias_rows, 2, device=dev, requires_grad=True)
    torch.library.opcheck(T.fwd, (q, k, v, bias, geom.as_list(), 0.4, "triton"))
    qkv = torch.randn(1, geom.N, 3 * 2 * 16, device=dev, requires_grad=True)
    torch.library.opcheck(T.qkv_fwd, (qkv, None, 2, geom.as_list(), 0.4, "triton"))
    x = torch.randn(2, 6, 8, device=dev, requires_grad=True)
    pos = torch.randn(1, 24, 2, device=dev)
    torch.library.opcheck(_library._TRITON_SHUFFLE.ps_pos, (x, 2, 3, pos, "triton"))


@requires_triton_interpreter
def test_triton_backend_uses_its_own_ops():
    """`backend="triton"` runs the `triton_*` ops, not the generic ones with a backend string."""
    geom = local_geometry((4, 5), "window2d", (3, 3), "clip")
    q = torch.randn(1, 1, geom.N, 16, device="cuda" if torch.cuda.is_available() else "cpu",
                    requires_grad=True)
    out = attention(q, q, q, geom, backend="triton")
    assert "triton_attn_fwd" in out.grad_fn.name(), out.grad_fn.name()


@requires_cuda_device
@requires_triton
def test_torch_compile_inductor_matches_eager():
    geom = grid_geometry((20, 18), (8, 8), (4, 2))
    h, d = 3, 24
    qkv = torch.randn(2, geom.N, 3 * h * d, device="cuda", requires_grad=True)
    bias = torch.randn(geom.bias_rows, h, device="cuda", requires_grad=True)
    x = torch.randn(2, geom.N, 16, device="cuda", requires_grad=True)

    def f(qkv, bias, x):
        o = attention_qkv(qkv, h, geom, bias, backend="triton")              # (B, N, h*d)
        y = pixel_shuffle_seq(x, (geom.H, geom.W), backend="triton")         # (B, 4N, 4)
        return o.square().mean() + y.sin().mean()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    want = torch.autograd.grad(f(qkv, bias, x), (qkv, bias, x))
    loss = compiled(qkv, bias, x)
    got = torch.autograd.grad(loss, (qkv, bias, x))
    assert_close_f32(loss, f(qkv, bias, x).double(), tf32=True, what="compiled loss")
    for name, a, b in zip(("dqkv", "dbias", "dx"), got, want):
        assert_close_f32(a, b.double(), grad=True, tf32=True, what=f"compiled {name}")
