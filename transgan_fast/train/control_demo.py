"""`transgan-fast control-demo`: GAN-Control on the built-in shapes, measured against a baseline.

It trains a controllable TransGAN (the demo's class-conditional 16x16 model on `shapes-centred`,
`--control colour,background`) and the demo's model itself (the uncontrolled baseline), fits
control encoders to both (control_fit.py), and measures with attribute networks trained
independently (another data seed) from the ones used in training:
(a) control accuracy: the evaluation networks recover the requested value (accuracy for a
    class attribute, mean absolute error for a value);
(b) disentanglement: resampling one attribute's sub-space changes the predictions of the others
    (how often a class flips, the mean absolute change of a value) — less is better.
It writes `control_grid.png` (rows: one attribute swept, the rest fixed) and `control.json`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .config import TrainConfig, resolve_config
from .control_fit import generate, random_labels, set_latents
from .demo import DEMO_KIMG, demo_config

__all__ = ["CONTROL_ATTRIBUTES", "control_demo_config", "evaluation_nets", "measure_control",
           "measure_disentanglement", "measure_class", "control_grid", "evaluate_runs",
           "format_report", "run_control_demo", "CONTROL_KIMG", "UNCONDITIONAL_ATTRIBUTES"]

# The controlled attributes: the shape's kind is the class of the demo's class-conditional model;
# on `shapes-centred` the size varies little and the position not at all.
CONTROL_ATTRIBUTES = "colour,background"
# The unconditional variant (`--unconditional`): the demo's model without the class, on `shapes`
# (shapes of varied size and place), so the size can be controlled too.
UNCONDITIONAL_ATTRIBUTES = "colour,background,size"
# The default run length of each of the two runs (images shown to D / 1000): the demo's.
CONTROL_KIMG = DEMO_KIMG


def control_demo_config(quick: bool = False, controlled: bool = True, kimg: Optional[float] = None,
                        seed: int = 0, unconditional: bool = False) -> TrainConfig:
    """The control demo's resolved TrainConfig: the demo's (`demo.demo_config`: class-conditional,
    `shapes-centred`, rates decaying over the second half) plus `CONTROL_ATTRIBUTES` in 8 latent
    entries each; `controlled=False`: the demo's own config, the uncontrolled baseline.
    `unconditional`: the same model without the class, on `shapes`, controlling
    `UNCONDITIONAL_ATTRIBUTES`."""
    base = demo_config(quick, kimg=kimg or (None if quick else CONTROL_KIMG), seed=seed)
    if unconditional:
        model = {k: v for k, v in base.model.items() if k != "class_dim"}
        base = resolve_config(base, cond="none", num_classes=None, data="shapes", model=model)
    if not controlled:
        return base
    # The default loss weight, 1: at 3 the colour was controlled as well but the images were
    # worse (seed 1: SWD 60% of initial at 3, 29% at 1, the demo's 21%).
    names = UNCONDITIONAL_ATTRIBUTES if unconditional else CONTROL_ATTRIBUTES
    return resolve_config(base, control=names, control_dim=8, control_weight=1.0,
                          control_net_steps=100 if quick else 200)


def evaluation_nets(resolution: int = 16, seed: int = 0, steps: int = 600, n: int = 8192,
                    layout: str = "varied"):
    """Attribute networks for measuring, one per shapes attribute, trained on shapes of another
    seed than training's (the training data's `layout`, see `data.SHAPE_LAYOUTS`):
    `({name: net}, {name: held-out accuracy or mean abs. error})`."""
    from .control import train_attribute_net
    from .data import SHAPE_ATTRIBUTES, ShapesSource
    src = ShapesSource(n, resolution, seed=1000 + seed, layout=layout)
    nets, scores = {}, {}
    for i, name in enumerate(SHAPE_ATTRIBUTES):
        nets[name], scores[name] = train_attribute_net(src, name, steps=steps, seed=seed + 31 * i)
    return nets, scores


def _predict(net, img):
    out = net(img)
    return out.argmax(1) if getattr(net, "classes", None) else out[:, 0]


def _error(net, pred, want):
    """Accuracy (class attribute) or mean absolute error (value)."""
    if getattr(net, "classes", None):
        return float((pred == want).float().mean())
    return float((pred - want).abs().mean())


@torch.no_grad()
def measure_control(G, layout, encoders, nets, n: int = 512, seed: int = 0, batch: int = 128):
    """(a) per controlled attribute: `{"set": score with --set, "random": score of unset random
    samples against the same requests}`; accuracy for classes, mean absolute error for values."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for name in layout.names:
        net = nets[name]
        z = torch.randn(n, layout.latent_dim, generator=gen)
        if getattr(net, "classes", None):
            want = torch.randint(len(net.classes), (n,), generator=gen)
            inp = F.one_hot(want, len(net.classes)).float()
        else:
            want = torch.rand(n, generator=gen)
            inp = want[:, None]
        y = random_labels(G, n, gen)  # class-conditional G: the same classes for both
        zs = set_latents(z, layout, encoders, {name: inp})
        got = _predict(net, generate(G, zs, y, batch))
        free = _predict(net, generate(G, z, y, batch))
        out[name] = {"set": _error(net, got, want), "random": _error(net, free, want),
                     "metric": "accuracy" if getattr(net, "classes", None) else "mean_abs_error"}
    return out


