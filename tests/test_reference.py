"""The references are the ground truth: check them against independent definitions.

Masks here are built with plain Python loops straight from the words of docs/ops.md §2 (Swin's
region slices, NATTEN's neighbourhood lists), then attention runs through torch SDPA with a dense
float mask. Resampling refs are checked against nn.PixelShuffle and a hand-written bicubic.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import transgan_fast as tf
from transgan_fast.ops import geometry as G
from conftest import assert_close_f32


def _rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


def _sdpa_dense(q, k, v, allowed, bias_rows, table, scale):
    """SDPA with a float mask: bias where allowed, -inf elsewhere."""
    N = q.shape[2]
    h = q.shape[1]
    m = torch.full((h, N, N), float("-inf"), dtype=q.dtype)
    for i in range(N):
        for j in range(N):
            if allowed[i][j]:
                m[:, i, j] = table[bias_rows[i][j]] if table is not None else 0.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)


def _swin_loops(H, W, M1, M2, s1, s2):
    """Loop-built (allowed, bias_rows) for (shifted) windows: roll, window ids, Swin region slices."""
    N = H * W
    # Rolled map position of each token: roll(x, -s) puts original (y, x) at ((y-s1)%H, (x-s2)%W).
    pos = {}
    for y in range(H):
        for x in range(W):
            pos[y * W + x] = ((y - s1) % H, (x - s2) % W)
    # Swin's img_mask regions: slices (0, -M), (-M, -s), (-s, None) per axis (for divisible maps:
    # region changes only matter at the wrap boundary H - s).
    def region(c, L, s):
        return 0 if c < L - s else 1
    allowed = [[False] * N for _ in range(N)]
    rows = [[0] * N for _ in range(N)]
    for i in range(N):
        yi, xi = pos[i]
        for j in range(N):
            yj, xj = pos[j]
            same_win = yi // M1 == yj // M1 and xi // M2 == xj // M2
            same_reg = region(yi, H, s1) == region(yj, H, s1) and region(xi, W, s2) == region(xj, W, s2)
            allowed[i][j] = same_win and same_reg
            dy, dx = yi % M1 - yj % M1, xi % M2 - xj % M2
            rows[i][j] = (dy + M1 - 1) * (2 * M2 - 1) + (dx + M2 - 1)
    return allowed, rows


@pytest.mark.parametrize("H,W,M,s", [(8, 8, (4, 4), (0, 0)), (8, 8, (4, 4), (2, 2)),
                                     (6, 9, (3, 3), (1, 2)), (5, 7, (2, 3), (0, 0)),
                                     (5, 7, (2, 3), (1, 1)), (4, 6, (4, 6), (0, 0))])
@pytest.mark.parametrize("with_bias", [False, True])
def test_grid_ref_matches_loop_definition(H, W, M, s, with_bias):
    B, h, d = 2, 3, 5
    q, k, v = (_rand(B, h, H * W, d) for _ in range(3))
    table = _rand((2 * M[0] - 1) * (2 * M[1] - 1), h) if with_bias else None
    allowed, rows = _swin_loops(H, W, *M, *s)
    want = _sdpa_dense(q, k, v, allowed, rows, table, d ** -0.5)
    got = tf.grid_attention(q, k, v, (H, W), M, s, rel_bias=table, backend="ref")
    assert_close_f32(got, want)
    # geometry.py's dense mask and bias index (what the kernels mirror) give the same answer.
    geom = G.grid_geometry((H, W), M, s)
    vis, idx = G.visibility(geom), G.bias_index(geom)
    assert vis.tolist() == allowed
    assert (idx[vis] == torch.tensor(rows)[vis]).all()


def test_grid_ref_matches_swin_partition_on_divisible_map():
    """Classic Swin pipeline written out: roll, partition, region mask via img_mask, reverse."""
    B, h, d, H, W, M, s = 1, 2, 4, 8, 8, 4, 2
    x = [_rand(B, h, H * W, d) for _ in range(3)]
    table = _rand((2 * M - 1) ** 2, h)
    img_mask = torch.zeros(H, W)
    cnt = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            img_mask[hs, ws] = cnt
            cnt += 1

    def part(t):
        t = torch.roll(t.reshape(B, h, H, W, d), (-s, -s), (2, 3))
        return t.reshape(B, h, H // M, M, W // M, M, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, h, -1, M * M, d)

    mw = img_mask.reshape(H // M, M, W // M, M).permute(0, 2, 1, 3).reshape(-1, M * M)
    attn_mask = (mw[:, :, None] != mw[:, None, :])
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    idx = (rel[0] + M - 1) * (2 * M - 1) + (rel[1] + M - 1)
    q, k, v = (part(t) for t in x)
    logits = (q * d ** -0.5) @ k.transpose(-2, -1) + table[idx].permute(2, 0, 1)[:, None]
    logits = logits.masked_fill(attn_mask, float("-inf"))
    o = torch.softmax(logits, -1) @ v
    o = o.reshape(B, h, H // M, W // M, M, M, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, h, H, W, d)
    want = torch.roll(o, (s, s), (2, 3)).reshape(B, h, H * W, d)
    got = tf.grid_attention(*x, (H, W), (M, M), (s, s), rel_bias=table, backend="ref")
    assert_close_f32(got, want)


def _natten_axis(i, L, k, d):
    """NATTEN's neighbourhood on one axis, from its definition: the k nearest positions of the
    same dilation group, window shifted inward at the borders."""
    group = list(range(i % d, L, d))
    at = group.index(i)
    start = min(max(at - k // 2, 0), len(group) - k)
    return group[start:start + k], start, at


def _local_loops(H, W, mode, ks, border, dil, width):
    N = H * W
    allowed = [[False] * N for _ in range(N)]
    rows = [[0] * N for _ in range(N)]
    for i in range(N):
        yi, xi = divmod(i, W)
        if mode == "window2d" and border == "shift":
            ny, _, ay = _natten_axis(yi, H, ks[0], dil[0])
            nx, _, ax = _natten_axis(xi, W, ks[1], dil[1])
        for j in range(N):
            yj, xj = divmod(j, W)
            if mode == "band1d":
                ok = abs(i - j) <= width
                rows[i][j] = (yi - yj + H - 1) * (2 * W - 1) + (xi - xj + W - 1)
            elif border == "clip":
                r1, r2 = ks[0] // 2, ks[1] // 2
                ok = abs(yi - yj) <= r1 and abs(xi - xj) <= r2
                rows[i][j] = (yi - yj + r1) * (2 * r2 + 1) + (xi - xj + r2) if ok else 0
            else:
                ok = yj in ny and xj in nx
                dy, dx = yi // dil[0] - yj // dil[0], xi // dil[1] - xj // dil[1]
                rows[i][j] = (dy + ks[0] - 1) * (2 * ks[1] - 1) + (dx + ks[1] - 1) if ok else 0
            allowed[i][j] = ok
    return allowed, rows


LOCAL_CASES = [
    dict(mode="band1d", width=3, hw=(5, 6)),
    dict(mode="band1d", width=0, hw=(3, 4)),
    dict(mode="window2d", kernel_size=(3, 3), border="clip", hw=(6, 5)),
    dict(mode="window2d", kernel_size=(5, 3), border="clip", hw=(7, 4)),
    dict(mode="window2d", kernel_size=(3, 3), border="shift", hw=(6, 5)),
    dict(mode="window2d", kernel_size=(4, 3), border="shift", hw=(6, 7)),
    dict(mode="window2d", kernel_size=(3, 2), border="shift", dilation=(2, 3), hw=(7, 8)),
]


@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("with_bias", [False, True])
def test_local_ref_matches_loop_definition(case, with_bias):
    case = dict(case)
    H, W = case.pop("hw")
    B, h, d = 2, 2, 3
    q, k, v = (_rand(B, h, H * W, d) for _ in range(3))
    geom = G.local_geometry((H, W), **case)
    table = _rand(geom.bias_rows, h) if with_bias else None
    allowed, rows = _local_loops(H, W, case["mode"], case.get("kernel_size"), case.get("border"),
                                 case.get("dilation", (1, 1)), case.get("width"))
    want = _sdpa_dense(q, k, v, allowed, rows, table, 0.7)
    got = tf.local_attention(q, k, v, (H, W), rel_bias=table, scale=0.7, backend="ref", **case)
    assert_close_f32(got, want)
    # geometry.py's dense mask and bias index agree with the loops; every query sees itself;
    # NATTEN sees exactly k1*k2 keys.
    vis = G.visibility(geom)
    assert vis.tolist() == allowed
    assert (G.bias_index(geom)[vis] == torch.tensor(rows)[vis]).all()
    assert bool(vis.diagonal().all())
    if case.get("border") == "shift":
        assert (vis.sum(1) == case["kernel_size"][0] * case["kernel_size"][1]).all()


def test_clip_accepts_full_map_bias_table():
    H, W, h = 5, 6, 2
    q, k, v = (_rand(1, h, H * W, 4) for _ in range(3))
    full = _rand((2 * H - 1) * (2 * W - 1), h)
    allowed, _ = _local_loops(H, W, "window2d", (3, 3), "clip", (1, 1), None)
    rows = [[(i // W - j // W + H - 1) * (2 * W - 1) + (i % W - j % W + W - 1) for j in range(H * W)]
            for i in range(H * W)]
    want = _sdpa_dense(q, k, v, allowed, rows, full, 0.5)
    got = tf.local_attention(q, k, v, (H, W), kernel_size=3, rel_bias=full, scale=0.5, backend="ref")
    assert_close_f32(got, want)


def test_shift_mode_matches_natten_when_installed():
    natten = pytest.importorskip("natten", reason="natten is not installed (optional test dependency)")
    B, H, W, h, d, ks, dil = 1, 9, 10, 2, 8, 3, 2
    q, k, v = (torch.randn(B, H, W, h, d) for _ in range(3))  # natten's (B, H, W, heads, d)
    want = natten.na2d(q, k, v, kernel_size=ks, dilation=dil)
    to_seq = lambda t: t.permute(0, 3, 1, 2, 4).reshape(B, h, H * W, d)  # noqa: E731
    got = tf.local_attention(to_seq(q), to_seq(k), to_seq(v), (H, W), kernel_size=ks, border="shift",
                             dilation=dil, backend="ref")
    assert_close_f32(got.double(), to_seq(want).double())


def test_global_is_one_window_and_matches_plain_sdpa():
    H, W, h, d = 4, 5, 2, 6
    q, k, v = (_rand(2, h, H * W, d) for _ in range(3))
    got = tf.grid_attention(q, k, v, (H, W), (H, W), backend="ref")
    assert_close_f32(got, F.scaled_dot_product_attention(q, k, v))


def test_attention_qkv_ref_matches_unpacked():
    B, H, W, h, d = 2, 4, 4, 2, 8
    qkv = _rand(B, H * W, 3 * h * d)
    geom = G.grid_geometry((H, W), (2, 2), (1, 1))
    table = _rand(geom.bias_rows, h)
    q, k, v = qkv.reshape(B, H * W, 3, h, d).permute(2, 0, 3, 1, 4)
    want = tf.attention(q, k, v, geom, table, backend="ref").transpose(1, 2).reshape(B, H * W, h * d)
    assert_close_f32(tf.attention_qkv(qkv, h, geom, table, backend="ref"), want)


# ---------------------------------------------------------------------------------------------
# Resampling references.

@pytest.mark.parametrize("H,W,C", [(1, 1, 4), (3, 5, 8), (4, 4, 12)])
def test_pixel_shuffle_ref_matches_nn_pixelshuffle(H, W, C):
    x = _rand(2, H * W, C)
    pos = _rand(1, 4 * H * W, C // 4)
    m = x.transpose(1, 2).reshape(2, C, H, W)
    want = torch.nn.PixelShuffle(2)(m).flatten(2).transpose(1, 2) + pos
    assert_close_f32(tf.pixel_shuffle_seq(x, (H, W), pos, backend="ref"), want)
    # Spec wording: output channel c at sub-pixel (i, j) takes input channel 4c+2i+j at (h, w).
    out = tf.pixel_shuffle_seq(x, (H, W), backend="ref").reshape(2, 2 * H, 2 * W, C // 4)
    for c in range(C // 4):
        for i in range(2):
            for j in range(2):
                assert torch.equal(out[:, i::2, j::2, c], m[:, 4 * c + 2 * i + j])
    back = tf.pixel_unshuffle_seq(tf.pixel_shuffle_seq(x, (H, W), backend="ref"), (2 * H, 2 * W), backend="ref")
    assert torch.equal(back, x)


def _bicubic_1d_matrix(L):
    """Upsampling matrix of PyTorch's bicubic (A = -0.75, half-pixel centres, clamped borders)."""
    A = -0.75

    def w(t):
        t = abs(t)
        if t <= 1:
            return ((A + 2) * t - (A + 3)) * t * t + 1
        if t < 2:
            return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A
        return 0.0

    Mx = torch.zeros(2 * L, L, dtype=torch.float64)
    for o in range(2 * L):
        src = (o + 0.5) / 2 - 0.5
        f = math.floor(src)
        for tap in range(-1, 3):
            Mx[o, min(max(f + tap, 0), L - 1)] += w(src - (f + tap))
    return Mx


@pytest.mark.parametrize("H,W", [(1, 1), (2, 3), (5, 4), (8, 8)])
def test_bicubic_ref_matches_handwritten_bicubic(H, W):
    x = _rand(2, H * W, 3)
    m = x.transpose(1, 2).reshape(2, 3, H, W)
    want = torch.einsum("yh,bchw,xw->bcyx", _bicubic_1d_matrix(H), m, _bicubic_1d_matrix(W))
    want = want.flatten(2).transpose(1, 2)
    assert_close_f32(tf.bicubic_upsample_seq(x, (H, W), backend="ref"), want)


def test_avg_pool_and_pixel_norm_refs():
    x = _rand(2, 6 * 4, 5)
    m = x.reshape(2, 6, 4, 5)
    want = (m[:, 0::2, 0::2] + m[:, 0::2, 1::2] + m[:, 1::2, 0::2] + m[:, 1::2, 1::2]).reshape(2, 6, 5) / 4
    assert_close_f32(tf.avg_pool_seq(x, (6, 4), backend="ref"), want)
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-8)
    assert_close_f32(tf.pixel_norm(x, backend="ref"), want)
