"""Fraction of a class-conditional shapes checkpoint's samples recognised as their requested class.

    python scripts/class_accuracy.py runs/00000-cifar10-shapes-b32-cond [--n-per-class 256]

Trains `transgan_fast.train.shape_classifier` on shapes images of another seed than the training
data (its held-out accuracy is printed with the result), then classifies EMA samples.
"""
import argparse
import json

import torch

from transgan_fast.train.data import ShapesSource
from transgan_fast.train.sample import load_generator
from transgan_fast.train.shape_classifier import class_accuracy, train_classifier


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a ckpt-*.pt file or a run directory")
    ap.add_argument("--n-per-class", type=int, default=256, help="samples per class (256)")
    ap.add_argument("--clf-steps", type=int, default=400, help="classifier training steps (400)")
    ap.add_argument("--raw", action="store_true", help="the raw generator instead of the EMA one")
    a = ap.parse_args()
    G, path, _ = load_generator(a.checkpoint, raw=a.raw)
    state = torch.load(path, map_location="cpu", weights_only=True)
    res = G.cfg.img_size
    clf, clf_acc = train_classifier(ShapesSource(8192, res, seed=12345), steps=a.clf_steps)
    with torch.no_grad():
        out = class_accuracy(G, clf, a.n_per_class)
    out.update(checkpoint=path, step=int(state["step"]), kimg=state["images_seen"] / 1000,
               classifier_heldout_acc=clf_acc, n_per_class=a.n_per_class)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
