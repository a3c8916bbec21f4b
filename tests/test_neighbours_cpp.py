"""csrc/common/neighbours.h (the slot math of the CUDA sparse kernels and of the CUDA rel-bias
gradient reduction) against ops/neighbours.py and the dense geometry.

No GPU is needed: the header is host+device, so a small C++ driver compiled here runs the exact
functions the CUDA kernels call - key of every slot, the enumeration of the queries that see each
key (the transpose's gather order), the key at every bias-table row - and all must match Python.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from transgan_fast.ops import geometry as G
from transgan_fast.ops import neighbours as nb

CXX = shutil.which("c++") or shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
CSRC = Path(__file__).resolve().parents[1] / "csrc"

DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include "common/neighbours.h"
int main(int argc, char** argv) {
  int v[9];
  for (int i = 0; i < 9; ++i) v[i] = std::atoi(argv[i + 1]);
  const tgf::Geom g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
  const tgf::SlotGrid sg = tgf::slot_grid(g);
  const int N = g.H * g.W, K = sg.rows * sg.cols;
  std::printf("%d\n", K);
  for (int i = 0; i < N; ++i)
    for (int s = 0; s < K; ++s) std::printf("%d%c", tgf::slot_key(g, sg, i, s), s + 1 < K ? ' ' : '\n');
  for (int m = 0; m < N; ++m) {            // "m: q slot q slot ..." (queries that see m)
    const tgf::Seers r = tgf::seers(g, sg, m);
    std::printf("%d", r.count);
    for (int t = 0; t < r.count; ++t) {
      int slot = 0;
      const int q = tgf::seer(g, sg, r, t, slot);
      std::printf(" %d %d", q, slot);
    }
    std::printf("\n");
  }
  const int rows = (2 * g.B1 - 1) * (2 * g.B2 - 1);
  for (int i = 0; i < N; ++i)             // key at every bias-table row, per query
    for (int r = 0; r < rows; ++r) std::printf("%d%c", tgf::offset_key(g, i, r), r + 1 < rows ? ' ' : '\n');
  return 0;
}
"""

GEOMS = [
    G.grid_geometry((8, 8), 4, 2), G.grid_geometry((7, 5), (4, 3), (1, 2)), G.grid_geometry((6, 6), 6),
    G.grid_geometry((9, 7), (4, 5), (3, 4)),
    G.local_geometry((5, 7), "band1d", width=3), G.local_geometry((3, 3), "band1d", width=100),
    G.local_geometry((6, 7), kernel_size=3), G.local_geometry((4, 3), kernel_size=(9, 7)),
    G.local_geometry((9, 10), kernel_size=3, border="shift", dilation=(2, 3)),
    G.local_geometry((7, 6), kernel_size=(4, 3), border="shift"),
    G.local_geometry((13, 11), kernel_size=(5, 2), border="shift", dilation=(2, 1)),
    G.local_geometry((5, 5), kernel_size=5, border="shift"),
    G.local_geometry((5, 4), kernel_size=3, bias_rows=9 * 7),
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = tmp_path_factory.mktemp("neighbours_cpp")
    (d / "driver.cpp").write_text(DRIVER)
    exe = d / "driver"
    subprocess.run([CXX, "-std=c++17", "-O1", "-I", str(CSRC), str(d / "driver.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    return exe


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"{G.KIND_NAMES[g.kind]}{g.H}x{g.W}{g.p}")
def test_header_matches_python_layout(driver, geom):
    lines = subprocess.run([str(driver), *map(str, geom.as_list())], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    N = geom.N
    K = int(lines[0])
    keys, _ = nb.neighbour_index(geom)
    assert K == nb.num_slots(geom)
    got = torch.tensor([[int(t) for t in ln.split()] for ln in lines[1:1 + N]])
    assert torch.equal(got, keys)
    for m, ln in enumerate(lines[1 + N:1 + 2 * N]):
        vals = [int(t) for t in ln.split()]
        assert vals[0] == (len(vals) - 1) // 2
        pairs = [(q, s) for q, s in zip(vals[1::2], vals[2::2]) if q >= 0]
        expect = sorted((int(q), int(s)) for q, s in (keys == m).nonzero().tolist())
        assert sorted(pairs) == expect, f"key {m}"                  # every seer exactly once
        if geom.kind == G.NBHD:                                     # exact range: no dead candidates
            assert vals[0] == len(expect)
    # offset_key: the key each query sees at each table row (-1: none) inverts bias_index.
    at_row = torch.tensor([[int(t) for t in ln.split()] for ln in lines[1 + 2 * N:1 + 3 * N]])
    expect = torch.full((N, geom.bias_rows), -1, dtype=torch.long)
    qi, kj = G.visibility(geom).nonzero(as_tuple=True)
    rows = G.bias_index(geom)[qi, kj]
    assert len(set(zip(qi.tolist(), rows.tolist()))) == len(qi)   # one key per (query, row)
    expect[qi, rows] = kj
    assert torch.equal(at_row, expect)
