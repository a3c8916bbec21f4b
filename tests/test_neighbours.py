"""Neighbour slots (`ops/neighbours.py`) against the dense geometry, and the primitive references
against dense attention algebra: the layout every backend's second-order kernels share."""
import pytest
import torch

from transgan_fast.ops import geometry as G
from transgan_fast.ops import neighbours as nb

GEOMS = [
    G.grid_geometry((8, 8), 4), G.grid_geometry((8, 8), 4, 2), G.grid_geometry((7, 5), (4, 3), (1, 2)),
    G.grid_geometry((6, 6), 6),
    G.local_geometry((5, 7), "band1d", width=3), G.local_geometry((3, 3), "band1d", width=100),
    G.local_geometry((6, 7), kernel_size=3), G.local_geometry((4, 3), kernel_size=(9, 7)),
    G.local_geometry((8, 9), kernel_size=3, border="shift", dilation=(2, 3)),
    G.local_geometry((7, 6), kernel_size=(4, 3), border="shift"),
]


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"{G.KIND_NAMES[g.kind]}{g.H}x{g.W}{g.p}")
def test_slots_cover_exactly_the_visible_keys(geom):
    keys, rows = nb.neighbour_index(geom)
    assert keys.shape == (geom.N, nb.num_slots(geom))
    dense = torch.zeros(geom.N, geom.N, dtype=torch.long)
    qi = torch.arange(geom.N)[:, None].expand_as(keys)
    dense.index_put_((qi[keys >= 0], keys[keys >= 0]), torch.ones(()).long(), accumulate=True)
    assert torch.equal(dense, G.visibility(geom).long())          # every visible key exactly once
    full_rows = G.bias_index(geom)
    assert torch.equal(rows[keys >= 0], full_rows[qi[keys >= 0], keys[keys >= 0]])


@pytest.mark.parametrize("geom", GEOMS[:3] + GEOMS[5:9:3], ids=lambda g: G.KIND_NAMES[g.kind])
def test_primitive_references_match_dense_algebra(geom):
    keys, _ = nb.neighbour_index(geom)
    B, h, N, K, d = 2, 3, geom.N, keys.shape[1], 4
    a, b, x = (torch.randn(B, h, N, d, dtype=torch.float64) for _ in range(3))
    p = torch.randn(B, h, N, K, dtype=torch.float64)
    # Dense (N, N) equivalent of p: scatter each slot onto its key column.
    P = torch.zeros(B, h, N, N, dtype=torch.float64)
    qi = torch.arange(N)[:, None].expand_as(keys)
    P[:, :, qi[keys >= 0], keys[keys >= 0]] = p[:, :, keys >= 0]
    S = a @ b.transpose(-1, -2)
    s = nb.sparse_qk_ref(a, b, keys)
    assert torch.equal(s[:, :, keys < 0], torch.zeros_like(s[:, :, keys < 0]))
    torch.testing.assert_close(s[:, :, keys >= 0], S[:, :, qi[keys >= 0], keys[keys >= 0]])
    torch.testing.assert_close(nb.sparse_av_ref(p, b, keys), P @ b)
    torch.testing.assert_close(nb.sparse_avt_ref(p, x, keys), P.transpose(-1, -2) @ x)


def test_empty_slots_never_read_nonfinite_values():
    geom = G.local_geometry((4, 4), kernel_size=3)                 # corner queries have empty slots
    keys, _ = nb.neighbour_index(geom)
    B, h, N, d = 1, 1, geom.N, 2
    v = torch.randn(B, h, N, d)
    v[0, 0, 0] = float("nan")                                       # key 0 is what empty slots clamp to
    p = torch.rand(B, h, N, keys.shape[1])
    sees0 = (keys == 0).any(1)
    o = nb.sparse_av_ref(p, v, keys)
    assert torch.equal(o[0, 0].isnan().any(-1), sees0)
    s = nb.sparse_qk_ref(v, v, keys)
    assert not s[0, 0, ~sees0 & (torch.arange(N) != 0)].isnan().any()


def test_geometry_accessors_name_each_parameter_of_its_kind_only():
    """AttnGeometry's named parameters read the packed `p` by kind (the same names as geometry.h
    and the Triton kernels); asking a geometry for another kind's parameter is an error."""
    g = G.grid_geometry((8, 9), (4, 3), (1, 2))
    assert (g.grid_window, g.grid_shift) == ((4, 3), (1, 2))
    assert G.local_geometry((5, 7), "band1d", width=3).band_width == 3
    assert G.local_geometry((6, 7), kernel_size=(3, 5)).clip_radius == (1, 2)
    n = G.local_geometry((8, 9), kernel_size=(3, 2), border="shift", dilation=(2, 3))
    assert (n.nbhd_kernel, n.nbhd_dilation) == ((3, 2), (2, 3))
    assert nb.slot_grid(n) == (3, 2) and nb.slot_grid(g) == (4, 3)
    with pytest.raises(ValueError, match="grid_window is a grid parameter; this geometry is window2d-shift"):
        n.grid_window
    with pytest.raises(ValueError, match="nbhd_dilation is a window2d-shift parameter"):
        g.nbhd_dilation
