"""Sparse-logit primitives (`ops/_sparse.py`): every backend's kernels against the float64
references of `ops/neighbours.py`, the C++ slot table against the Python one, NaN reach,
determinism, and the custom ops' registration (opcheck, gradcheck, gradgradcheck)."""
import pytest
import torch

from conftest import assert_close_f32, requires_cpu_ext
from transgan_fast import _ext
from transgan_fast.ops import _dispatch, _sparse
from transgan_fast.ops import geometry as G
from transgan_fast.ops import neighbours as nb

GEOMS = [
    G.grid_geometry((6, 6), 3), G.grid_geometry((7, 5), (4, 3), (1, 2)), G.grid_geometry((4, 4), 4),
    G.local_geometry((5, 7), "band1d", width=3), G.local_geometry((3, 3), "band1d", width=100),
    G.local_geometry((6, 7), kernel_size=3), G.local_geometry((4, 3), kernel_size=(9, 7)),
    G.local_geometry((8, 9), kernel_size=3, border="shift", dilation=(2, 3)),
    G.local_geometry((7, 6), kernel_size=(4, 3), border="shift"),
]
IDS = [f"{G.KIND_NAMES[g.kind]}{g.H}x{g.W}{g.p}" for g in GEOMS]


def _backends_with_sparse_kernels():
    out = []
    for b in ("ref", "cpu", "triton"):
        missing = [k for k in _dispatch.SPARSE_KERNELS if k not in _dispatch.KERNELS[b]]
        why = _dispatch.backend_unavailable_reason(b, torch.device("cpu"))
        marks = ()
        if why or missing:
            marks = pytest.mark.skip(reason=why or f"{b}: no sparse kernels ({', '.join(missing)})")
        out.append(pytest.param(b, marks=marks))
    return out


def _operands(geom, dtype, B=2, h=3, d=5, strided=False):
    keys, _ = nb.neighbour_index(geom)
    K = keys.shape[1]
    if strided:  # (B, N, h, d) storage viewed as (B, h, N, d): only stride(-1) == 1
        a, b = (torch.randn(B, geom.N, h, d, dtype=dtype).transpose(1, 2) for _ in range(2))
    else:
        a, b = (torch.randn(B, h, geom.N, d, dtype=dtype) for _ in range(2))
    return keys, a, b, torch.randn(B, h, geom.N, K, dtype=dtype)


@pytest.mark.parametrize("backend", _backends_with_sparse_kernels())
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_kernels_match_the_float64_references(geom, backend):
    dtype = torch.float64 if backend == "ref" else torch.float32
    keys, a, b, p = _operands(geom, dtype, strided=True)
    a64, b64, p64 = a.double(), b.double(), p.double()
    gl = geom.as_list()
    assert_close_f32(_sparse._qk(a, b, gl, backend), nb.sparse_qk_ref(a64, b64, keys), what="qk")
    assert_close_f32(_sparse._av(p, b, gl, backend), nb.sparse_av_ref(p64, b64, keys), what="av")
    assert_close_f32(_sparse._avt(p, a, gl, backend), nb.sparse_avt_ref(p64, a64, keys), what="avt")


@requires_cpu_ext
@pytest.mark.parametrize("geom", GEOMS, ids=IDS)
def test_cpp_slot_table_equals_neighbours_py(geom):
    keys, _ = nb.neighbour_index(geom)
    cpp = torch.tensor(_ext.cpu_module.neighbour_keys(geom.as_list())).reshape(keys.shape)
    assert torch.equal(cpp, keys)


@requires_cpu_ext
def test_cpu_nonfinite_inputs_reach_exactly_the_outputs_that_read_them():
    geom = G.local_geometry((5, 5), kernel_size=3)                  # border queries have empty slots
    keys, a, b, p = _operands(geom, torch.float32, B=1, h=1, d=4)
    gl, m = geom.as_list(), 0
    b[0, 0, m, 1] = float("nan")
    a[0, 0, m, 2] = float("inf")
    reads_m = (keys == m).any(1)                                     # queries with a slot on key m
    assert torch.equal(_sparse._av(p, b, gl, "cpu")[0, 0].isnan().any(-1), reads_m)
    s = _sparse._qk(a, b, gl, "cpu")[0, 0]
    want = (keys == m) | (torch.arange(geom.N) == m)[:, None] & (keys >= 0)
    assert torch.equal(~s.isfinite(), want)
    # avt: row j gets x_m exactly when query m has a slot on j.
    got = ~_sparse._avt(p, a, gl, "cpu")[0, 0].isfinite().all(-1)
    assert torch.equal(got, torch.zeros(geom.N, dtype=torch.bool).index_fill(0, keys[m][keys[m] >= 0], True))


@requires_cpu_ext
def test_cpu_avt_is_deterministic():
    geom = G.local_geometry((16, 16), kernel_size=5)
    _, a, _, p = _operands(geom, torch.float32, B=2, h=2, d=16)
    first = _sparse._avt(p, a, geom.as_list(), "cpu")
    for _ in range(3):
        assert torch.equal(_sparse._avt(p, a, geom.as_list(), "cpu"), first)


@pytest.mark.parametrize("geom", [GEOMS[1], GEOMS[3], GEOMS[5], GEOMS[8]], ids=lambda g: f"kind{g.kind}")
def test_opcheck_gradcheck_gradgradcheck_ref(geom):
    keys, a, b, p = _operands(geom, torch.float64, B=1, h=2, d=2)
    for t in (a, b, p):
        t.requires_grad_(True)
    gl = geom.as_list()
    for op, args in ((_sparse._qk, (a, b)), (_sparse._av, (p, b)), (_sparse._avt, (p, a))):
        torch.library.opcheck(op, (*args, gl, "ref"))
        f = lambda x, y, op=op: op(x, y, gl, "ref")  # noqa: E731
        assert torch.autograd.gradcheck(f, args, fast_mode=True)
        assert torch.autograd.gradgradcheck(f, args, fast_mode=True)


def test_public_ops_check_their_arguments():
    geom = G.local_geometry((4, 4), kernel_size=3)
    a = torch.randn(1, 2, 16, 4)
    with pytest.raises(ValueError, match=r"sparse_av: p must be \(1, 2, 16, 9\)"):
        _sparse.sparse_av(torch.randn(1, 2, 16, 8), a, geom, backend="ref")
    with pytest.raises(ValueError, match="sparse_qk: operand b must be"):
        _sparse.sparse_qk(a, torch.randn(1, 2, 15, 4), geom, backend="ref")
    keys, _ = nb.neighbour_index(geom)
    torch.testing.assert_close(_sparse.sparse_qk(a, a, geom, backend="ref"), nb.sparse_qk_ref(a, a, keys))
