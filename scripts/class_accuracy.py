"""Class accuracy (conditional) and shape accuracy (any) of a shapes checkpoint's samples.

    python scripts/class_accuracy.py runs/00000-cifar10-shapes-b32-cond [--n-per-class 256]
    python scripts/class_accuracy.py runs/00001-cifar10-shapes-b32 --n 512   # unconditional

For a class-conditional checkpoint: trains `transgan_fast.train.shape_classifier` on shapes
images of another seed than the training data (its held-out accuracy is printed with the result),
then classifies EMA samples. For every checkpoint: `shape_accuracy`, the fraction of EMA samples
the demo's classifier (with its "no clear shape" class, cached once trained) calls a shape with
probability >= 0.9, and the same on real images.
"""
import argparse
import json

import torch

from transgan_fast.train.data import ShapesSource
from transgan_fast.train.sample import load_generator
from transgan_fast.train.shape_classifier import (cached_shape_classifier, class_accuracy,
                                                  shape_accuracy, train_classifier)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a ckpt-*.pt file or a run directory")
    ap.add_argument("--n-per-class", type=int, default=256, help="samples per class (256)")
    ap.add_argument("--n", type=int, default=512, help="samples for shape_accuracy (512)")
    ap.add_argument("--clf-steps", type=int, default=400, help="classifier training steps (400)")
    ap.add_argument("--raw", action="store_true", help="the raw generator instead of the EMA one")
    a = ap.parse_args()
    G, path, _ = load_generator(a.checkpoint, raw=a.raw)
    state = torch.load(path, map_location="cpu", weights_only=True)
    res = G.cfg.img_size
    conditional = int(getattr(G.cfg, "num_classes", 0) or 0) >= 2
    out = {}
    if conditional:
        clf, clf_acc = train_classifier(ShapesSource(8192, res, seed=12345), steps=a.clf_steps)
        with torch.no_grad():
            out = class_accuracy(G, clf, a.n_per_class)
        out.update(classifier_heldout_acc=clf_acc, n_per_class=a.n_per_class)
    clf, info = cached_shape_classifier(res)
    z = torch.randn(a.n, G.latent_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = [torch.arange(len(zz)) % G.cfg.num_classes for zz in z.split(128)] if conditional \
            else [None] * len(z.split(128))
        fakes = torch.cat([(G(zz, yy) if conditional else G(zz)).float().clamp(-1, 1)
                           for zz, yy in zip(z.split(128), y)])
    reals = ShapesSource(a.n, res, seed=99).images.float() / 127.5 - 1
    out.update({"samples": shape_accuracy(fakes, clf), "reals": shape_accuracy(reals, clf),
                "shape_classifier": info, "checkpoint": path, "step": int(state["step"]),
                "kimg": state["images_seen"] / 1000})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