@torch.no_grad()
def measure_disentanglement(G, layout, nets, n: int = 512, seed: int = 0, batch: int = 128):
    """(b) `{changed sub-space: {attribute: change}}`: resampling one controlled sub-space, how
    often each attribute's predicted class flips / how far its predicted value moves."""
    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(n, layout.latent_dim, generator=gen)
    y = random_labels(G, n, gen)  # class-conditional G: fixed classes, only the sub-space moves

    def preds(zz):
        imgs = generate(G, zz, y, batch)
        return {k: _predict(net, imgs) for k, net in nets.items()}

    base = preds(z)
    out = {}
    for name in layout.names:
        z2 = z.clone()
        s = layout.slice(name)
        z2[:, s] = torch.randn(n, s.stop - s.start, generator=gen)
        new = preds(z2)
        out[name] = {k: float((new[k] != base[k]).float().mean()) if getattr(nets[k], "classes", None)
                     else float((new[k] - base[k]).abs().mean()) for k in nets}
    return out


@torch.no_grad()
def measure_class(G, nets, n: int = 512, seed: int = 0, batch: int = 128) -> Optional[float]:
    """A class-conditional G of the shapes (class = the shape's kind): the fraction of `n`
    samples of uniform requested classes whose kind the evaluation network reads as requested;
    None for an unconditional G."""
    gen = torch.Generator().manual_seed(seed + 2)
    z = torch.randn(n, G.latent_dim, generator=gen)
    y = random_labels(G, n, gen)
    if y is None:
        return None
    return float((_predict(nets["kind"], generate(G, z, y, batch)) == y).float().mean())


