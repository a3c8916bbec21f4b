"""The C++ index math (csrc/common/geometry.h, csrc/common/tiles.h) against the Python definition
of every geometry. The CPU and CUDA kernels compile the same headers, so these CPU tests cover the
arithmetic both run: visibility, relative-bias rows, the rect tiling of the plane and its candidate
rectangles (CUDA), and the list tiling with its candidates and per-pair table (CPU)."""
from __future__ import annotations

import random

import pytest
import torch

from transgan_fast import _ext
from transgan_fast.ops.geometry import (BAND, CLIP, GRID, NBHD, bias_index, grid_geometry,
                                        local_geometry, visibility)

from conftest import requires_cpu_ext

pytestmark = requires_cpu_ext


def _random_geometries(rng: random.Random, count: int):
    """Random geometries of every kind: shifts, partial windows, dilation, both clip tables."""
    geoms = []
    for _ in range(count):
        H, W = rng.randint(1, 11), rng.randint(1, 11)
        M1, M2 = rng.randint(1, H), rng.randint(1, W)
        geoms.append(grid_geometry((H, W), (M1, M2), (rng.randrange(M1), rng.randrange(M2))))
        geoms.append(local_geometry((H, W), mode="band1d", width=rng.randint(0, H * W)))
        k1, k2 = rng.choice([1, 3, 5, 7]), rng.choice([1, 3, 5, 7])
        full = (2 * H - 1) * (2 * W - 1)
        rows = rng.choice([None, full])
        geoms.append(local_geometry((H, W), kernel_size=(k1, k2), border="clip", bias_rows=rows))
        d1, d2 = rng.randint(1, 3), rng.randint(1, 3)
        if H // d1 >= 1 and W // d2 >= 1:
            k1, k2 = rng.randint(1, H // d1), rng.randint(1, W // d2)
            geoms.append(local_geometry((H, W), kernel_size=(k1, k2), border="shift",
                                        dilation=(d1, d2)))
    return geoms


def _table(geom):
    """(N, N) bias row where visible else -1, from the Python definition."""
    vis = visibility(geom)
    return torch.where(vis, bias_index(geom), torch.full_like(bias_index(geom), -1))


def test_geom_table_matches_python_every_kind():
    rng = random.Random(1234)
    kinds = set()
    for geom in _random_geometries(rng, 40):
        kinds.add(geom.kind)
        got = torch.tensor(_ext.cpu_module.geom_table(geom.as_list())).view(geom.N, geom.N)
        want = _table(geom)
        bad = (got != want).nonzero()
        assert bad.numel() == 0, f"{geom}: C++ and Python disagree at (query, key) {bad[0].tolist()}"
        if geom.kind == CLIP and geom.bias_hw == (geom.H, geom.W):
            assert int(got.max()) < geom.bias_rows
    assert kinds == {GRID, BAND, CLIP, NBHD}


def test_geom_table_swin_shift_and_clip_tables():
    # Fixed cases that must be hit: a shifted grid with partial windows, both CLIP tables,
    # a dilated neighbourhood.
    cases = [grid_geometry((7, 10), (4, 4), (2, 3)),
             local_geometry((6, 5), kernel_size=(3, 5), border="clip"),
             local_geometry((6, 5), kernel_size=(3, 5), border="clip", bias_rows=11 * 9),
             local_geometry((9, 8), kernel_size=(3, 2), border="shift", dilation=(3, 2))]
    for geom in cases:
        got = torch.tensor(_ext.cpu_module.geom_table(geom.as_list())).view(geom.N, geom.N)
        assert torch.equal(got, _table(geom)), geom


def _plane_shape(geom):
    return (1, geom.N) if geom.kind == BAND else (geom.H, geom.W)


def _rect_tokens(rect, Wq):
    y0, x0, nr, nc = rect
    return {(y0 + i) * Wq + x0 + j for i in range(nr) for j in range(nc)}


def _bbox(tokens, Wq):
    ys = [t // Wq for t in tokens]
    xs = [t % Wq for t in tokens]
    return (min(ys), min(xs), max(ys) - min(ys) + 1, max(xs) - min(xs) + 1)


@pytest.mark.parametrize("t", [64, 32, 16])
def test_rect_tiles_partition_the_plane(t):
    rng = random.Random(t)
    for geom in _random_geometries(rng, 15):
        Hq, Wq = _plane_shape(geom)
        seen = []
        for rect in _ext.cpu_module.rect_tiles(geom.as_list(), t):
            y0, x0, nr, nc = rect
            assert 1 <= nr * nc <= t and y0 + nr <= Hq and x0 + nc <= Wq, (geom, rect)
            seen.extend(_rect_tokens(rect, Wq))
        assert sorted(seen) == list(range(geom.N)), f"{geom}: tiles do not cover each token once"


def test_candidate_rects_bound_visibility_tightly():
    """candidate_keys(tile) contains every key some query of the tile sees, and for a single query
    it is exactly the bounding box of its visible keys; candidate_queries is the same for the
    transpose."""
    rng = random.Random(99)
    for geom in _random_geometries(rng, 25):
        Hq, Wq = _plane_shape(geom)
        vis = visibility(geom)
        g = geom.as_list()
        for _ in range(6):
            y0, x0 = rng.randrange(Hq), rng.randrange(Wq)
            nr, nc = rng.randint(1, Hq - y0), rng.randint(1, Wq - x0)
            tile = _rect_tokens((y0, x0, nr, nc), Wq)
            keys = set(vis[sorted(tile)].any(0).nonzero().flatten().tolist())
            kr = _ext.cpu_module.candidate_keys(g, y0, x0, nr, nc)
            assert keys <= _rect_tokens(kr, Wq), f"{geom}: candidate_keys {kr} misses keys of {(y0, x0, nr, nc)}"
            queries = set(vis[:, sorted(tile)].any(1).nonzero().flatten().tolist())
            qr = _ext.cpu_module.candidate_queries(g, y0, x0, nr, nc)
            assert queries <= _rect_tokens(qr, Wq), f"{geom}: candidate_queries {qr} misses queries"
        for i in rng.sample(range(geom.N), min(8, geom.N)):
            y, x = divmod(i, Wq)
            keys = vis[i].nonzero().flatten().tolist()
            assert tuple(_ext.cpu_module.candidate_keys(g, y, x, 1, 1)) == _bbox(keys, Wq), (geom, i)
            queries = vis[:, i].nonzero().flatten().tolist()
            assert tuple(_ext.cpu_module.candidate_queries(g, y, x, 1, 1)) == _bbox(queries, Wq), (geom, i)


@pytest.mark.parametrize("TQ", [1, 4, 8, 16, 49])
def test_list_tiles_partition_queries_and_hold_every_visible_key(TQ):
    """The CPU kernels' list tiling: the tiles partition the queries, each tile's candidates are
    distinct and hold every key its queries see, and the per-pair table built from QueryMeta /
    KeyMeta is exactly the dense visibility and bias row on the candidates (masked elsewhere)."""
    rng = random.Random(TQ)
    kinds = set()
    for geom in _random_geometries(rng, 12):
        kinds.add(geom.kind)
        want = _table(geom)
        seen = []
        for queries, cands, pairs in _ext.cpu_module.list_tiles(geom.as_list(), TQ):
            assert len(queries) <= TQ, geom
            seen.extend(queries)
            if not queries:
                continue
            assert len(set(cands)) == len(cands), f"{geom}: repeated candidates {cands}"
            q, k = torch.tensor(queries), torch.tensor(cands)
            got = torch.tensor(pairs).view(len(queries), len(cands))
            assert torch.equal(got, want[q][:, k]), f"{geom}: pair table of tile {queries}"
            outside = torch.ones(geom.N, dtype=torch.bool)
            outside[k] = False
            assert not (want[q][:, outside] >= 0).any(), f"{geom}: tile {queries} misses keys"
        assert sorted(seen) == list(range(geom.N)), f"{geom}: tiles do not partition the queries"
    assert kinds == {GRID, BAND, CLIP, NBHD}
