"""Control encoders (GAN-Control §3.3): explicit attribute values -> sub-space latents.

After a controlled run, `fit_control` samples latents (and uniform classes, for a generator that
is class-conditional as well), generates images with the (EMA) generator, reads each attribute
from them with the run's attribute networks, and trains one small MLP per attribute from that
attribute's value to the sub-space latent that produced it (mean squared error: the encoder
learns the mean sub-space latent of each value). `generate --set colour=yellow,size=0.7` then
fills those sub-spaces from the encoders and draws the others and the free sub-space from the
seed as usual.

A value is given as an attribute network sees it: a class name or index for a class attribute
(a network with `classes`: one-hot), a number for a one-entry embedding, `a:b:c` for a longer one.
The encoders are stored with their layout in a weights-only file (`control.pt`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .control import ControlLayout

__all__ = ["ControlEncoder", "attribute_inputs", "fit_control", "random_labels", "generate",
           "parse_set", "set_latents", "save_encoders", "load_encoders", "load_control"]


class ControlEncoder(nn.Module):
    """MLP `(B, E)` attribute value -> `(B, dim)` sub-space latent (two hidden layers of 64)."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)


def attribute_inputs(net: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    """An attribute network's embedding as an encoder input: one-hot of the argmax for a class
    attribute (what `--set name=class` gives), the embedding itself otherwise."""
    if getattr(net, "classes", None):
        return F.one_hot(emb.argmax(1), emb.shape[1]).float()
    return emb.float()


def load_control(state: Dict, latent_dim: int, device=None):
    """`(layout, nets)` of a controlled run's checkpoint state: the attribute networks rebuilt
    from its config and loaded with its weights (nothing is trained)."""
    from .config import TrainConfig
    from .control import Control
    cfg = TrainConfig.from_dict(state["config"])
    if not cfg.control or "control" not in state:
        raise ValueError("this checkpoint is not from a controlled run (train --control ...)")
    ctl = Control(cfg, latent_dim, source=None, device=device, trained=False)
    ctl.load_state_dict(state["control"])
    return ctl.layout, ctl.nets


def random_labels(G: nn.Module, n: int, gen: torch.Generator) -> Optional[torch.Tensor]:
    """Uniform classes `(n,)` for a class-conditional generator (drawn from `gen`); None for an
    unconditional one (nothing is drawn)."""
    from .sample import num_classes_of
    k = num_classes_of(G)
    return torch.randint(k, (n,), generator=gen) if k else None


def generate(G: nn.Module, z: torch.Tensor, y: Optional[torch.Tensor], batch: int = 128
             ) -> torch.Tensor:
    """`G(z)` (or `G(z, y)` with class labels) in batches: float32, clamped to [-1, 1], on the
    CPU."""
    dev = next(G.parameters()).device
    ys = y.split(batch) if y is not None else [None] * len(z.split(batch))
    return torch.cat([(G(zz.to(dev)) if yy is None else G(zz.to(dev), yy.to(dev)))
                      .float().clamp(-1, 1).cpu() for zz, yy in zip(z.split(batch), ys)])


@torch.no_grad()
def _sample_attributes(G, nets, layout: ControlLayout, n: int, seed: int, batch: int, device):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, layout.latent_dim, generator=gen)
    y = random_labels(G, n, gen)  # a class-conditional G: every class, the attributes read alike
    ins: Dict[str, List[torch.Tensor]] = {k: [] for k in layout.names}
    for i, zz in enumerate(z.split(batch)):
        yy = y[i * batch:(i + 1) * batch] if y is not None else None
        img = generate(G, zz, yy).to(device)
        for k in layout.names:
            ins[k].append(attribute_inputs(nets[k], nets[k](img)).cpu())
    return z, {k: torch.cat(v) for k, v in ins.items()}


