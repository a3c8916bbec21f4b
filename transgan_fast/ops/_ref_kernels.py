"""The `ref` backend's kernels for the custom ops of `_library.py`.

They follow the same write-into-`out` contract as the fused kernels but compute in plain,
dense PyTorch (O(N^2) memory; the attention backward and the adjoints written out explicitly,
since kernels run below autograd), so the custom-op machinery (fake kernels, autograd, `opcheck`, `torch.compile`) is
testable on any machine, with or without the compiled extension.
"""
from __future__ import annotations

import torch

from ._dispatch import register_kernel
from .attention import probs_times_values
from .geometry import bias_index, visibility
from .neighbours import cached_neighbour_index, sparse_av_ref, sparse_avt_ref, sparse_qk_ref
from .resample import (PIXEL_NORM_EPS, avg_pool_seq_ref, bicubic_upsample_seq_ref, pixel_norm_ref,
                       pixel_shuffle_seq_ref, pixel_unshuffle_seq_ref)


def _dense_probs(q, k, bias, geom, scale, with_mask=False):
    """Dense masked logits -> (probabilities, log-sum-exp[, mask]), computed in q's dtype."""
    logits = torch.matmul(q * scale, k.transpose(-2, -1))                     # (B, h, N, N)
    if bias is not None:
        logits = logits + bias[bias_index(geom, q.device)].permute(2, 0, 1).to(logits.dtype)
    mask = visibility(geom, q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)                                      # (B, h, N)
    p = torch.exp(logits - lse[..., None])
    return (p, lse, mask) if with_mask else (p, lse)


@register_kernel("ref", "attn_fwd")
def attn_fwd(q, k, v, bias, geom, scale, out, lse):
    p, l, mask = _dense_probs(q, k, bias, geom, scale, with_mask=True)
    out.copy_(probs_times_values(p, v, mask))
    lse.copy_(l)


@register_kernel("ref", "attn_bwd")
def attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias):
    # The attention backward written out (kernels run below autograd, so no autograd here):
    # dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = s dS K, dK = s dS^T Q.
    p, _ = _dense_probs(q, k, bias, geom, scale)
    dv.copy_(torch.matmul(p.transpose(-2, -1), dout))
    dp = torch.matmul(dout, v.transpose(-2, -1))
    ds = p * (dp - (dout * out).sum(-1, keepdim=True))
    dq.copy_(torch.matmul(ds, k) * scale)
    dk.copy_(torch.matmul(ds.transpose(-2, -1), q) * scale)
    if dbias is not None:
        idx = bias_index(geom, q.device).reshape(-1)                           # (N*N,)
        per_head = ds.sum(0).reshape(ds.shape[1], -1).to(dbias.dtype)          # (h, N*N)
        dbias.index_add_(0, idx, per_head.t())


# Sparse-logit primitives (contract in `_sparse.py`): the neighbours.py references, accumulated in
# at least float32.

def _acc(t):
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@register_kernel("ref", "sparse_qk")
def sparse_qk(a, b, geom, out):
    keys, _ = cached_neighbour_index(geom, a.device)
    out.copy_(sparse_qk_ref(_acc(a), _acc(b), keys))


@register_kernel("ref", "sparse_av")
def sparse_av(p, v, geom, out):
    keys, _ = cached_neighbour_index(geom, p.device)
    out.copy_(sparse_av_ref(_acc(p), _acc(v), keys))


@register_kernel("ref", "sparse_avt")
def sparse_avt(p, x, geom, out):
    keys, _ = cached_neighbour_index(geom, p.device)
    out.copy_(sparse_avt_ref(_acc(p), _acc(x), keys))


def _bicubic_matrix(L, dtype, device):
    """(2L, L) matrix of PyTorch's 2x bicubic upsampling along one axis (A = -0.75,
    half-pixel centres, clamped borders)."""
    A = -0.75
    o = torch.arange(2 * L, dtype=torch.float64)
    src = (o + 0.5) / 2 - 0.5
    f = torch.floor(src)
    m = torch.zeros(2 * L, L, dtype=torch.float64)
    for tap in range(-1, 3):
        t = (src - (f + tap)).abs()
        w = torch.where(t <= 1, ((A + 2) * t - (A + 3)) * t * t + 1,
                        torch.where(t < 2, ((A * t - 5 * A) * t + 8 * A) * t - 4 * A, torch.zeros_like(t)))
        col = (f + tap).clamp(0, L - 1).long()
        m.index_put_((torch.arange(2 * L), col), w, accumulate=True)
    return m.to(dtype=dtype, device=device)


@register_kernel("ref", "pixel_shuffle_seq")
def pixel_shuffle_seq(x, H, W, *rest):
    pos, out = rest if len(rest) == 2 else (None, rest[0])
    out.copy_(pixel_shuffle_seq_ref(x, (H, W), pos))


@register_kernel("ref", "pixel_unshuffle_seq")
def pixel_unshuffle_seq(x, H, W, out):
    out.copy_(pixel_unshuffle_seq_ref(x, (2 * H, 2 * W)))


@register_kernel("ref", "bicubic_upsample_seq")
def bicubic_upsample_seq(x, H, W, out):
    out.copy_(bicubic_upsample_seq_ref(x, (H, W)))


@register_kernel("ref", "bicubic_upsample_seq_adjoint")
def bicubic_upsample_seq_adjoint(g, H, W, out):
    B, N4, C = g.shape
    my, mx = _bicubic_matrix(H, g.dtype, g.device), _bicubic_matrix(W, g.dtype, g.device)
    gm = g.reshape(B, 2 * H, 2 * W, C)
    out.copy_(torch.einsum("yh,byxc,xw->bhwc", my, gm, mx).reshape(B, H * W, C))


@register_kernel("ref", "avg_pool_seq")
def avg_pool_seq(x, H, W, out):
    out.copy_(avg_pool_seq_ref(x, (H, W)))


@register_kernel("ref", "avg_pool_seq_adjoint")
def avg_pool_seq_adjoint(g, H, W, out):
    B, N4, C = g.shape
    gm = g.reshape(B, H // 2, 1, W // 2, 1, C).expand(B, H // 2, 2, W // 2, 2, C)
    out.copy_(gm.reshape(B, H * W, C) / 4)


@register_kernel("ref", "pixel_norm")
def pixel_norm(x, out):
    out.copy_(pixel_norm_ref(x))


@register_kernel("ref", "pixel_norm_backward")
def pixel_norm_backward(x, g, out):
    # y = x r, r = (mean(x^2) + eps)^-1/2  =>  dx = r g - x r^3 mean(g x).
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + PIXEL_NORM_EPS)
    out.copy_(r * g - x * r.pow(3) * (g * x).mean(-1, keepdim=True))
