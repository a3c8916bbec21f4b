"""Training: config, losses, DiffAugment, EMA, data, checkpoints, metrics, run logging, DDP.

`Trainer` (loop.py) runs the steps; `run_training` (runner.py) builds a run from a TrainConfig,
with its run directory, resume, ticks, snapshots and metrics.
"""
from .augment import DiffAugment
from .checkpoint import latest_checkpoint, load_checkpoint, load_latest, save_checkpoint
from .config import PRESET_TRAINING, TrainConfig, resolve_config
from .data import open_source
from .ema import EMA, ema_beta
from .losses import discriminator_loss, generator_loss, gradient_penalty
from .loop import Trainer

__all__ = ["DiffAugment", "latest_checkpoint", "load_checkpoint", "load_latest", "save_checkpoint",
           "PRESET_TRAINING", "TrainConfig", "resolve_config", "open_source", "EMA", "ema_beta",
           "discriminator_loss", "generator_loss", "gradient_penalty", "Trainer"]