@torch.no_grad()
def control_grid(G, layout, encoders, nets_train, path: str, cols: int = 8, seed: int = 0):
    """A PNG grid: one row per controlled attribute swept over `cols` values (classes cycle),
    every other sub-space and the free one fixed (one latent for the whole grid; a
    class-conditional G draws row i's images as class i mod its classes)."""
    from .logging import save_grid
    from .sample import num_classes_of
    z0 = torch.randn(1, layout.latent_dim, generator=torch.Generator().manual_seed(seed))
    rows = []
    for name in layout.names:
        classes = getattr(nets_train[name], "classes", None)
        if classes:
            inp = F.one_hot(torch.arange(cols) % len(classes), len(classes)).float()
        else:
            inp = torch.linspace(0, 1, cols)[:, None]
        rows.append(set_latents(z0.expand(cols, -1), layout, encoders, {name: inp}))
    k = num_classes_of(G)
    y = torch.arange(len(rows)).repeat_interleave(cols) % k if k else None
    imgs = generate(G, torch.cat(rows), y)
    if imgs.shape[-1] < 64:  # small images: enlarged (nearest) so that the grid can be seen
        imgs = F.interpolate(imgs, scale_factor=64 // imgs.shape[-1], mode="nearest")
    save_grid(imgs, path, nrow=cols)
    return path


def evaluate_runs(controlled: str, baseline: Optional[str] = None, out_dir: Optional[str] = None,
                  n: int = 512, fit_n: int = 4096, seed: int = 0, eval_steps: int = 600) -> Dict:
    """Fit control encoders to the controlled run (and the baseline run, on the same latent
    split), measure (a) and (b) with independent evaluation networks, write the grid and
    `control.json` into `out_dir` (default: the controlled run's directory); returns the dict."""
    from . import checkpoint as ck
    from .control import ControlLayout
    from .control_fit import fit_control, load_control, save_encoders
    from .sample import load_generator
    G, path, _ = load_generator(controlled)
    state = ck.load_checkpoint(path)
    layout, nets = load_control(state, G.latent_dim)
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    from .data import SHAPES_SPECS
    layout_name = SHAPES_SPECS.get(state["config"].get("data"), "varied")
    eval_nets, eval_scores = evaluation_nets(G.cfg.img_size, seed, eval_steps, layout=layout_name)
    encs = fit_control(G, nets, layout, n=fit_n, seed=seed)
    save_encoders(os.path.join(out_dir, "control.pt"), layout, encs, os.path.abspath(path))
    res = {"checkpoint": path, "step": int(state["step"]), "kimg": state["images_seen"] / 1000,
           "evaluation_nets_heldout": eval_scores,
           "control": measure_control(G, layout, encs, eval_nets, n, seed),
           "disentanglement": measure_disentanglement(G, layout, eval_nets, n, seed),
           "class_accuracy": measure_class(G, eval_nets, n, seed)}
    res["grid"] = control_grid(G, layout, encs, nets, os.path.join(out_dir, "control_grid.png"))
    if baseline:
        Gb, bpath, _ = load_generator(baseline)
        bstate = ck.load_checkpoint(bpath)
        blay = ControlLayout(layout.names, layout.dim, Gb.latent_dim)
        # the baseline has no attribute networks of its own: the controlled run's read its images
        bencs = fit_control(Gb, nets, blay, n=fit_n, seed=seed)
        res["baseline"] = {"checkpoint": bpath, "step": int(bstate["step"]),
                           "kimg": bstate["images_seen"] / 1000,
                           "control": measure_control(Gb, blay, bencs, eval_nets, n, seed),
                           "disentanglement": measure_disentanglement(Gb, blay, eval_nets, n, seed),
                           "class_accuracy": measure_class(Gb, eval_nets, n, seed)}
        res["baseline"]["grid"] = control_grid(Gb, blay, bencs, nets,
                                               os.path.join(out_dir, "control_grid_baseline.png"))
    with open(os.path.join(out_dir, "control.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


def format_report(res: Dict) -> str:
    """A few lines: per attribute, control with --set / random / baseline, and disentanglement."""
    lines = [f"controlled run: step {res['step']}, {res['kimg']:.2f} kimg"]
    base = res.get("baseline")
    for name, c in res["control"].items():
        b = base["control"][name]["set"] if base else float("nan")
        lines.append(f"  {name:<11s} {c['metric']:<15s} --set {c['set']:.3f}  random "
                     f"{c['random']:.3f}  baseline --set {b:.3f}")
    if res.get("class_accuracy") is not None:
        b = base.get("class_accuracy") if base else None
        lines.append(f"  requested class (shape kind) recognised: {res['class_accuracy']:.3f}" +
                     (f"  baseline {b:.3f}" if b is not None else ""))
    for tag, r in (("controlled", res), ("baseline", base)):
        if r is None:
            continue
        for name, row in r["disentanglement"].items():
            lines.append(f"  {tag} resample {name:<11s}: " +
                         "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return "\n".join(lines)


def run_control_demo(outdir: str = "runs", kimg: Optional[float] = None, quick: bool = False,
                     seed: int = 0, baseline: bool = True, progress: bool = True,
                     unconditional: bool = False) -> Dict:
    """Train the controllable demo model for `kimg` (default `CONTROL_KIMG`; with `baseline`, the
    uncontrolled one for as many images), then `evaluate_runs`; returns its dict (with `seconds`
    of each training run). The length is work, not time, so the result does not depend on load."""
    from .runner import run_training
    if kimg is not None and kimg <= 0:
        raise ValueError(f"control demo: kimg must be > 0; got {kimg}")
    runs = {}
    for tag in ("controlled", "baseline") if baseline else ("controlled",):
        cfg = control_demo_config(quick, controlled=tag == "controlled", kimg=kimg, seed=seed,
                                  unconditional=unconditional)
        runs[tag] = run_training(cfg, outdir, resume=None, progress=progress)
    res = evaluate_runs(runs["controlled"].run_dir,
                        runs["baseline"].run_dir if baseline else None,
                        n=64 if quick else 512, fit_n=256 if quick else 4096, seed=seed,
                        eval_steps=50 if quick else 600)
    res["seconds"] = {k: r.seconds for k, r in runs.items()}
    return res
