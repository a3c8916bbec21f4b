"""A small CNN that recognises the class of an image (the shape kind of the built-in shapes), and
the class accuracy of a class-conditional generator measured with it.

    clf, acc = train_classifier(ShapesSource(8192, 16, seed=1), steps=400)   # held-out accuracy
    class_accuracy(G, clf, n_per_class=256)   # fraction of samples recognised as their class

The classifier is trained on labelled real images (any source with `labels`), with random flips,
and reports its accuracy on a held-out tenth of them: the measurement is only as good as that.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ShapeClassifier", "train_classifier", "class_accuracy"]


class ShapeClassifier(nn.Module):
    """Three conv stages (16, 32, 64 channels, 3x3, ReLU, 2x2 max pool after the first two),
    global average pool, linear. `forward(x)`: images `(B, 3, H, W)` in [-1, 1] -> logits `(B, K)`."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ShapeClassifier: num_classes must be >= 2; got {num_classes}")
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))                     # (B, K)


@torch.no_grad()
def _accuracy(clf: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    clf.eval()
    hits = sum(int((clf(xx).argmax(1) == yy).sum()) for xx, yy in zip(x.split(batch), y.split(batch)))
    return hits / max(1, y.numel())


def train_classifier(source, steps: int = 400, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                     holdout: float = 0.1) -> Tuple[ShapeClassifier, float]:
    """Train a `ShapeClassifier` on `source` (uint8 images with `labels`); returns
    `(classifier in eval mode, accuracy on the held-out last `holdout` fraction)`."""
    labels = getattr(source, "labels", None)
    if labels is None:
        raise ValueError(f"train_classifier: the source {getattr(source, 'name', '')!r} has no labels")
    if steps < 1 or not 0 < holdout < 1:
        raise ValueError(f"train_classifier: need steps >= 1 and 0 < holdout < 1; got "
                         f"steps={steps}, holdout={holdout}")
    n = len(source)
    n_val = max(1, int(n * holdout))
    if n - n_val < 1:
        raise ValueError(f"train_classifier: {n} images are too few to hold {n_val} out")
    x = source.get_many(list(range(n))).float() / 127.5 - 1                 # (N, 3, R, R)
    y = labels.long()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = ShapeClassifier(len(source.class_names) or int(y.max()) + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    n_train = n - n_val
    for _ in range(steps):
        clf.train()
        idx = torch.randint(n_train, (batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        loss = F.cross_entropy(clf(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval(), _accuracy(clf, x[n_train:], y[n_train:])


@torch.no_grad()
def class_accuracy(G: nn.Module, clf: nn.Module, n_per_class: int = 256, seed: int = 0,
                   device: Optional[torch.device] = None, batch: int = 128) -> Dict[str, float]:
    """Fraction of `G`'s samples that `clf` recognises as the class they were generated for.

    `G(z, y)` is a class-conditional generator; `n_per_class` latents (seeded by `seed`) per
    class. Returns `{"acc": overall, "acc/<k>": per class, "chance": 1 / K}`.
    """
    K = int(getattr(getattr(G, "cfg", None), "num_classes", 0) or 0)
    if K < 2:
        raise ValueError("class_accuracy: G must be class-conditional (cfg.num_classes >= 2)")
    device = device or next(G.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(K * n_per_class, G.latent_dim, generator=gen)
    y = torch.arange(K).repeat_interleave(n_per_class)
    G.eval()
    clf = clf.to(device).eval()
    pred = []
    for zz, yy in zip(z.split(batch), y.split(batch)):
        img = G(zz.to(device), yy.to(device)).float().clamp(-1, 1)
        pred.append(clf(img).argmax(1).cpu())
    hit = torch.cat(pred) == y
    out = {"acc": float(hit.float().mean()), "chance": 1.0 / K}
    for k in range(K):
        out[f"acc/{k}"] = float(hit[y == k].float().mean())
    return out
