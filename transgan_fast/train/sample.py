"""Sampling a trained generator reproducibly (`transgan-fast generate`).

An image is a function of its seed alone: the latent is drawn from a generator seeded with the
seed, and so is the attention noise of models that have it (`noise_mode="const"`), image by
image, so that `--seeds 5` and `--seeds 0-63` give the same picture for seed 5. `"random"` draws
fresh noise at every call (StyleGAN's `noise_mode` has the same three choices); `"none"` leaves
it out. A class-conditional generator takes one class per image (`classes`, aligned with the
seeds); the latent of a seed is the same whatever the class.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch

from ..nn.attention import noise_source
from . import checkpoint as ck
from .config import TrainConfig

__all__ = ["load_generator", "generate_images", "num_classes_of", "NOISE_MODES"]

NOISE_MODES = ("const", "random", "none")
_NOISE_SALT = 0x5EED_0F_A77E  # noise and latent of one seed come from different streams


def load_generator(ckpt: str, backend: str = "auto", raw: bool = False,
                   device: torch.device = torch.device("cpu")) -> Tuple[torch.nn.Module, str, List[str]]:
    """`(G, checkpoint path, notes)` from a checkpoint file or a run directory's newest readable one.

    Unreadable newer checkpoints of a run directory are skipped and named in `notes`; an
    unreadable file given by name raises `CheckpointError` naming it.
    """
    from .runner import build_models
    notes: List[str] = []
    if os.path.isdir(ckpt):
        path = state = None
        for p in reversed(ck.list_checkpoints(ckpt)):
            try:
                path, state = p, ck.load_checkpoint(p)
                break
            except ck.CheckpointError as exc:
                notes.append(f"WARNING: skipping unreadable checkpoint: {exc}")
        if path is None:
            raise FileNotFoundError(f"--checkpoint {ckpt!r}: no readable ckpt-*.pt in that directory")
    else:
        path, state = ckpt, ck.load_checkpoint(ckpt)
    key = "G" if raw else "G_ema"
    if "config" not in state or key not in state:
        raise ck.CheckpointError(f"{path} is not a transgan_fast training checkpoint (no "
                                 f"'config' or '{key}' entry)")
    cfg = TrainConfig.from_dict({**state["config"], "backend": backend})
    G, _ = build_models(cfg)
    G.load_state_dict(state[key])
    G = G.to(device).eval()
    if hasattr(G, "set_progress"):
        G.set_progress(float(state.get("epoch", 0.0)))
    return G, path, notes


def num_classes_of(G: torch.nn.Module) -> int:
    """The number of classes of a class-conditional generator (0: unconditional)."""
    return int(getattr(getattr(G, "cfg", None), "num_classes", 0) or 0)


def _has_noise(G: torch.nn.Module) -> bool:
    return any(getattr(m, "noise_strength", None) is not None for m in G.modules())


@torch.no_grad()
def generate_images(G: torch.nn.Module, seeds: Sequence[int], noise_mode: str = "const",
                    device: torch.device = torch.device("cpu"), batch: int = 32,
                    classes: Optional[Sequence[int]] = None,
                    latents: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`(len(seeds), 3, S, S)` float images in [-1, 1] on the CPU, one per seed (see module doc).

    `classes`: one class per seed, required exactly for a class-conditional generator.
    `latents`: `(len(seeds), latent_dim)` in place of the seeds' own (the noise still follows
    the seeds), e.g. with controlled sub-spaces set (control_fit.set_latents).
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"generate_images: noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
    k = num_classes_of(G)
    if (classes is None) != (k == 0):
        raise ValueError(f"generate_images: classes must be given exactly for a class-conditional "
                         f"generator; this one has {k} classes and classes is "
                         f"{'None' if classes is None else 'given'}")
    y = None
    if classes is not None:
        if len(classes) != len(seeds) or any(not 0 <= c < k for c in classes):
            raise ValueError(f"generate_images: need one class in [0, {k}) per seed "
                             f"({len(seeds)} seeds); got {list(classes)[:8]}...")
        y = torch.as_tensor(list(classes), dtype=torch.long)
    z = torch.stack([torch.randn(G.latent_dim, generator=torch.Generator().manual_seed(s))
                     for s in seeds]) if latents is None else latents        # (n, latent_dim)
    if z.shape != (len(seeds), G.latent_dim):
        raise ValueError(f"generate_images: latents must be ({len(seeds)}, {G.latent_dim}); got "
                         f"{tuple(z.shape)}")
    gen = torch.Generator(device=device)
    if noise_mode == "random":
        gen.seed()  # fresh entropy: differs from call to call
    per_image = noise_mode == "const" and _has_noise(G)
    out = []
    with noise_source(gen, enabled=noise_mode != "none"):
        if per_image:
            for i, (s, zz) in enumerate(zip(seeds, z)):
                gen.manual_seed(s ^ _NOISE_SALT)
                out.append(_run(G, zz[None], None if y is None else y[i:i + 1], device))
        else:
            ys = y.split(batch) if y is not None else [None] * len(z.split(batch))
            for zz, yy in zip(z.split(batch), ys):
                out.append(_run(G, zz, yy, device))
    return torch.cat(out)


def _run(G: torch.nn.Module, z: torch.Tensor, y: Optional[torch.Tensor], device) -> torch.Tensor:
    img = G(z.to(device)) if y is None else G(z.to(device), y.to(device))
    return img.float().clamp(-1, 1).cpu()
