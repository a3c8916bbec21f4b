"""The `cuda` sparse-logit primitives (`sparse_qk`, `sparse_av`, `sparse_avt`,
csrc/cuda/sparse_attn.cu) against the references of `ops/neighbours.py` (GPU only; docs/ops.md §4
tolerances): every geometry kind, float32/float16/bfloat16, strided inputs, head dims 1..256,
outputs poisoned with NaN, non-finite propagation, bit-identical reruns of the transpose."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close_f32, assert_close_lowp
from transgan_fast.ops import _dispatch
from transgan_fast.ops import geometry as G
from transgan_fast.ops import neighbours as nb

DEV = "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IDS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
OPS = ("sparse_qk", "sparse_av", "sparse_avt")

GEOMS = {
    "grid-8x8-w4": G.grid_geometry((8, 8), (4, 4)),
    "grid-7x10-w4-shift23": G.grid_geometry((7, 10), (4, 4), (2, 3)),
    "grid-30x29-w8-shift35": G.grid_geometry((30, 29), (8, 8), (3, 5)),
    "global-9x7": G.grid_geometry((9, 7), (9, 7)),
    "global-33x35": G.grid_geometry((33, 35), (33, 35)),
    "band-5x7-w6": G.local_geometry((5, 7), mode="band1d", width=6),
    "band-3x3-w100": G.local_geometry((3, 3), mode="band1d", width=100),
    "clip-9x9-k5": G.local_geometry((9, 9), kernel_size=(5, 5)),
    "clip-4x3-k97": G.local_geometry((4, 3), kernel_size=(9, 7)),
    "clip-17x19-k7": G.local_geometry((17, 19), kernel_size=(7, 7)),
    "nbhd-9x8-k3-dil2": G.local_geometry((9, 8), kernel_size=(3, 3), border="shift",
                                         dilation=(2, 2)),
    "nbhd-10x10-k53-dil13": G.local_geometry((10, 10), kernel_size=(5, 3), border="shift",
                                             dilation=(1, 3)),
    "nbhd-20x20-k7": G.local_geometry((20, 20), kernel_size=(7, 7), border="shift"),
    "nbhd-13x11-k42": G.local_geometry((13, 11), kernel_size=(4, 2), border="shift"),
}


def _kernel(name):
    _dispatch._load_backend_modules()
    return _dispatch.kernel("cuda", name)


def _inputs(geom, d, dtype, B=2, h=3):
    N, K = geom.N, nb.num_slots(geom)
    a = torch.randn(B, N, h, d, dtype=torch.float64, device=DEV).transpose(1, 2)     # strided
    b = torch.randn(B, h, N, d, dtype=torch.float64, device=DEV)
    x = torch.randn(B, h, N, 2 * d, dtype=torch.float64, device=DEV)[..., d:]        # row stride 2d
    p = torch.randn(B, h, N, K, dtype=torch.float64, device=DEV)
    return [t.to(dtype) for t in (a, b, x, p)]


def _run(geom, a, b, x, p):
    B, h, N, d = b.shape
    K = nb.num_slots(geom)
    outs = []
    for name, args, last in (("sparse_qk", (a, b), K), ("sparse_av", (p, b), d),
                             ("sparse_avt", (p, x), d)):
        out = torch.full((B, h, N, last), float("nan"), dtype=b.dtype, device=DEV)
        _kernel(name)(*args, geom, out)
        outs.append(out)
    return outs


def _refs(geom, a, b, x, p, dtype):
    keys = nb.neighbour_index(geom, device=DEV)[0]
    a, b, x, p = (t.to(dtype) for t in (a, b, x, p))
    return (nb.sparse_qk_ref(a, b, keys), nb.sparse_av_ref(p, b, keys),
            nb.sparse_avt_ref(p, x, keys))


def check(geom, dtype, d=16, B=2, h=3):
    a, b, x, p = _inputs(geom, d, dtype, B, h)
    outs = _run(geom, a, b, x, p)
    r64 = _refs(geom, a, b, x, p, torch.float64)
    if dtype == torch.float32:
        for name, o, r in zip(OPS, outs, r64):
            assert_close_f32(o, r, what=name)
    else:
        rl = _refs(geom, a, b, x, p, dtype)
        for name, o, r, l in zip(OPS, outs, r64, rl):
            assert o.dtype == dtype
            assert_close_lowp(o, r, l, what=name)
    keys = nb.neighbour_index(geom, device=DEV)[0]
    assert (outs[0][:, :, keys < 0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("name", list(GEOMS))
def test_every_geometry(name, dtype):
    check(GEOMS[name], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS.get)
@pytest.mark.parametrize("d", [1, 5, 32, 33, 64, 100, 256])
def test_head_dims(d, dtype):
    check(GEOMS["nbhd-10x10-k53-dil13"], dtype, d=d, B=1, h=2)


def test_nonfinite_values_reach_exactly_their_readers():
    geom = GEOMS["clip-9x9-k5"]
    keys = nb.neighbour_index(geom, device=DEV)[0]
    N = geom.N
    a, b, x, p = _inputs(geom, 8, torch.float32, B=1, h=1)
    m, i0 = N // 2, 1
    s0 = int((keys[i0] >= 0).nonzero()[-1])
    b[0, 0, m, 3] = float("nan")
    p[0, 0, i0, s0] = float("inf")
    p[0, 0][keys < 0] = float("nan")                 # empty slots are never read
    x[0, 0, 0, 2] = float("nan")
    qk, av, avt = (o[0, 0] for o in _run(geom, a, b, x, p))
    assert torch.equal(qk.isnan(), keys == m)
    rows = torch.arange(N, device=DEV)
    assert torch.equal(av.isfinite().all(-1), ~((keys == m).any(-1) | (rows == i0)))
    sees = torch.zeros(N, dtype=torch.bool, device=DEV)
    sees[keys[0][keys[0] >= 0]] = True
    sees[keys[i0, s0]] = True
    assert torch.equal(avt.isfinite().all(-1), ~sees)


@pytest.mark.parametrize("name", ["global-33x35", "nbhd-20x20-k7", "clip-17x19-k7"])
def test_transpose_is_deterministic(name):
    geom = GEOMS[name]
    a, b, x, p = _inputs(geom, 64, torch.float32)
    first = _run(geom, a, b, x, p)
    for _ in range(3):
        again = _run(geom, a, b, x, p)
        for o, r in zip(first, again):
            assert torch.equal(o, r)


def test_bad_input_is_named():
    geom = GEOMS["grid-8x8-w4"]
    a, b, x, p = _inputs(geom, 300, torch.float32, B=1, h=1)
    out = torch.empty(1, 1, geom.N, nb.num_slots(geom), device=DEV)
    with pytest.raises(ValueError, match="sparse_qk: head dim d=300"):
        _kernel("sparse_qk")(a, b, geom, out)
    a, b, x, p = _inputs(geom, 8, torch.float32, B=1, h=1)
    with pytest.raises(ValueError, match="sparse_av: second argument"):
        _kernel("sparse_av")(p, b.transpose(2, 3), geom, torch.empty(1, 1, 8, geom.N, device=DEV))
