"""Explicit control (GAN-Control, Shoshan et al. 2021): latent sub-spaces, attribute networks and
the contrastive losses that tie each sub-space to one attribute.

The latent `z` of `latent_dim` entries is split (`ControlLayout`) into one sub-space of
`control_dim` entries per controlled attribute, in the order given, then a free sub-space (the
rest). Every attribute has an attribute network: an `nn.Module` mapping images `(B, 3, H, W)` in
[-1, 1] to an embedding `(B, E)`, frozen during training. Built-in networks exist for the
attributes of the shapes data (`data.SHAPE_ATTRIBUTES`), trained on the data's labels when the
run starts (`AttributeNet`: class scores for a categorical attribute, the value in [0, 1]
for a continuous one); any other is a Python entry point `name=module:callable` whose callable
returns the module (with a `classes` attribute when its embedding is one score per class).

Contrastive loss (GAN-Control eq. 1-2). The G batch is taken as pairs (0, 1), (2, 3), ...; for
each pair the second latent copies each of the first's sub-spaces, the free one included, with
probability 1/2 (`pair_latents`), so some pairs differ in one attribute's sub-space only. With
`d = ||E_j(x_a) - E_j(x_b)||_2` the loss of a pair is
`max(0, d - pos_margin)` when the sub-space is shared (pulled together) and
`max(0, neg_margin - d)` otherwise (pushed apart), averaged over pairs and summed over
attributes with weight `control_weight`. It is added to G's loss at every G step.
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ControlLayout", "AttributeNet", "train_attribute_net", "parse_control",
           "build_attribute_net", "contrastive_loss", "pair_latents", "Control"]


class ControlLayout:
    """The split of a `latent_dim` latent: `dim` entries per name in order, then the free rest."""

    def __init__(self, names: Sequence[str], dim: int, latent_dim: int):
        names = list(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"control: need distinct attribute names; got {names}")
        if dim < 1 or len(names) * dim >= latent_dim:
            raise ValueError(f"control_dim={dim} x {len(names)} attributes must leave at least one "
                             f"free latent entry of latent_dim={latent_dim}")
        self.names, self.dim, self.latent_dim = names, dim, latent_dim

    def slice(self, name: str) -> slice:
        """The entries of `name`'s sub-space (`"free"`: the free one)."""
        if name == "free":
            return slice(len(self.names) * self.dim, self.latent_dim)
        if name not in self.names:
            raise ValueError(f"control: unknown attribute {name!r}; controlled: {self.names}")
        i = self.names.index(name)
        return slice(i * self.dim, (i + 1) * self.dim)

    def split(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """`{name: z[:, sub-space], ..., "free": z[:, rest]}` (views)."""
        return {n: z[:, self.slice(n)] for n in self.names + ["free"]}


class AttributeNet(nn.Module):
    """A small CNN: three 3x3 conv stages (w, 2w, 4w; 2x2 max pool after the first two),
    4x4 adaptive average pool (keeps where things are), linear. `forward(x)` is the embedding:
    class scores `(B, K)` when `classes` is given, else the value in [0, 1] `(B, 1)`.

    The class scores are linear, trained by least squares towards the one-hot class (an image of
    class k lies near corner k), not probabilities: through a saturated softmax the push-apart
    loss has almost no gradient, and with probabilities the demo's colour control stayed at the
    uncontrolled level. Linear scores keep a gradient everywhere and put an image between two
    classes between their corners."""

    def __init__(self, classes: Optional[Sequence[str]] = None, width: int = 16):
        super().__init__()
        self.classes = list(classes) if classes else None
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(64 * w, len(self.classes) if self.classes else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x).flatten(1))                         # (B, K or 1)
        return out if self.classes else out.sigmoid()


