"""The `triton` backend against the float64 reference (docs/ops.md §4), forward and every gradient.

Run on a CPU-only machine as `TRITON_INTERPRET=1 python -m pytest tests/test_triton.py` (the
interpreter must be switched on before triton is imported, so it cannot be set from here). On a
CUDA machine the same tests run on the GPU with larger shapes and bfloat16 too.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import assert_close_f32, assert_close_lowp, requires_triton_interpreter
from transgan_fast.ops import _dispatch
from transgan_fast.ops.attention import attention, attention_qkv, attention_ref
from transgan_fast.ops.geometry import grid_geometry, local_geometry
from transgan_fast.ops.resample import (pixel_shuffle_seq, pixel_shuffle_seq_ref,
                                        pixel_unshuffle_seq, pixel_unshuffle_seq_ref)

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402
from transgan_fast.ops._triton import _geom as G  # noqa: E402
from transgan_fast.ops._triton import tuning  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
LOWP = [torch.float16, torch.bfloat16] if GPU else [torch.float16]

# (id, geometry) — awkward on purpose: windows that do not divide the map, shifts, dilation.
if GPU:
    GEOMS = [
        ("grid-shift-partial", grid_geometry((30, 29), (8, 8), (3, 5))),
        ("grid-global", grid_geometry((16, 16), (16, 16))),
        ("band1d", local_geometry((20, 24), "band1d", width=37)),
        ("clip", local_geometry((31, 27), "window2d", (7, 5), "clip")),
        ("clip-fullbias", None),
        ("nbhd-dilated", local_geometry((29, 33), "window2d", (5, 7), "shift", (3, 2))),
        ("nbhd", local_geometry((24, 20), "window2d", (7, 7), "shift")),
    ]
    SHAPE = dict(B=2, h=3)
else:
    GEOMS = [
        ("grid-shift-partial", grid_geometry((6, 7), (4, 3), (1, 2))),
        ("grid-global", grid_geometry((4, 5), (4, 5))),
        ("band1d", local_geometry((5, 6), "band1d", width=4)),
        ("clip", local_geometry((7, 6), "window2d", (3, 5), "clip")),
        ("clip-fullbias", None),
        ("nbhd-dilated", local_geometry((9, 8), "window2d", (3, 3), "shift", (2, 2))),
        ("nbhd", local_geometry((7, 9), "window2d", (5, 3), "shift")),
    ]
    SHAPE = dict(B=2, h=2)

pytestmark = requires_triton_interpreter


def _geom(name, geom):
    if name == "clip-fullbias":  # the masked-global TransGAN table: (2H-1)(2W-1) rows
        H, W = (12, 10) if GPU else (5, 4)
        return local_geometry((H, W), "window2d", (3, 3), "clip", bias_rows=(2 * H - 1) * (2 * W - 1))
    return geom


def _run(fn, leaves, grad_out):
    out = fn(*leaves)
    need = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out, need, grad_out)


def _check(fn_fast, fn_ref, leaves, dtype, what):
    """Forward and all gradients of `fn_fast` (triton) against `fn_ref` in float64 (and in `dtype`)."""
    leaves = [t.to(DEV, dtype).requires_grad_() if t is not None else None for t in leaves]
    out = fn_fast(*leaves)
    g = torch.randn_like(out)
    need = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, need, g)
    l64 = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    out64, grads64 = _run(fn_ref, l64, g.double())
    names = ["q", "k", "v", "rel_bias"] if len(leaves) == 4 else [f"arg{i}" for i in range(len(need))]
    names = [n for n, t in zip(names, leaves) if t is not None]
    if dtype == torch.float32:
        assert_close_f32(out, out64, tf32=GPU, what=f"{what} out")
        for n, a, b in zip(names, grads, grads64):
            assert_close_f32(a, b, grad=True, tf32=GPU, what=f"{what} d{n}")
        return
    llo = [t.detach().requires_grad_() if t is not None else None for t in leaves]
    out_lo, grads_lo = _run(fn_ref, llo, g)
    assert_close_lowp(out, out64, out_lo, what=f"{what} out")
    for n, a, b, c in zip(names, grads, grads64, grads_lo):
        assert_close_lowp(a, b, c, grad=True, what=f"{what} d{n}")


def _qkv_bias(geom, d, with_bias, B, h):
    q, k, v = (torch.randn(B, h, geom.N, d) for _ in range(3))
    bias = torch.randn(geom.bias_rows, h) if with_bias else None
    return [q, k, v, bias]


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("name,geom", GEOMS, ids=[g[0] for g in GEOMS])
def test_attention_float32(name, geom, with_bias):
    geom = _geom(name, geom)
    d = 24 if name != "nbhd" else 4
    leaves = _qkv_bias(geom, d, with_bias, **SHAPE)
    _check(lambda q, k, v, b: attention(q, k, v, geom, b, backend="triton"),
           lambda q, k, v, b: attention_ref(q, k, v, geom, b), leaves, torch.float32, name)


@pytest.mark.parametrize("dtype", LOWP, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("name,d", [("grid-shift-partial", 72), ("nbhd-dilated", 16), ("clip", 84)])
def test_attention_lowp(name, d, dtype):
    geom = _geom(name, dict(GEOMS)[name])
    leaves = _qkv_bias(geom, d, True, B=1, h=1)
    _check(lambda q, k, v, b: attention(q, k, v, geom, b, backend="triton"),
           lambda q, k, v, b: attention_ref(q, k, v, geom, b), leaves, dtype, name)


@pytest.mark.parametrize("d", [4, 96] if not GPU else [4, 96, 256])
def test_head_dims_and_scale(d):
    geom = local_geometry((5, 5), "window2d", (3, 3), "clip") if not GPU else \
        local_geometry((20, 20), "window2d", (5, 5), "clip")
    leaves = _qkv_bias(geom, d, False, B=1, h=1)[:3]
    _check(lambda q, k, v: attention(q, k, v, geom, scale=0.3, backend="triton"),
           lambda q, k, v: attention_ref(q, k, v, geom, scale=0.3), leaves, torch.float32, f"d={d}")


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=lambda t: str(t).replace("torch.", ""))
def test_packed_qkv(dtype):
    geom = grid_geometry((5, 6), (3, 4), (1, 1)) if not GPU else grid_geometry((20, 18), (8, 8), (4, 2))
    h, d = 3, 8
    qkv = torch.randn(2, geom.N, 3 * h * d)
    bias = torch.randn(geom.bias_rows, h)

    def ref(x, b):
        B, N, _ = x.shape
        q, k, v = x.reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        return attention_ref(q, k, v, geom, b).transpose(1, 2).reshape(B, N, h * d)

    _check(lambda x, b: attention_qkv(x, h, geom, b, backend="triton"), ref, [qkv, bias], dtype, "qkv")


def test_large_logits_finite():
    geom = grid_geometry((4, 6), (4, 3), (2, 1))
    q, k, v = (torch.randn(1, 2, geom.N, 16, device=DEV) * 30 for _ in range(3))
    out = attention(q, k, v, geom, scale=10.0, backend="triton")  # logits up to ~±1e4
    ref = attention_ref(q.double(), k.double(), v.double(), geom, scale=10.0)
    assert torch.isfinite(out).all()
    assert_close_f32(out, ref, tf32=GPU)


# Non-finite inputs on Triton: tests/test_nonfinite.py (every backend, same geometries).


_TILES = sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in tuning.SM90_CONFIGS})


@pytest.mark.parametrize("name", ["grid-shift-partial", "band1d", "clip", "nbhd-dilated"])
def test_every_tuning_tile_gives_the_same_result(name, monkeypatch):
    """docs/ops.md §4 / issue item 5: autotuning may pick any (BLOCK_M, BLOCK_N) of the sm_80/sm_90 spaces;
    each changes how planes are cut into tiles, never the result. Forward and all gradients."""
    geom = _geom(name, dict(GEOMS)[name])
    leaves = _qkv_bias(geom, 16, True, B=1, h=2)
    for bm, bn in _TILES:
        monkeypatch.setattr(tuning, "override", triton.Config({"BLOCK_M": bm, "BLOCK_N": bn},
                                                              num_warps=4, num_stages=2))
        _check(lambda q, k, v, b: attention(q, k, v, geom, b, backend="triton"),
               lambda q, k, v, b: attention_ref(q, k, v, geom, b), leaves, torch.float32,
               f"{name} BLOCK_M={bm} BLOCK_N={bn}")


def test_shared_memory_pruning():
    """Configurations that cannot fit are dropped (float32 at head dim 256 on sm_80), those that fit
    are kept, and there is always one left."""
    fits = lambda c, dp, elt: tuning.fits(c, dp, elt, tuning.SM80_SMEM)  # noqa: E731
    assert all(fits(c, 64, 2) for c in tuning.SM80_CONFIGS)        # float16, d <= 64: everything
    kept = tuning.prune_for_smem(tuning.SM80_CONFIGS, {"DP": 256})     # float32 (no Q: 4 bytes)
    assert 0 < len(kept) < len(tuning.SM80_CONFIGS)
    assert all(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 32 for c in kept), kept  # small tiles
    for dp in (16, 32, 64, 128, 256):
        for elt in (2, 4):
            assert fits(tuning.default_config(dp, elt), dp, elt), (dp, elt)
            kept = tuning.prune_for_smem(tuning.SM80_CONFIGS, {"DP": dp})
            assert kept and all(fits(c, dp, 4) for c in kept)


def test_second_order_through_reference():
    geom = local_geometry((4, 5), "window2d", (3, 3), "shift")
    leaves = [t.double().to(DEV) for t in _qkv_bias(geom, 8, True, B=1, h=2)]
    lf = [t.float().requires_grad_() for t in leaves]
    l64 = [t.clone().requires_grad_() for t in leaves]

    def penalty(fn, ls):
        out = fn(*ls)
        (gq,) = torch.autograd.grad(out.square().sum(), ls[0], create_graph=True)
        return torch.autograd.grad(gq.square().sum(), ls)

    fast = penalty(lambda q, k, v, b: attention(q, k, v, geom, b, backend="triton"), lf)
    ref = penalty(lambda q, k, v, b: attention_ref(q, k, v, geom, b), l64)
    for n, a, b in zip("qkvb", fast, ref):
        assert_close_f32(a, b, grad=True, tf32=GPU, what=f"second-order d{n}")


@pytest.mark.parametrize("dtype", [torch.float32] + LOWP, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("pos_batch", [None, 1, 2])
def test_pixel_shuffle(dtype, pos_batch):
    H, W, C = (3, 5, 12) if not GPU else (17, 9, 96)
    x = torch.randn(2, H * W, C)
    pos = torch.randn(pos_batch, 4 * H * W, C // 4) if pos_batch else None
    _check(lambda x, p: pixel_shuffle_seq(x, (H, W), p, backend="triton"),
           lambda x, p: pixel_shuffle_seq_ref(x, (H, W), p), [x, pos], dtype, "pixel_shuffle")


def test_pixel_unshuffle():
    H, W, C = (6, 4, 3) if not GPU else (34, 18, 24)
    g = torch.randn(2, H * W, C, device=DEV)
    out = pixel_unshuffle_seq(g, (H, W), backend="triton")
    assert torch.equal(out, pixel_unshuffle_seq_ref(g, (H, W)))
    assert torch.equal(pixel_shuffle_seq(out, (H // 2, W // 2), backend="triton"), g)


@pytest.mark.skipif(GPU, reason="checks the CPU-tensor error path, which needs a CPU-only machine")
def test_cpu_tensor_without_interpreter_is_a_clear_error():
    code = ("import torch\nfrom transgan_fast.ops import _dispatch\n"
            "from transgan_fast.ops.attention import grid_attention\n"
            "q = torch.randn(1, 1, 16, 8)\n"
            "try:\n    grid_attention(q, q, q, (4, 4), (2, 2), backend='triton')\n"
            "except _dispatch.BackendUnavailableError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and "TRITON_INTERPRET=1" in res.stdout, res.stdout


def test_backend_registered():
    info = _dispatch.backends()["triton"]
    for k in ("attn_fwd", "attn_bwd", "pixel_shuffle_seq", "pixel_unshuffle_seq"):
        assert k in info["ops"]
    assert info["usable"]


@triton.jit
def _offset_probe(Out, bt, hd, sb, sh):
    tl.store(Out, G.slice_offset(bt + tl.program_id(0), hd + tl.program_id(1), sb, sh))


def test_slice_offsets_are_computed_in_int64():
    """Issue 15 item 5: `hd * sqh` was int32 arithmetic (program ids and strides below 2**31 arrive
    as int32), which wraps once heads * N * d >= 2**31. The kernels now take every (batch, head)
    slice offset from `_geom.slice_offset`, in int64; a probe kernel checks it on a huge offset."""
    import inspect

    from transgan_fast.ops._triton import attention_bwd, attention_fwd

    out = torch.zeros(1, dtype=torch.int64, device=DEV)
    bt, hd, sb, sh = 3, 40000, 2 ** 30 + 5, 70000  # hd * sh = 2.8e9 > 2**31
    _offset_probe[(1, 1)](out, bt, hd, sb, sh)
    assert out.item() == bt * sb + hd * sh
    for mod in (attention_fwd, attention_bwd):
        src = inspect.getsource(mod)
        assert "hd * s" not in src and "bt * s" not in src, f"{mod.__name__}: int32 slice offset"


def test_autotune_key_has_shift_dilation_and_batch_heads():
    """Issue 15 item 5: the best tile depends on the shift/dilation (P2, P3) and on how many
    (batch, head) programs fill the GPU; all are in the autotune key."""
    from transgan_fast.ops._triton import attention_bwd, attention_fwd
    for launcher in (attention_fwd._launcher, attention_bwd._dq, attention_bwd._dkdv):
        assert {"P2", "P3", "BH"} <= set(launcher.tuned().keys)
