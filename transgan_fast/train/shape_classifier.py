"""A small CNN that recognises the class of an image (the shape kind of the built-in shapes), and
the class accuracy of a class-conditional generator measured with it.

    clf, acc = train_classifier(ShapesSource(8192, 16, seed=1), steps=400)   # held-out accuracy
    class_accuracy(G, clf, n_per_class=256)   # fraction of samples recognised as their class

    clf, acc = train_classifier(ShapesSource(8192, 16, seed=1), unclear=True)  # + "no clear shape"
    shape_accuracy(images, clf)   # fraction recognised as a shape with probability >= 0.9

With `unclear=True` the classifier gets one more class, "no clear shape" (`UNCLEAR`), trained on
images made from the real ones (`unclear_images`): blurred, soft blobs of colour, noise, two
images of different kinds blended, and crisp flat potatoes and ovals, so that a coloured blob
does not count as a circle.

The classifier is trained on labelled real images (any source with `labels`), with random flips,
and reports its accuracy on a held-out tenth of them: the measurement is only as good as that.
With `unclear=True` every training batch is also perturbed as a person would not notice
(`mild_perturbation`: pixel noise up to std 0.2, blur up to 0.05 of the image size): without it
the classifier had learnt pixel-exact edges, and real shapes under noise of std 0.05 (3% of the
range) were no longer "a shape" for it (shape accuracy 0.94 -> 0.27; blur of half a pixel: 0.09).
The unclear kinds start well beyond that (blur from 0.09 of the size, noise from std 0.45), and
include crisp flat blobs and ovals, so that a sharp potato is not a circle.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ShapeClassifier", "train_classifier", "class_accuracy", "unclear_images",
           "mild_perturbation", "shape_accuracy", "cached_shape_classifier", "UNCLEAR"]

UNCLEAR = "no clear shape"


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
                     holdout: float = 0.1, unclear: bool = False) -> Tuple[ShapeClassifier, float]:
    """Train a `ShapeClassifier` on `source` (uint8 images with `labels`); returns
    `(classifier in eval mode, accuracy on the held-out last `holdout` fraction)`.

    unclear: add a last class, `UNCLEAR`, trained on `unclear_images` of the same images (as
        many as there are images), and train on `mild_perturbation`s of every batch, so that
        the shapes a person still recognises stay shapes; the held-out accuracy then covers
        both kinds (unperturbed).
    """
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
    k = len(source.class_names) or int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    n_train = n - n_val
    if unclear:  # the unclear copies of the train / held-out images stay on their side
        u = unclear_images(x, y, g)
        x = torch.cat([x[:n_train], u[:n_train], x[n_train:], u[n_train:]])
        y = torch.cat([y[:n_train], torch.full((n_train,), k), y[n_train:],
                       torch.full((n_val,), k)])
        n_train, k = 2 * n_train, k + 1
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = ShapeClassifier(k)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(steps):
        clf.train()
        idx = torch.randint(n_train, (batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        if unclear:
            xb = mild_perturbation(xb, g)
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


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of `x (B, 3, R, R)` with one `sigma (B,)` in pixels per image (reflect pad)."""
    B, C, R, _ = x.shape
    h = R // 2
    t = torch.arange(-h, h + 1, dtype=x.dtype)                              # (K,) K = 2h + 1
    k1 = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)                                       # (B, K)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(C, 0)          # (B*C, K, K)
    xp = F.pad(x.reshape(1, B * C, R, R), (h, h, h, h), mode="reflect")
    return F.conv2d(xp, k2[:, None], groups=B * C).view(B, C, R, R)


