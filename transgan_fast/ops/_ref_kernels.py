"""The `ref` backend's kernels for the custom ops of `_library.py`.

They follow the same write-into-`out` contract as the fused kernels but compute with the
references, so the custom-op machinery (fake kernels, autograd, `opcheck`, `torch.compile`) is
testable on any machine, with or without the compiled extension.
"""
from __future__ import annotations

import torch

from ._dispatch import register_kernel
from .attention import attention_ref
from .resample import (avg_pool_seq_ref, bicubic_upsample_seq_ref, pixel_norm_ref,
                       pixel_shuffle_seq_ref, pixel_unshuffle_seq_ref)


@register_kernel("ref", "attn_fwd")
def attn_fwd(q, k, v, bias, geom, scale, out, lse):
    from .geometry import bias_index, visibility
    out.copy_(attention_ref(q, k, v, geom, bias, scale))
    # The log-sum-exp, computed densely (the reference's memory is O(N^2) anyway).
    logits = torch.matmul(q.float() * scale, k.float().transpose(-2, -1))
    if bias is not None:
        logits = logits + bias[bias_index(geom, q.device)].permute(2, 0, 1)
    logits = logits.masked_fill(~visibility(geom, q.device), float("-inf"))
    lse.copy_(torch.logsumexp(logits, dim=-1))


@register_kernel("ref", "attn_bwd")
def attn_bwd(q, k, v, bias, out, lse, dout, geom, scale, dq, dk, dv, dbias):
    with torch.enable_grad():
        ins = [t.detach().requires_grad_() for t in (q, k, v)]
        b = bias.detach().requires_grad_() if bias is not None else None
        o = attention_ref(*ins, geom, b, scale)
        grads = torch.autograd.grad(o, ins + ([b] if b is not None else []), dout)
    dq.copy_(grads[0]); dk.copy_(grads[1]); dv.copy_(grads[2])
    if dbias is not None:
        dbias.copy_(grads[3])


def _vjp(fn, x_shape, g):
    """Adjoint of the linear map `fn` applied to `g` (autograd on a dummy input)."""
    with torch.enable_grad():
        x = torch.zeros(x_shape, dtype=g.dtype, device=g.device, requires_grad=True)
        return torch.autograd.grad(fn(x), x, g)[0]


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
    out.copy_(_vjp(lambda x: bicubic_upsample_seq_ref(x, (H, W)), (B, N4 // 4, C), g))


@register_kernel("ref", "avg_pool_seq")
def avg_pool_seq(x, H, W, out):
    out.copy_(avg_pool_seq_ref(x, (H, W)))


@register_kernel("ref", "avg_pool_seq_adjoint")
def avg_pool_seq_adjoint(g, H, W, out):
    B, N4, C = g.shape
    out.copy_(_vjp(lambda x: avg_pool_seq_ref(x, (H, W)), (B, 4 * N4, C), g))


@register_kernel("ref", "pixel_norm")
def pixel_norm(x, out):
    out.copy_(pixel_norm_ref(x))


@register_kernel("ref", "pixel_norm_backward")
def pixel_norm_backward(x, g, out):
    with torch.enable_grad():
        xd = x.detach().requires_grad_()
        out.copy_(torch.autograd.grad(pixel_norm_ref(xd), xd, g)[0])