def train_attribute_net(source, name: str, steps: int = 400, batch: int = 64, lr: float = 2e-3,
                        seed: int = 0, holdout: float = 0.1) -> Tuple[AttributeNet, float]:
    """An `AttributeNet` for `source.attributes[name]` (classes or values in [0, 1]); returns
    `(net in eval mode, held-out score)`: accuracy for classes, mean absolute error for values.
    Draws only from generators of its own (the global RNG is left as it was)."""
    attrs = getattr(source, "attributes", None) or {}
    if name not in attrs:
        raise ValueError(f"control: data {getattr(source, 'name', '')!r} has no attribute {name!r}; "
                         f"it has {sorted(attrs) or 'none'} (built-in attribute networks need "
                         f"the shapes data; else give name=module:callable)")
    classes = source.attribute_kinds[name]
    n = len(source)
    n_val = max(1, int(n * holdout))
    if steps < 1 or n - n_val < 1:
        raise ValueError(f"train_attribute_net: need steps >= 1 and more than {n_val} images; "
                         f"got steps={steps}, {n} images")
    x = source.get_many(list(range(n))).float() / 127.5 - 1                 # (N, 3, R, R)
    y = attrs[name]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = AttributeNet(classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n_train = n - n_val
    for _ in range(steps):
        idx = torch.randint(n_train, (batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch, generator=g) < 0.5  # every shapes attribute is flip-invariant
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        out = net(xb)
        target = F.one_hot(y[idx], len(classes)).float() if classes else y[idx].view(-1, 1)
        loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = net(x[n_train:])
    score = (out.argmax(1) == y[n_train:]).float().mean() if classes else \
        (out[:, 0] - y[n_train:]).abs().mean()
    return net, float(score)


def parse_control(text: str) -> List[Tuple[str, Optional[str]]]:
    """'colour,size,age=pkg.nets:make_age' -> [(name, entry point or None for built-in), ...]."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, entry = part.partition("=")
        if not name.isidentifier() or name == "free" or (sep and ":" not in entry):
            raise ValueError(f"control: {part!r} is not an attribute: use a built-in name "
                             f"(a Python identifier other than 'free') or name=module:callable")
        out.append((name, entry if sep else None))
    if not out:
        raise ValueError(f"control: no attribute names in {text!r}")
    return out


def build_attribute_net(name: str, entry: Optional[str], source=None, steps: int = 400,
                        seed: int = 0, trained: bool = True) -> nn.Module:
    """The attribute network of `name`: the entry point's module, or a built-in `AttributeNet`
    trained on `source.attributes[name]` (with `steps` Adam steps, seeded; `trained=False`: left
    untrained, for loading saved weights)."""
    if entry is None and not trained:
        from .data import SHAPE_ATTRIBUTES
        if name not in SHAPE_ATTRIBUTES:
            raise ValueError(f"control: {name!r} is not a built-in attribute "
                             f"({', '.join(SHAPE_ATTRIBUTES)}); give name=module:callable")
        return AttributeNet(SHAPE_ATTRIBUTES[name])
    if entry is None:
        return train_attribute_net(source, name, steps=steps, seed=seed)[0]
    mod_name, _, fn_name = entry.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"control: attribute {name!r}: cannot load entry point {entry!r}: {exc}")
    net = fn()
    if not isinstance(net, nn.Module):
        raise ValueError(f"control: attribute {name!r}: {entry} returned {type(net).__name__}, "
                         f"not an nn.Module")
    return net.eval()


def contrastive_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor,
                     pos_margin: float, neg_margin: float) -> torch.Tensor:
    """GAN-Control's pair loss, averaged over pairs: `max(0, d - pos_margin)` where `same`,
    `max(0, neg_margin - d)` elsewhere, `d` the Euclidean distance of the embeddings `(P, E)`."""
    d = (emb_a.float() - emb_b.float()).square().sum(1).add(1e-12).sqrt()   # (P,)
    return torch.where(same, F.relu(d - pos_margin), F.relu(neg_margin - d)).mean()


def pair_latents(z: torch.Tensor, layout: ControlLayout, gen: Optional[torch.Generator]):
    """`(z', same)`: in each pair (2i, 2i+1) of `z` (B even) the second latent takes the first's
    sub-space j where `same[i, j]` (each True with probability 1/2, drawn from `gen`), and the
    first's free sub-space with probability 1/2 too (not reported in `same`: it has no loss).

    Sharing the free part makes pairs that differ in attribute j's sub-space only, so pushing
    them apart asks that sub-space alone to change the attribute; with the free part never
    shared, a generator met the pull-together loss by giving every image one colour."""
    B = z.shape[0]
    if B % 2:
        raise ValueError(f"control: the G batch per rank must be even (pairs); got {B}")
    shared = torch.rand(B // 2, len(layout.names) + 1, generator=gen, device=z.device) < 0.5
    z = z.clone()
    for j, name in enumerate(layout.names + ["free"]):
        s = layout.slice(name)
        first = z[0::2, s]
        z[1::2, s] = torch.where(shared[:, j:j + 1], first, z[1::2, s])
    return z, shared[:, :-1]


class Control:
    """A run's control: the layout, the frozen attribute networks and the loss settings."""

    def __init__(self, cfg, latent_dim: int, source=None, device=None, trained: bool = True):
        spec = parse_control(cfg.control)
        self.entries = dict(spec)
        self.layout = ControlLayout([n for n, _ in spec], cfg.control_dim, latent_dim)
        self.weight, self.pos, self.neg = cfg.control_weight, cfg.control_pos_margin, \
            cfg.control_neg_margin
        self.nets = nn.ModuleDict({
            n: build_attribute_net(n, e, source, cfg.control_net_steps, cfg.seed + 17 * i, trained)
            for i, (n, e) in enumerate(spec)})
        self.nets.requires_grad_(False).eval().to(device)

    def loss(self, images: torch.Tensor, same: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted sum over attributes of `contrastive_loss` on the pairs of `images`."""
        total, stats = images.new_zeros(()).float(), {}
        for j, name in enumerate(self.layout.names):
            emb = self.nets[name](images.float())                           # (B, E)
            l = contrastive_loss(emb[0::2], emb[1::2], same[:, j], self.pos, self.neg)
            stats[f"C/{name}"] = l.item()
            total = total + self.weight * l
        return total, stats

    def state_dict(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {n: net.state_dict() for n, net in self.nets.items()}

    def load_state_dict(self, s: Dict[str, Dict[str, torch.Tensor]]) -> None:
        if sorted(s) != sorted(self.nets):
            raise ValueError(f"control: checkpoint has attribute networks {sorted(s)}; this run "
                             f"controls {sorted(self.nets)}")
        for n, sd in s.items():
            self.nets[n].load_state_dict(sd)
