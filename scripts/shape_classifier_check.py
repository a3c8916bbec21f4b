"""How the demo's shape classifier treats real shapes, perturbed shapes and the unclear kinds.

    python scripts/shape_classifier_check.py [--resolution 16] [--n 512]

Prints `shape_accuracy` (the fraction called a shape with probability >= 0.9) and the fraction
called "no clear shape" for: real images, real images under pixel noise and under blur of
growing strength, and each kind of `unclear_images`. The classifier is the cached one the demo
uses (trained on first use).
"""
import argparse

import torch

from transgan_fast.train.data import ShapesSource
from transgan_fast.train.shape_classifier import (_blur, cached_shape_classifier, shape_accuracy,
                                                  unclear_images)

UNCLEAR_KINDS = ("blurred", "soft blob", "strong noise", "blend", "crisp potato", "oval")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=16, help="image side (16, the demo's)")
    ap.add_argument("--n", type=int, default=512, help="real images (512)")
    a = ap.parse_args()
    clf, info = cached_shape_classifier(a.resolution)
    print(f"classifier: held-out accuracy {info['heldout_acc']:.3f} ({info['file']})")
    src = ShapesSource(a.n, a.resolution, seed=99)
    x = src.images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)

    def show(what, imgs):
        m = shape_accuracy(imgs, clf)
        print(f"  {what:<22} shape_accuracy {m['shape_accuracy']:.3f}   unclear {m['unclear']:.2f}")

    show("real", x)
    for std in (0.05, 0.1, 0.2, 0.3):
        show(f"noise std {std}", (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1))
    for sigma in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        show(f"blur {sigma} px", _blur(x, torch.full((len(x),), sigma)))
    u = unclear_images(x, src.labels.long(), g)
    for k, name in enumerate(UNCLEAR_KINDS):
        show(f"unclear: {name}", u[k::len(UNCLEAR_KINDS)])


if __name__ == "__main__":
    main()
