"""GAN losses: WGAN-GP with drift (`wgangp-eps`, TransGAN's released loss), hinge, non-saturating,
and the R1 penalty on real images (Mescheder et al. 2018), which any of them can add.

Every term is a per-sample mean, so gradient averaging across data-parallel ranks (or equal
micro-batches) reproduces the single-process gradient. The one term that is not a per-sample
mean, the drift `eps·(E[D(x)])²`, uses the batch mean gathered over all ranks: its gradient
`2·eps·m·∂m` is formed with the global `m` (detached) times the local mean, which averaged over
ranks is exactly the single-process gradient.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty"]

LOSSES = ("wgangp-eps", "hinge", "ns")


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Low-precision (autocast) outputs are promoted to float32; float64 stays float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check(kind: str):
    if kind not in LOSSES:
        raise ValueError(f"loss: kind must be one of {LOSSES}; got {kind!r}")


def _labels(labels: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """D's keyword arguments for class labels: none for an unconditional D."""
    return {} if labels is None else {"y": labels}


def gradient_penalty(D: Callable, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                     augment=None, grad_scale: float = 1.0,
                     labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`E[(‖∇_x̂ D(x̂)‖₂ − 1)²]` with `x̂ = α·real + (1−α)·fake`, α per sample `(B,)`.

    The gradient is taken w.r.t. the un-augmented interpolate with `create_graph=True` (the
    augmentation runs inside D). `grad_scale` multiplies D's output before differentiation and
    divides the gradient after (fp16 loss scaling; 1 otherwise). `labels (B,)`: the class of
    each real/fake pair (a conditional D scores the interpolate with it).
    """
    if alpha.shape != (real.shape[0],):
        raise ValueError(f"gradient_penalty: alpha must have shape ({real.shape[0]},); "
                         f"got {tuple(alpha.shape)}")
    a = alpha.view(-1, 1, 1, 1).to(real.dtype)
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    out = _f32(D(x_hat, augment=augment, **_labels(labels)))
    (grad,) = torch.autograd.grad(out.sum() * grad_scale, x_hat, create_graph=True)
    grad = _f32(grad) / grad_scale
    norm = grad.flatten(1).norm(2, dim=1)  # (B,)
    return (norm - 1).pow(2).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """R1: `E[‖∇_x D(x)‖₂²]` over real images `x`, differentiable (for D's update).

    `real` must require grad and `d_real (B,)` be D's output on it (the augmentation runs inside
    D, so the gradient is taken w.r.t. the un-augmented image, as for `gradient_penalty`).
    `grad_scale`: fp16 loss scaling, as in `gradient_penalty`.
    """
    (grad,) = torch.autograd.grad(d_real.sum() * grad_scale, real, create_graph=True)
    return (_f32(grad) / grad_scale).flatten(1).square().sum(1).mean()


def discriminator_loss(kind: str, D: Callable, real: torch.Tensor, fake: torch.Tensor,
                       augment=None, alpha: Optional[torch.Tensor] = None, gp_weight: float = 10.0,
                       drift: float = 1e-3, global_mean: Callable = lambda t: t,
                       grad_scale: float = 1.0, labels: Optional[torch.Tensor] = None,
                       r1_gamma: float = 0.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The discriminator's loss on one (micro-)batch; returns `(loss, stats)`.

    Args:
        kind: "wgangp-eps" (`−E[D(x)] + E[D(G(z))] + gp_weight·GP + drift·(E[D(x)])²`),
            "hinge" or "ns" (non-saturating / softplus).
        fake: generated images (detached by the caller or here).
        alpha: per-sample interpolation weights `(B,)` for the penalty (wgangp-eps only).
        global_mean: maps a detached scalar to its mean over all ranks (identity off DDP).
        labels: class labels `(B,)` of a class-conditional D, shared by `real[i]` and `fake[i]`
            (the fakes are generated for the reals' classes); None for an unconditional D.
        r1_gamma: adds `r1_gamma / 2 · R1` (`r1_penalty`) to any kind; 0: off.
    """
    _check(kind)
    if r1_gamma < 0:
        raise ValueError(f"discriminator_loss: r1_gamma must be >= 0; got {r1_gamma}")
    if r1_gamma:
        real = real.detach().requires_grad_(True)
    d_real = _f32(D(real, augment=augment, **_labels(labels))).flatten()
    d_fake = _f32(D(fake.detach(), augment=augment, **_labels(labels))).flatten()
    stats = {"D/real": d_real.mean().item(), "D/fake": d_fake.mean().item()}
    if kind == "hinge":
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    elif kind == "ns":
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    else:
        if alpha is None:
            raise ValueError("discriminator_loss: wgangp-eps needs alpha (per-sample weights)")
        loss = d_fake.mean() - d_real.mean()
        stats["D/wdist"] = -loss.item()
        if gp_weight:
            gp = gradient_penalty(D, real, fake.detach(), alpha, augment, grad_scale, labels)
            loss = loss + gp_weight * gp
            stats["D/gp"] = gp.item()
        if drift:
            m_local = d_real.mean()
            m = global_mean(m_local.detach())
            # value eps·m² (single process); gradient 2·eps·m·∂m_local (exact after rank averaging)
            loss = loss + drift * (2 * m * m_local - m * m)
            stats["D/drift"] = (m * m).item()
    if r1_gamma:
        r1 = r1_penalty(d_real, real, grad_scale)
        loss = loss + 0.5 * r1_gamma * r1
        stats["D/r1"] = r1.item()
    stats["D/loss"] = loss.item()
    return loss, stats


def generator_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """`−E[D(G(z))]` for wgangp-eps and hinge; `E[softplus(−D(G(z)))]` for ns."""
    _check(kind)
    d_fake = _f32(d_fake).flatten()
    if kind == "ns":
        return F.softplus(-d_fake).mean()
    return -d_fake.mean()
