"""`transgan-fast control-demo`: GAN-Control on the built-in shapes, measured against a baseline.

It trains a controllable TransGAN (the demo's 16x16 model, `--control colour,background,size`),
and the same model without the contrastive losses (the uncontrolled baseline), fits control
encoders to both (control_fit.py), and measures with attribute networks trained independently
(another data seed) from the ones used in training:
(a) control accuracy: the evaluation networks recover the requested value (accuracy for a
    class attribute, mean absolute error for a value);
(b) disentanglement: resampling one attribute's sub-space changes the predictions of the others
    (how often a class flips, the mean absolute change of a value) — less is better.
It writes `control_grid.png` (rows: one attribute swept, the rest fixed) and `control.json`.
"""
from __future__ import annotations

from typing import Optional

from .config import TrainConfig, resolve_config
from .demo import DEMO_MODEL, QUICK_MODEL

__all__ = ["CONTROL_ATTRIBUTES", "control_demo_config"]

CONTROL_ATTRIBUTES = "colour,background,size"


def control_demo_config(quick: bool = False, controlled: bool = True, kimg: Optional[float] = None,
                        seed: int = 0) -> TrainConfig:
    """The control demo's resolved TrainConfig (`controlled=False`: the uncontrolled baseline)."""
    control = dict(control=CONTROL_ATTRIBUTES, control_dim=8) if controlled else {}
    if quick:
        return resolve_config(preset="cifar10", data="shapes", resolution=16, batch=16,
                              kimg=kimg or 0.2, tick_kimg=0.1, snapshot_ticks=1, metrics="",
                              shapes_n=512, model=QUICK_MODEL, seed=seed, n_critic=1,
                              ema_kimg=1.0, control_net_steps=100, **control)
    return resolve_config(preset="cifar10", data="shapes", resolution=16, batch=32,
                          kimg=kimg or 1000.0, tick_kimg=2.0, snapshot_ticks=5, metric_n=512,
                          shapes_n=8192, model=DEMO_MODEL, seed=seed, n_critic=1, lr_g=2e-4,
                          lr_d=2e-4, ema_kimg=2.0, **control)