def fit_control(G: nn.Module, nets, layout: ControlLayout, n: int = 4096, steps: int = 1000,
                batch: int = 256, lr: float = 3e-3, seed: int = 0,
                device=None) -> Dict[str, ControlEncoder]:
    """Train one `ControlEncoder` per controlled attribute (see the module docstring); returns
    them in eval mode. `n` generated images, `steps` Adam steps per encoder."""
    if n < 2 or steps < 1:
        raise ValueError(f"fit_control: need n >= 2 and steps >= 1; got n={n}, steps={steps}")
    device = device or next(G.parameters()).device
    z, ins = _sample_attributes(G.eval(), nets, layout, n, seed, 128, device)
    encs = {}
    g = torch.Generator().manual_seed(seed + 1)
    for k in layout.names:
        target = z[:, layout.slice(k)]                                       # (n, dim)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            enc = ControlEncoder(ins[k].shape[1], layout.dim)
        opt = torch.optim.Adam(enc.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(n, (min(batch, n),), generator=g)
            loss = F.mse_loss(enc(ins[k][idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        encs[k] = enc.eval()
    return encs


def parse_set(text: str, nets, layout: ControlLayout) -> Dict[str, torch.Tensor]:
    """'colour=yellow,size=0.7' -> {name: encoder input (E,)} (see the module docstring)."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, val = part.partition("=")
        if not sep or name not in layout.names:
            raise ValueError(f"--set: {part!r} must be name=value with a controlled attribute "
                             f"name ({', '.join(layout.names)})")
        classes = getattr(nets[name], "classes", None)
        if classes:
            k = classes.index(val) if val in classes else int(val) if val.isdigit() else -1
            if not 0 <= k < len(classes):
                raise ValueError(f"--set: {name}={val!r}: expected one of {classes} or an index "
                                 f"0-{len(classes) - 1}")
            out[name] = F.one_hot(torch.tensor(k), len(classes)).float()
            continue
        try:
            out[name] = torch.tensor([float(x) for x in val.split(":")])
        except ValueError:
            raise ValueError(f"--set: {name}={val!r} is not a number (or a:b:c for a longer "
                             f"embedding)") from None
    if not out:
        raise ValueError(f"--set: no name=value in {text!r}")
    return out


@torch.no_grad()
def set_latents(z: torch.Tensor, layout: ControlLayout, encoders: Dict[str, nn.Module],
                values: Dict[str, torch.Tensor]) -> torch.Tensor:
    """`z` `(B, latent_dim)` with the sub-space of each attribute in `values` (`(E,)` for all
    rows or `(B, E)`) replaced by its encoder's latent."""
    z = z.clone()
    for k, v in values.items():
        v = v.float().expand(z.shape[0], -1) if v.dim() == 1 else v.float()
        if v.shape[1] != encoders[k].net[0].in_features:
            raise ValueError(f"--set: {k} takes {encoders[k].net[0].in_features} numbers; got "
                             f"{v.shape[1]}")
        z[:, layout.slice(k)] = encoders[k](v.to(z.device))
    return z


def save_encoders(path: str, layout: ControlLayout, encoders: Dict[str, ControlEncoder],
                  source: str = "") -> None:
    """Write the encoders and their layout (weights-only loadable), atomically."""
    state = {"names": layout.names, "dim": layout.dim, "latent_dim": layout.latent_dim,
             "checkpoint": source, "encoders": {k: e.state_dict() for k, e in encoders.items()},
             "in_dims": {k: e.net[0].in_features for k, e in encoders.items()}}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_encoders(path: str):
    """`(layout, encoders)` from `save_encoders`' file."""
    s = torch.load(path, map_location="cpu", weights_only=True)
    layout = ControlLayout(s["names"], int(s["dim"]), int(s["latent_dim"]))
    encs = {}
    for k in layout.names:
        encs[k] = ControlEncoder(int(s["in_dims"][k]), layout.dim)
        encs[k].load_state_dict(s["encoders"][k])
        encs[k].eval()
    return layout, encs