def mild_perturbation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`x (B, 3, R, R)` in [-1, 1] perturbed as a person would still see the same image: half of the
    images blurred (sigma up to 0.05 of the size, 0.8 pixels at 16²), then half given pixel noise
    (std up to 0.2), independently; the result clamped to [-1, 1]."""
    B, _, R, _ = x.shape
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    blur = u(B) < 0.5
    if blur.any():
        x = x.clone()
        x[blur] = _blur(x[blur], (0.01 + 0.04 * u(int(blur.sum()))) * R)
    std = torch.where(u(B) < 0.5, 0.2 * u(B), torch.zeros(B)).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def unclear_images(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One image without a clear shape per image of `x (N, 3, R, R)` in [-1, 1] (labels `y (N,)`).

    Each is, in turn: the image blurred (sigma 0.09-0.2 of its size, shapes become blobs); a soft
    blob of colour (a Gaussian bump of random size, stretch and colour over the image's border
    colour); the image under strong noise (std 0.45-0.8) or pure noise; a blend of the image
    with one of another kind; a sharp-edged irregular blob (a circle whose radius wobbles by
    20-40% around it) and a sharp ellipse stretched 1.7-2.5 times, both flat in the shape's
    colour on the image's background, so that a crisp potato or oval is not a circle.
    """
    n, _, R, _ = x.shape
    kind = torch.arange(n) % 6
    out = x.clone()
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    blur = kind == 0
    if blur.any():
        out[blur] = _blur(x[blur], (0.09 + 0.11 * u(int(blur.sum()))) * R)
    blob = kind == 1
    if blob.any():
        m = int(blob.sum())
        border = torch.cat([x[blob, :, 0], x[blob, :, -1]], 2).mean(2)      # (m, 3)
        t = (torch.arange(R, dtype=x.dtype) + 0.5) / R
        cy, cx = 0.3 + 0.4 * u(2, m, 1, 1)
        sy, sx = 0.08 + 0.2 * u(2, m, 1, 1)
        dy, dx = (t.view(1, R, 1) - cy) / sy, (t.view(1, 1, R) - cx) / sx      # (m, R, 1), (m, 1, R)
        bump = torch.exp(-0.5 * (dy ** 2 + dx ** 2))                        # (m, R, R)
        col = u(m, 3) * 1.6 - 0.6                                          # (m, 3) in [-0.6, 1]
        out[blob] = border[..., None, None] + (col - border)[..., None, None] * bump[:, None]
    noise = kind == 2
    if noise.any():
        m = int(noise.sum())
        std = (0.45 + 0.35 * u(m)).view(-1, 1, 1, 1)
        base = torch.where(u(m).view(-1, 1, 1, 1) < 0.7, x[noise], torch.zeros_like(x[noise]))
        out[noise] = base + std * torch.randn(m, 3, R, R, generator=gen)
    mix = kind == 3
    if mix.any():
        idx = mix.nonzero().flatten()
        other = torch.randint(n, (idx.numel(),), generator=gen)
        # Blend with the next image of another kind (the image itself when none exists).
        for j in range(8):
            same = y[other] == y[idx]
            other = torch.where(same, (other + 1) % n, other)
        a = (0.35 + 0.3 * u(idx.numel())).view(-1, 1, 1, 1)
        out[mix] = a * x[idx] + (1 - a) * x[other]
    sharp = kind >= 4
    if sharp.any():
        out[sharp] = _sharp_blobs(x[sharp], kind[sharp] == 5, gen)
    return out.clamp(-1, 1)


