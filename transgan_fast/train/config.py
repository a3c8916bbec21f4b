"""`TrainConfig`: every training option, with the released TransGAN values per preset.

`resolve_config(preset, **overrides)` fills the options left as None from the preset's row of
docs/transgan.md §4 (batch sizes, n_critic, DiffAugment policy, EMA rule, resolution) and
checks the result. The resolved config is what `options.json` and checkpoints store.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional

from .augment import parse_policy
from .losses import LOSSES

__all__ = ["TrainConfig", "PRESET_TRAINING", "COND_KINDS", "resolve_config"]

COND_KINDS = ("none", "class")

# Released training settings (docs/transgan.md §4, VITA-Group/TransGAN exps/*_train.py); unnamed
# presets take the cifar10 row. G batch is 2 x D batch in every row, so it is derived from `batch`
# unless given. Run length: every launcher passes --max_iter 500000, which train_derived.py turns
# into max_iter x n_critic loader iterations of -dis_bs real images (global), so
#   cifar10 500k x 4 x 64 = 128,000 kimg; stl10 500k x 5 x 32 = 80,000 kimg;
#   church256 and celebahq256 500k x 4 x 16 = 32,000 kimg (4 iterations accumulate into one D step).
# celeba64 / celeba128 have no released launcher: they take cifar10's and church256's lengths.
PRESET_TRAINING: Dict[str, Dict[str, Any]] = {
    "cifar10": dict(resolution=32, batch=64, n_critic=4, kimg=128_000.0,
                    diffaug="translation,cutout,color", ema_rampup=0.1),
    "stl10": dict(resolution=48, batch=32, n_critic=5, kimg=80_000.0,
                  diffaug="translation,stl_erase_ratio,color", ema_rampup=0.05),
    "celeba64": dict(resolution=64, batch=64, n_critic=4, kimg=128_000.0,
                     diffaug="translation,cutout,color", ema_rampup=0.1, locality=True),
    "celeba128": dict(resolution=128, batch=64, n_critic=4, kimg=32_000.0,
                      diffaug="translation,erase_ratio,color", ema_rampup=0.1),
    "church256": dict(resolution=256, batch=64, n_critic=4, accum_d=4, accum_g=8, kimg=32_000.0,
                      diffaug="translation,erase_ratio,color", ema_beta=0.995),
    "celebahq256": dict(resolution=256, batch=64, n_critic=4, accum_d=4, accum_g=4, kimg=32_000.0,
                        diffaug="filter,translation,erase_ratio,color,hue", ema_beta=0.995),
}


@dataclass
class TrainConfig:
    """All options of a run. None means "from the preset" (see PRESET_TRAINING)."""
    preset: str = "cifar10"
    data: str = "shapes"
    resolution: Optional[int] = None
    kimg: Optional[float] = None          # run length in thousands of real images
    batch: Optional[int] = None           # global D batch (real images per D step)
    g_batch: Optional[int] = None         # global G batch (default 2 x batch)
    n_critic: Optional[int] = None        # one G step every n_critic D steps, incl. step 0
    accum_d: Optional[int] = None         # gradient-accumulation rounds per D / G step
    accum_g: Optional[int] = None
    loss: str = "wgangp-eps"
    gp_weight: float = 10.0
    drift: float = 1e-3
    r1_gamma: float = 0.0                 # R1 penalty on reals, gamma/2 * E|grad D(x)|^2 (0: off)
    r1_every: int = 1                     # lazy R1: every this many D steps, gamma x r1_every
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    lr_decay: bool = False                # rates fall linearly to 0 (official --lr_decay)
    lr_decay_start: float = 0.0           # ... from this fraction of the run on (official: 0)
    beta1: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 5.0                # gradient-norm clip (0: off)
    diffaug: Optional[str] = None         # "" disables augmentation
    ema_kimg: float = 500.0               # EMA half-life in kimg
    ema_rampup: Optional[float] = None    # half-life = min(ema_kimg, rampup * images seen)
    ema_beta: Optional[float] = None      # constant beta instead of the half-life rule
    locality: bool = False                # v1 locality-aware mask schedule (G.set_progress)
    sr_weight: float = 0.0                # v1 super-resolution co-training weight (50 in v1)
    sr_until_epoch: float = 110.0
    precision: str = "auto"               # auto | fp32 | bf16 | fp16 (see train/precision.py)
    device: str = "auto"                  # auto | cpu | cuda
    backend: str = "auto"
    model: Dict[str, Any] = field(default_factory=dict)  # overrides for models.build
    cond: str = "none"                    # none | class (class-conditional G and projection D)
    num_classes: Optional[int] = None     # with cond=class: None = the data's number of classes
    control: str = ""                     # GAN-Control attributes, "a,b,name=module:callable"
    control_dim: int = 8                  # latent entries per controlled attribute
    control_weight: float = 1.0           # weight of each attribute's contrastive loss
    control_pos_margin: float = 0.05      # shared sub-space: pulled within this distance
    control_neg_margin: float = 0.25      # different sub-space: pushed beyond this distance
    control_net_steps: int = 400          # training steps of each built-in attribute network
    control_start: float = 0.0            # fraction of the run before the contrastive losses start
    seed: int = 0
    flip: bool = True
    shapes_n: int = 8192
    tick_kimg: float = 4.0
    snapshot_ticks: int = 10              # checkpoint + sample grid every this many ticks
    keep_ckpt: int = 3
    metrics: str = "swd"                  # comma list of swd, fid, is ('' for none)
    metric_n: int = 2048                  # images per metric evaluation
    inception_weights: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown options {unknown}")
        return cls(**d)


def resolve_config(cfg: Optional[TrainConfig] = None, **overrides) -> TrainConfig:
    """Fill None options from the preset row and validate; returns a new TrainConfig."""
    d = (cfg or TrainConfig()).to_dict()
    d.update(overrides)
    row = PRESET_TRAINING.get(d["preset"], PRESET_TRAINING["cifar10"])
    for k, v in row.items():
        if d.get(k) is None or (k == "locality" and not d[k]):
            d[k] = v
    for k, v in dict(batch=64, n_critic=4, accum_d=1, accum_g=1, diffaug="").items():
        if d.get(k) is None:
            d[k] = v
    if d["g_batch"] is None:
        d["g_batch"] = 2 * d["batch"]
    c = TrainConfig.from_dict(d)
    if c.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {c.loss!r}")
    if c.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16; got {c.precision!r}")
    for k in ("batch", "g_batch", "n_critic", "accum_d", "accum_g", "resolution", "keep_ckpt",
              "snapshot_ticks", "r1_every"):
        if int(getattr(c, k)) < 1:
            raise ValueError(f"{k} must be >= 1; got {getattr(c, k)}")
    if c.batch % c.accum_d or c.g_batch % c.accum_g:
        raise ValueError(f"batch={c.batch} must divide by accum_d={c.accum_d} and "
                         f"g_batch={c.g_batch} by accum_g={c.accum_g}")
    if c.r1_gamma < 0:
        raise ValueError(f"r1_gamma must be >= 0; got {c.r1_gamma}")
    if not 0 <= c.lr_decay_start < 1:
        raise ValueError(f"lr_decay_start must be in [0, 1); got {c.lr_decay_start}")
    if c.kimg <= 0 or c.tick_kimg <= 0:
        raise ValueError(f"kimg and tick_kimg must be > 0; got {c.kimg}, {c.tick_kimg}")
    if c.cond not in COND_KINDS:
        raise ValueError(f"cond must be one of {COND_KINDS}; got {c.cond!r}")
    if c.cond == "none" and (c.num_classes is not None or "num_classes" in c.model):
        raise ValueError("num_classes is for class-conditional training; add --cond class")
    if c.num_classes is not None and c.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {c.num_classes}")
    if c.control:
        from .control import parse_control
        parse_control(c.control)
        if c.control_dim < 1 or c.control_net_steps < 1:
            raise ValueError(f"control_dim and control_net_steps must be >= 1; got "
                             f"{c.control_dim}, {c.control_net_steps}")
        if not 0 <= c.control_start < 1:
            raise ValueError(f"control_start must be in [0, 1); got {c.control_start}")
        if c.control_weight < 0 or not 0 <= c.control_pos_margin < c.control_neg_margin:
            raise ValueError(f"control: need control_weight >= 0 and 0 <= control_pos_margin < "
                             f"control_neg_margin; got {c.control_weight}, {c.control_pos_margin}, "
                             f"{c.control_neg_margin}")
        if c.g_batch % 2 or c.g_batch % (2 * c.accum_g):
            raise ValueError(f"control: g_batch={c.g_batch} must split into pairs in each of "
                             f"accum_g={c.accum_g} rounds (a multiple of {2 * c.accum_g})")
    parse_policy(c.diffaug)
    return c
