"""The Triton sparse-logit primitives (`sparse_qk`, `sparse_av`, `sparse_avt`) against the
plain-PyTorch references of `ops/neighbours.py`, for every geometry kind.

Without a GPU this runs under the Triton interpreter (tiny shapes; float32 and float16). Outputs
start as NaN, so an unwritten element fails; non-finite inputs must reach exactly the outputs that
read them.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close_f32, assert_close_lowp, requires_triton_interpreter
from transgan_fast.ops import _dispatch
from transgan_fast.ops import geometry as G
from transgan_fast.ops import neighbours as nb

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = requires_triton_interpreter

DEV = "cuda" if torch.cuda.is_available() else "cpu"

GEOMS = {
    "grid-shift-partial": G.grid_geometry((7, 5), (4, 3), (1, 2)),
    "grid-global": G.grid_geometry((4, 5), (4, 5)),
    "band": G.local_geometry((3, 4), "band1d", width=3),
    "band-wider-than-map": G.local_geometry((3, 3), "band1d", width=100),
    "clip-border": G.local_geometry((5, 6), kernel_size=3),
    "clip-kernel-over-map": G.local_geometry((3, 4), kernel_size=(9, 7)),
    "nbhd-dilated": G.local_geometry((9, 10), kernel_size=3, border="shift", dilation=(2, 3)),
    "nbhd-even-kernel": G.local_geometry((7, 6), kernel_size=(4, 3), border="shift"),
}


def _kernel(name):
    _dispatch._load_backend_modules()
    return _dispatch.kernel("triton", name)


def _call(name, x, y, geom, shape):
    out = torch.full(shape, float("nan"), dtype=x.dtype, device=DEV)  # unwritten -> NaN
    _kernel(name)(x, y, geom, out)
    return out


def _inputs(geom, d, dtype, B=1, h=2):
    K = nb.num_slots(geom)
    N = geom.N
    a = torch.randn(B, N, h, d, dtype=torch.float64).to(DEV, dtype).transpose(1, 2)  # strided
    b = torch.randn(B, h, N, d, dtype=torch.float64).to(DEV, dtype)
    x = torch.randn(B, h, N, 2 * d, dtype=torch.float64).to(DEV, dtype)[..., d:]       # row stride 2d
    p = torch.randn(B, h, N, K, dtype=torch.float64).to(DEV, dtype)
    assert a.stride(-1) == 1 and x.stride(-1) == 1 and not x.is_contiguous()
    return a, b, x, p


def _all_three(geom, a, b, x, p):
    B, h, N, d = a.shape
    K = nb.num_slots(geom)
    return (_call("sparse_qk", a, b, geom, (B, h, N, K)),
            _call("sparse_av", p, b, geom, (B, h, N, d)),
            _call("sparse_avt", p, x, geom, (B, h, N, d)))


def _refs(geom, a, b, x, p, dtype):
    keys = nb.neighbour_index(geom, device=DEV)[0]
    c = [t.to(dtype) for t in (a, b, x, p)]
    return (nb.sparse_qk_ref(c[0], c[1], keys), nb.sparse_av_ref(c[3], c[1], keys),
            nb.sparse_avt_ref(c[3], c[2], keys))


@pytest.mark.parametrize("name", list(GEOMS))
def test_float32_matches_reference(name):
    geom = GEOMS[name]
    a, b, x, p = _inputs(geom, 5, torch.float32)
    outs = _all_three(geom, a, b, x, p)
    refs = _refs(geom, a, b, x, p, torch.float64)
    for what, out, ref in zip(("qk", "av", "avt"), outs, refs):
        assert_close_f32(out, ref, what=f"{name} sparse_{what}")
    keys = nb.neighbour_index(geom, device=DEV)[0]
    assert torch.equal(outs[0][:, :, keys < 0], torch.zeros_like(outs[0][:, :, keys < 0]))


@pytest.mark.parametrize("name", ["grid-shift-partial", "clip-border", "nbhd-dilated"])
def test_float16_matches_reference(name):
    geom = GEOMS[name]
    a, b, x, p = _inputs(geom, 4, torch.float16)
    outs = _all_three(geom, a, b, x, p)
    refs64 = _refs(geom, a, b, x, p, torch.float64)
    refs16 = _refs(geom, a, b, x, p, torch.float16)
    for what, out, r64, r16 in zip(("qk", "av", "avt"), outs, refs64, refs16):
        assert out.dtype == torch.float16
        assert_close_lowp(out, r64, r16, what=f"{name} sparse_{what}")


def test_head_dim_over_one_block_and_batch_strides():
    # d = 37 spans two column blocks in every kernel; B = 2 exercises the batch offsets.
    geom = GEOMS["nbhd-even-kernel"]
    a, b, x, p = _inputs(geom, 37, torch.float32, B=2, h=1)
    outs = _all_three(geom, a, b, x, p)
    for what, out, ref in zip(("qk", "av", "avt"), outs, _refs(geom, a, b, x, p, torch.float64)):
        assert_close_f32(out, ref, what=f"sparse_{what}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on purpose
@pytest.mark.parametrize("name", ["clip-border", "grid-shift-partial", "nbhd-dilated"])
def test_nonfinite_values_reach_exactly_their_readers(name):
    geom = GEOMS[name]
    keys = nb.neighbour_index(geom, device=DEV)[0]
    N, K = keys.shape
    a, b, x, p = _inputs(geom, 3, torch.float32, h=1)
    m = N // 2 + 1
    b[0, 0, m, 1] = float("nan")                            # one key row of b / v
    i0, s0 = 1, int((keys[1] >= 0).nonzero()[-1])           # one filled slot of query 1
    p[0, 0, i0, s0] = float("inf")
    p[0, 0][keys < 0] = float("nan")                        # empty slots are never read
    x[0, 0, 0, 2] = float("nan")                            # one query row of x
    qk, av, avt = (o[0, 0] for o in _all_three(geom, a, b, x, p))

    assert torch.equal(qk.isnan(), keys == m)
    # av row i reads v rows keys[i] and p[i]: NaN from v, inf * v from p[i0, s0].
    assert torch.equal(av.isfinite().all(-1), ~((keys == m).any(-1) | (torch.arange(N) == i0)))
    # avt row k reads x rows of the queries that see k, and p[i0, s0] lands in row keys[i0, s0].
    sees = torch.zeros(N, dtype=torch.bool)
    sees[keys[0][keys[0] >= 0]] = True
    sees[keys[i0, s0]] = True
    assert torch.equal(avt.isfinite().all(-1), ~sees)


def test_kernels_are_registered():
    _dispatch._load_backend_modules()
    for op in ("sparse_qk", "sparse_av", "sparse_avt"):
        assert op in _dispatch.KERNELS["triton"]