def _sharp_blobs(x: torch.Tensor, ellipse: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flat sharp-edged non-shapes in the colours of `x (m, 3, R, R)`: the background is the
    border's mean colour, the foreground the pixel farthest from it. `ellipse (m,)` bool picks a
    stretched ellipse (axis ratio 1.7-2.5, any angle); the rest are wobbly blobs, radius
    `r (1 + sum_k a_k cos(k theta + phi_k))`, k = 2..4, |a| summing to 0.2-0.4."""
    m, _, R, _ = x.shape
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    border = torch.cat([x[:, :, 0], x[:, :, -1]], 2).mean(2)                   # (m, 3)
    far = (x - border[..., None, None]).abs().sum(1).flatten(1).argmax(1)      # (m,)
    fg = x.flatten(2)[torch.arange(m), :, far]                                 # (m, 3)
    t = (torch.arange(R, dtype=x.dtype) + 0.5) / R
    cy, cx = 0.38 + 0.24 * u(2, m, 1, 1)
    r = 0.24 + 0.12 * u(m, 1, 1)
    dy, dx = t.view(1, R, 1) - cy, t.view(1, 1, R) - cx                        # (m, R, 1), (m, 1, R)
    theta = torch.atan2(dy, dx)                                                # (m, R, R)
    a = u(m, 3)
    a = a / a.sum(1, keepdim=True) * (0.2 + 0.2 * u(m, 1))                     # (m, 3)
    phi = 6.2832 * u(m, 3)
    wobble = 1 + sum(a[:, j, None, None] * torch.cos((j + 2) * theta + phi[:, j, None, None])
                     for j in range(3))
    inside = dy ** 2 + dx ** 2 < (r * wobble) ** 2
    ang = 3.1416 * u(m, 1, 1)
    ratio = 1.7 + 0.8 * u(m, 1, 1)
    along = dx * torch.cos(ang) + dy * torch.sin(ang)
    across = -dx * torch.sin(ang) + dy * torch.cos(ang)
    oval = (along / (r * ratio.sqrt())) ** 2 + (across * ratio.sqrt() / r) ** 2 < 1
    mask = torch.where(ellipse.view(-1, 1, 1), oval, inside)[:, None]          # (m, 1, R, R)
    return torch.where(mask, fg[..., None, None], border[..., None, None])


@torch.no_grad()
def shape_accuracy(images: torch.Tensor, clf: nn.Module, threshold: float = 0.9,
                   batch: int = 256, labels: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """The fraction of `images (N, 3, R, R)` in [-1, 1] that `clf` (trained with `unclear=True`)
    calls a shape, any shape, with probability at least `threshold`.

    Returns `{"shape_accuracy": that fraction, "unclear": fraction whose top class is UNCLEAR,
    "frac/<k>": fraction of confident shapes of each class k}` (the last shows mode collapse).
    With `labels (N,)` (the class each image was generated for), also `"kind_accuracy"`: the
    fraction that is a confident shape of exactly that class (`class_accuracy` is the looser
    measure: the top class, confident or not).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"shape_accuracy: threshold must be in (0, 1); got {threshold}")
    if labels is not None and tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"shape_accuracy: labels must be ({images.shape[0]},), one per image; "
                         f"got {tuple(labels.shape)}")
    clf.eval()
    with torch.no_grad():
        probs = torch.cat([F.softmax(clf(xx.float()), 1) for xx in images.split(batch)])
    k = probs.shape[1] - 1                                                   # probs (N, K+1)
    p, top = probs.max(1)
    sure = (top < k) & (p >= threshold)
    out = {"shape_accuracy": float(sure.float().mean()),
           "unclear": float((top == k).float().mean())}
    for c in range(k):
        out[f"frac/{c}"] = float((sure & (top == c)).float().mean())
    if labels is not None:
        out["kind_accuracy"] = float((sure & (top == labels.to(top.device))).float().mean())
    return out


# (steps, batch, images) of the classifier the demo uses; `quick` is for tests and smoke checks.
_CLF_RECIPE = {False: (1500, 128, 8192), True: (60, 32, 256)}
_CLF_DATA_SEED = 12345   # not the training data's seed: the classifier sees other images
_CLF_VERSION = 4         # bump when the recipe, the model or unclear_images change


def cached_shape_classifier(resolution: int, quick: bool = False, cache_dir: Optional[str] = None
                            ) -> Tuple[ShapeClassifier, Dict[str, object]]:
    """The shape classifier (with `UNCLEAR`) for `resolution`² shapes, trained once and kept.

    It is deterministic, so it is trained on first use and then loaded from `cache_dir` (default:
    `$TRANSGAN_FAST_CACHE`, else `$XDG_CACHE_HOME/transgan_fast`, else `~/.cache/transgan_fast`).
    Returns `(classifier, info)`; info holds its held-out accuracy, the file, and the seconds
    spent training it (0 when loaded).
    """
    import os
    import time
    from .data import ShapesSource
    steps, batch, n = _CLF_RECIPE[bool(quick)]
    cache_dir = cache_dir or os.environ.get("TRANSGAN_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "transgan_fast")
    path = os.path.join(cache_dir, f"shape-classifier-r{resolution}-{'quick-' if quick else ''}"
                                   f"v{_CLF_VERSION}.pt")
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        clf = ShapeClassifier(len(saved["classes"]))
        clf.load_state_dict(saved["state"])
        return clf.eval(), {"heldout_acc": saved["heldout_acc"], "file": path, "train_seconds": 0.0}
    t0 = time.time()
    clf, acc = train_classifier(ShapesSource(n, resolution, seed=_CLF_DATA_SEED), steps=steps,
                                batch=batch, unclear=True)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"state": clf.state_dict(), "heldout_acc": acc,
                "classes": ["circle", "square", "triangle", UNCLEAR]}, tmp)
    os.replace(tmp, path)  # atomic: a concurrent demo never reads half a file
    return clf, {"heldout_acc": acc, "file": path, "train_seconds": round(time.time() - t0, 1)}
