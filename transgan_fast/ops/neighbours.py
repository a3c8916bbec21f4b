"""Neighbour lists: the keys each query sees, as K slots per query, and the sparse-logit references.

The second-order path of attention works on logits over each query's reachable keys only, a
`(B, h, N, K)` tensor instead of `(B, h, N, N)`. This module fixes the slot layout every backend
shares, and holds the plain-PyTorch references of the three linear primitives built on it:

- ``sparse_qk(a, b, geom)[.., i, s]  = a_i . b_key(i,s)``                    (logits; 0 at empty slots)
- ``sparse_av(p, v, geom)[.., i, :]  = sum_s p[i, s] v_key(i,s)``             (weights x values)
- ``sparse_avt(p, x, geom)[.., m, :] = sum_{(i,s): key(i,s)=m} p[i, s] x_i``  (transpose: to keys)

Each is linear in each argument and their derivatives close over the set:
``d qk/da = av(g, b)``, ``d qk/db = avt(g, a)``; ``d av/dp = qk(g, v)``, ``d av/dv = avt(p, g)``;
``d avt/dp = qk(x, g)``, ``d avt/dx = av(p, g)``.

Slot layout per kind (``K`` slots per query; a slot whose key is outside the neighbourhood is empty,
index -1; no key appears twice in one row):

- ``GRID``: ``K = M1*M2``; slot ``s = a*M2 + b`` is the token at rolled position
  ``(wy*M1 + a, wx*M2 + b)`` of the query's window ``(wy, wx)``; empty when that position is off the
  map (partial last window) or in another wrap region (Swin's shift mask).
- ``BAND``: ``K = 2w' + 1`` with ``w' = min(width, N - 1)``; slot ``s`` is key ``i - w' + s``; empty
  when off the sequence.
- ``CLIP``: ``K = (2r1' + 1)(2r2' + 1)`` with ``r' = min(r, L - 1)`` per axis; slot ``s = a*(2r2'+1) + b``
  is key ``(y - r1' + a, x - r2' + b)``; empty when off the map.
- ``NBHD``: ``K = k1*k2``; slot ``s = a*k2 + b`` is key ``((sy + a) d1 + y % d1, (sx + b) d2 + x % d2)``
  with ``sy, sx`` NATTEN's window starts; never empty.
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch
from torch import Tensor

from .geometry import BAND, CLIP, GRID, NBHD, AttnGeometry, _nbhd_start


def slot_grid(geom: AttnGeometry) -> Tuple[int, int]:
    """(rows, cols) of the slot layout: slot ``s`` is row ``s // cols``, column ``s % cols`` of the
    neighbourhood (``slot_grid`` in csrc/common/neighbours.h)."""
    H, W = geom.H, geom.W
    if geom.kind == GRID:
        return geom.grid_window
    if geom.kind == BAND:
        return 1, 2 * min(geom.band_width, geom.N - 1) + 1
    if geom.kind == CLIP:
        r1, r2 = geom.clip_radius
        return 2 * min(r1, H - 1) + 1, 2 * min(r2, W - 1) + 1
    return geom.nbhd_kernel


def num_slots(geom: AttnGeometry) -> int:
    """K, the number of neighbour slots per query (see the module docstring)."""
    rows, cols = slot_grid(geom)
    return rows * cols


def neighbour_index(geom: AttnGeometry, device=None) -> Tuple[Tensor, Tensor]:
    """(keys, bias_rows), both long `(N, K)`: the key token of every slot (-1 where the slot is
    empty) and the relative-bias table row of that (query, key) pair (0 where empty)."""
    H, W = geom.H, geom.W
    t = torch.arange(geom.N, device=device)
    y, x = (t // W)[:, None, None], (t % W)[:, None, None]                # (N, 1, 1)
    if geom.kind == GRID:
        (M1, M2), (s1, s2) = geom.grid_window, geom.grid_shift
        a = torch.arange(M1, device=device)[None, :, None]                # (1, M1, 1)
        b = torch.arange(M2, device=device)[None, None, :]                # (1, 1, M2)
        ry, rx = (y - s1) % H, (x - s2) % W                               # rolled query position
        ky, kx = (ry // M1) * M1 + a, (rx // M2) * M2 + b                 # rolled key position
        ok = (ky < H) & (kx < W) & ((ky >= H - s1) == (ry >= H - s1)) & ((kx >= W - s2) == (rx >= W - s2))
        by, bx = ry % M1 - a, rx % M2 - b                                  # bias offsets (rolled)
        ky, kx = (ky + s1) % H, (kx + s2) % W                              # back to map positions
    elif geom.kind == BAND:
        w = min(geom.band_width, geom.N - 1)
        s = torch.arange(2 * w + 1, device=device)
        key = t[:, None] - w + s[None, :]                                  # (N, K) flat keys
        ok = (key >= 0) & (key < geom.N)
        ky, kx = key // W, key % W
        by, bx = y[:, :, 0] - ky, x[:, :, 0] - kx
        return _finish(geom, ok, ky, kx, by, bx)
    elif geom.kind == CLIP:
        r1, r2 = (min(r, L - 1) for r, L in zip(geom.clip_radius, (H, W)))
        a = torch.arange(2 * r1 + 1, device=device)[None, :, None]
        b = torch.arange(2 * r2 + 1, device=device)[None, None, :]
        ky, kx = y - r1 + a, x - r2 + b
        ok = (ky >= 0) & (ky < H) & (kx >= 0) & (kx < W)
        by, bx = y - ky, x - kx
    else:
        (k1, k2), (d1, d2) = geom.nbhd_kernel, geom.nbhd_dilation
        a = torch.arange(k1, device=device)[None, :, None]
        b = torch.arange(k2, device=device)[None, None, :]
        ky = (_nbhd_start(y, H, k1, d1) + a) * d1 + y % d1
        kx = (_nbhd_start(x, W, k2, d2) + b) * d2 + x % d2
        ok = torch.ones_like(ky + kx, dtype=torch.bool)
        by, bx = y // d1 - ky // d1, x // d2 - kx // d2                   # offsets in group units
    N = geom.N
    return _finish(geom, ok.reshape(N, -1), ky.expand_as(ok).reshape(N, -1),
                   kx.expand_as(ok).reshape(N, -1), by.expand_as(ok).reshape(N, -1),
                   bx.expand_as(ok).reshape(N, -1))


@functools.lru_cache(maxsize=64)
def cached_neighbour_index(geom: AttnGeometry, device: torch.device) -> Tuple[Tensor, Tensor]:
    """`neighbour_index(geom, device)`, built once per (geometry, device): every kernel call of a
    layer reuses it (callers must not modify the returned tensors)."""
    return neighbour_index(geom, device)


def _finish(geom: AttnGeometry, ok, ky, kx, by, bx) -> Tuple[Tensor, Tensor]:
    B1, B2 = geom.bias_hw
    keys = torch.where(ok, ky * geom.W + kx, -1)
    rows = (by.clamp(-(B1 - 1), B1 - 1) + B1 - 1) * (2 * B2 - 1) + (bx.clamp(-(B2 - 1), B2 - 1) + B2 - 1)
    return keys, torch.where(ok, rows, 0)


# ----------------------------------------------------------------------------------------------
# Plain-PyTorch references of the primitives (ground truth for every backend's kernels). They
# gather `(B, h, N, K, d)` intermediates: simple and exact, not fast.

def _gather_keys(b: Tensor, keys: Tensor) -> Tensor:
    return b[:, :, keys.clamp(min=0)]                                     # (B, h, N, K, d)


def sparse_qk_ref(a: Tensor, b: Tensor, keys: Tensor) -> Tensor:
    """`(B, h, N, K)`: a_i . b_key(i,s), 0 at empty slots."""
    s = (a.unsqueeze(-2) * _gather_keys(b, keys)).sum(-1)
    return s.masked_fill(keys < 0, 0.0)


def sparse_av_ref(p: Tensor, v: Tensor, keys: Tensor) -> Tensor:
    """`(B, h, N, d)`: sum over slots of p[i, s] v_key(i,s); empty slots contribute nothing."""
    g = _gather_keys(v, keys).masked_fill((keys < 0)[..., None], 0.0)
    return (p.masked_fill(keys < 0, 0.0).unsqueeze(-1) * g).sum(-2)


def sparse_avt_ref(p: Tensor, x: Tensor, keys: Tensor) -> Tensor:
    """`(B, h, N, d)`: row m is the sum of p[i, s] x_i over every (i, s) whose key is m."""
    B, h, N, d = x.shape
    valid = keys >= 0
    contrib = p.masked_fill(~valid, 0.0).unsqueeze(-1) * x.unsqueeze(-2)  # (B, h, N, K, d)
    out = x.new_zeros(B, h, N, d)
    return out.index_add(2, keys[valid], contrib[:, :, valid])
