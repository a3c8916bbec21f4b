"""Convert a released TransGAN checkpoint into a package checkpoint (`transgan-fast convert`).

The result is an ordinary `ckpt-<step>.pt` in a run directory: `generate` samples from it and
`train --resume DIR` continues from it. What carries over:

- G (`gen_state_dict`), the EMA G (`avg_gen_state_dict`) and D (`dis_state_dict`), through
  `models.load_official` (every key mapped and checked);
- both Adam states (`gen_optimizer`, `dis_optimizer`) when present: the released optimizers
  index parameters in `parameters()` order, which is the order of the parameter keys in the saved
  state dict, so each moment goes to the package parameter that holds the same tensor;
- progress: `images_seen = epoch x iterations per epoch x D batch`, with the released data
  loaders' iterations per epoch on the full datasets (`RELEASED_EPOCH`); pass `images_seen` when
  the run used another dataset size. The EMA ramp-up and `--kimg` count from it.

Not carried over: the data order (a resumed run starts a new shuffle) and the RNG states.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch

from ..models import OFFICIAL_LAYOUTS
from ..models.official import official_key_map, official_to_package, read_official
from . import checkpoint as ck
from .config import resolve_config
from .loop import CKPT_FORMAT
from .runner import build_models

__all__ = ["convert_official", "RELEASED_EPOCH"]

# preset -> (training images, GPUs, global D batch per iteration, drop_last) of the released run
RELEASED_EPOCH = {
    "cifar10": (50_000, 8, 64, False),      # CIFAR-10 train
    "stl10": (105_000, 8, 32, False),       # STL-10 train+unlabeled
    "church256": (126_227, 8, 16, True),    # LSUN church_outdoor train
    "celebahq256": (30_000, 8, 16, True),   # CelebA-HQ 256 image folder
}


def _iterations_per_epoch(preset: str) -> int:
    n, gpus, batch, drop_last = RELEASED_EPOCH[preset]
    per_rank = math.ceil(n / gpus)               # DistributedSampler pads to equal shards
    b = batch // gpus
    return per_rank // b if drop_last else math.ceil(per_rank / b)


def _optimizer_state(released: Mapping[str, Any], state_dict: Mapping[str, Any], net, layout: str,
                     template: Dict[str, Any], what: str) -> Dict[str, Any]:
    """Re-index a released Adam state dict onto `net`'s parameter order."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    inv = {v: k for k, v in official_key_map(net, layout).items()}
    released_order = [k for k in sd if k in inv]        # parameters only, in parameters() order
    own_order = [n for n, _ in net.named_parameters()]
    groups = released.get("param_groups", [])
    ids = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or sorted(ids) != list(range(len(released_order))):
        raise ValueError(f"convert: {what} has {len(ids)} parameters in {len(groups)} groups; the "
                         f"released {layout!r} model has {len(released_order)} in one group")
    state = {}
    for i, s in released.get("state", {}).items():
        state[own_order.index(inv[released_order[int(i)]])] = dict(s)
    group = dict(template["param_groups"][0])
    for k in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        if k in groups[0]:
            group[k] = groups[0][k]
    return {"state": state, "param_groups": [group]}


def convert_official(checkpoint, preset: str, out_dir: str, images_seen: Optional[int] = None,
                     model: Optional[Dict[str, Any]] = None) -> str:
    """Write `out_dir/ckpt-<step>.pt` from a released checkpoint (path or dict); returns its path.

    `model`: config overrides (as `TrainConfig.model`) for a shrunken model of the same layout;
    the resumed run must pass the same ones.
    """
    if preset not in OFFICIAL_LAYOUTS:
        raise ValueError(f"convert: preset must be one of {sorted(OFFICIAL_LAYOUTS)}; got {preset!r}")
    raw = read_official(checkpoint)
    for key in ("gen_state_dict", "avg_gen_state_dict", "dis_state_dict"):
        if key not in raw:
            raise ValueError(f"convert: the checkpoint has no {key!r} (a resumable package "
                             f"checkpoint needs G, EMA G and D); its keys are {sorted(raw)}")
    cfg = resolve_config(preset=preset, model=dict(model or {}))
    G, D = build_models(cfg)
    G_ema, _ = build_models(cfg)
    g_layout, d_layout = OFFICIAL_LAYOUTS[preset]
    G.load_state_dict(official_to_package(raw["gen_state_dict"], G, g_layout, "gen_state_dict"))
    G_ema.load_state_dict(official_to_package(raw["avg_gen_state_dict"], G_ema, g_layout,
                                              "avg_gen_state_dict"))
    D.load_state_dict(official_to_package(raw["dis_state_dict"], D, d_layout, "dis_state_dict"))
    if images_seen is None:
        epoch = int(raw.get("epoch", 0))
        images_seen = epoch * _iterations_per_epoch(preset) * RELEASED_EPOCH[preset][2]
    if images_seen < 0 or images_seen % cfg.batch:
        raise ValueError(f"convert: images_seen must be a non-negative multiple of the D batch "
                         f"{cfg.batch}; got {images_seen}")
    step = images_seen // cfg.batch
    betas = (cfg.beta1, cfg.beta2)
    opts = {}
    for name, net, lr, layout, okey, skey in (
            ("opt_g", G, cfg.lr_g, g_layout, "gen_optimizer", "gen_state_dict"),
            ("opt_d", D, cfg.lr_d, d_layout, "dis_optimizer", "dis_state_dict")):
        template = torch.optim.Adam(net.parameters(), lr=lr, betas=betas).state_dict()
        opts[name] = (_optimizer_state(raw[okey], raw[skey], net, layout, template, okey)
                      if okey in raw else template)
    state = {
        "format": CKPT_FORMAT, "config": cfg.to_dict(), "step": step, "images_seen": images_seen,
        "epoch": float(raw.get("epoch", 0)), "G": G.state_dict(), "D": D.state_dict(),
        "G_ema": G_ema.state_dict(), **opts, "scaler_g": None, "scaler_d": None,
        "sampler": None, "rng": None,
        "converted_from": {"preset": preset, "epoch": int(raw.get("epoch", 0))},
    }
    return ck.save_checkpoint(out_dir, state, step, keep=1_000_000)
