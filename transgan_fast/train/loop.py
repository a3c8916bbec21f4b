"""The training step: WGAN-GP (or hinge / NS) updates of D and G, EMA, and the trainer state.

`Trainer` owns the networks, optimizers, EMA, data loader and every random stream; `step()` runs
one D update and, every `n_critic` steps starting at step 0, one G update. `state_dict()` holds
everything that changes, so `load_state_dict()` continues a run bit-exactly.

Randomness: z, the penalty's α and the data flips are drawn for the whole global batch from a
"shared" generator reseeded from (seed, step) — identical on every rank, each rank takes its
slice — DiffAugment draws from a generator reseeded from (seed, rank, step), and the attention
noise of G and D (`nn.noise_source`) from one reseeded from (seed, rank, step) too. Reseeding per
step makes the streams independent of how a run was split by resumes, and of anything else that
draws random numbers between steps (snapshot sampling uses generators of its own). The global
RNG states of every rank are still saved and restored, for models that draw from them.

Class-conditional runs (`cfg.cond == "class"`): the D step generates its fakes for the classes of
the real batch (so real and fake class frequencies match and every penalty interpolate is scored
with one class), and D is called with the labels in all its terms, the penalty included; the G
step draws its classes uniformly from the shared generator, after its latents.

Controlled runs (`cfg.control`, control.py): the G step pairs its latents (sharing sub-spaces
drawn from the shared generator, after the latents) and adds the contrastive loss of the frozen
attribute networks, whose weights the checkpoint holds.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..nn.attention import noise_source
from .augment import DiffAugment
from .checkpoint import capture_rng, restore_rng
from .config import TrainConfig
from .data import BatchLoader
from .distributed import (DistEnv, all_gather_object, all_reduce_grads, broadcast_module,
                          global_mean, split_batch)
from .ema import EMA
from .losses import discriminator_loss, generator_loss
from .precision import choose_precision, pick_precision

__all__ = ["Trainer", "pick_precision"]

CKPT_FORMAT = 1
_NOISE_STREAM = 1 << 20  # stream ids: 0 shared, 1 + rank DiffAugment, _NOISE_STREAM + rank noise
_SAMPLE_STREAM = 1 << 21  # snapshot / metric sampling noise


def _generate(G: torch.nn.Module, z: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """`G(z)`, or `G(z, y)` for class labels `y` (unconditional generators never see a `y`)."""
    return G(z) if y is None else G(z, y)


def _num_classes(cfg: TrainConfig, source) -> int:
    """The number of classes of a `cond="class"` run (0 otherwise), checked against the data."""
    if cfg.cond != "class":
        return 0
    if cfg.num_classes is None:
        raise ValueError("cond='class' needs num_classes (run_training takes it from the data)")
    labels = getattr(source, "labels", None)
    if labels is None:
        raise ValueError(f"cond='class': the data source {getattr(source, 'name', '')!r} has no "
                         f"class labels")
    if int(labels.max()) >= cfg.num_classes:
        raise ValueError(f"num_classes={cfg.num_classes} is too small: the data has labels up "
                         f"to {int(labels.max())}")
    return int(cfg.num_classes)


def _seed_of(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:  # FNV-style mix: distinct (seed, stream, step) give unrelated seeds
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class Trainer:
    """One TransGAN training run's state and step.

    Args:
        cfg: a resolved TrainConfig.
        G, D: generator (`.latent_dim`, optional `.set_progress(p)`, and `.reconstruct(x)` for
            the v1 super-resolution loss) and discriminator (`D(x, augment=callable)`).
        source: an image source from `data.open_source`.
        env: the data-parallel environment (single process by default).
    """

    def __init__(self, cfg: TrainConfig, G: torch.nn.Module, D: torch.nn.Module, source,
                 env: Optional[DistEnv] = None):
        self.cfg, self.env = cfg, env or DistEnv()
        dev = self.env.device
        self.G, self.D = G.to(dev).train(), D.to(dev).train()
        self.num_classes = _num_classes(cfg, source)
        broadcast_module(self.G, self.env)
        broadcast_module(self.D, self.env)
        self.batch_local = split_batch(cfg.batch, self.env.world_size, "batch")
        self.g_batch_local = split_batch(cfg.g_batch, self.env.world_size, "g_batch")
        for b, a, what in ((self.batch_local, cfg.accum_d, "accum_d"),
                           (self.g_batch_local, cfg.accum_g, "accum_g")):
            if b % a:
                raise ValueError(f"{what}={a} must divide the per-rank batch {b}")
        if cfg.control and self.g_batch_local % (2 * cfg.accum_g):
            raise ValueError(f"control: the per-rank G batch {self.g_batch_local} must split into "
                             f"pairs in each of accum_g={cfg.accum_g} rounds")
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.ema = EMA(self.G, cfg.ema_kimg, cfg.ema_rampup, cfg.ema_beta)
        self.loader = BatchLoader(source, cfg.seed, cfg.flip, self.env.rank, self.env.world_size)
        self.amp_dtype, self.precision_reason = choose_precision(cfg.precision, dev)
        fp16 = self.amp_dtype == torch.float16  # float16's range needs loss scaling
        self.scaler_g = torch.amp.GradScaler(dev.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(dev.type, enabled=fp16)
        self.gen_shared = torch.Generator(device=dev)
        self.gen_aug = torch.Generator(device=dev)
        self.gen_noise = torch.Generator(device=dev)
        self.augment = DiffAugment(cfg.diffaug, self.gen_aug) if cfg.diffaug else None
        self.control = None
        if cfg.control:
            from .control import Control
            self.control = Control(cfg, self.G.latent_dim, source, dev)
        self.step_idx, self.images_seen = 0, 0
        self.last_stats: Dict[str, float] = {}

    # ---- helpers -------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    @property
    def epoch(self) -> float:
        """Training progress in epochs of the dataset (the unit of TransGAN's schedules)."""
        return self.images_seen / len(self.loader.source)

    def _latents(self, global_n: int, local: bool = True) -> torch.Tensor:
        """Latents for the whole global batch: this rank's slice (`local=False`: all of them)."""
        z = torch.randn(global_n, self.G.latent_dim, generator=self.gen_shared,
                        device=self.env.device)
        if not local:
            return z
        per = global_n // self.env.world_size
        return z[self.env.rank * per:(self.env.rank + 1) * per]

    def _labels(self, global_n: int) -> Optional[torch.Tensor]:
        """Uniform class labels for the whole global batch (this rank's slice); None if unconditional."""
        if not self.num_classes:
            return None
        y = torch.randint(self.num_classes, (global_n,), generator=self.gen_shared,
                          device=self.env.device)
        per = global_n // self.env.world_size
        return y[self.env.rank * per:(self.env.rank + 1) * per]

    def _set_progress(self):
        """Hand the training progress (epochs) to the generators' locality schedules, if any."""
        for g in (self.G, self.ema.module):
            if hasattr(g, "set_progress"):
                g.set_progress(self.epoch)
            elif self.cfg.locality:
                raise ValueError("locality=True needs a generator with set_progress(progress)")

    def _decay_lr(self):
        """The official `--lr_decay`: each rate falls linearly from its value at `lr_decay_start`
        of the run (the official code: 0) to 0 at the run's last image (a function of the images
        seen, so a resumed run agrees)."""
        done, start = self.images_seen / (self.cfg.kimg * 1000), self.cfg.lr_decay_start
        left = min(1.0, max(0.0, (1.0 - done) / (1.0 - start)))
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * left

    def _optimizer_step(self, net, opt, scaler):
        all_reduce_grads(net.parameters(), self.env)
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip) \
            if self.cfg.grad_clip > 0 else torch.tensor(float("nan"))
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    # ---- the step --------------------------------------------------------------------------
    def step(self) -> Dict[str, float]:
        """One D update (+ one G update when `step % n_critic == 0`); returns the stats."""
        cfg, env = self.cfg, self.env
        self.gen_shared.manual_seed(_seed_of(cfg.seed, 0, self.step_idx))
        self.gen_aug.manual_seed(_seed_of(cfg.seed, 1 + env.rank, self.step_idx))
        self.gen_noise.manual_seed(_seed_of(cfg.seed, _NOISE_STREAM + env.rank, self.step_idx))
        self._set_progress()
        if cfg.lr_decay:
            self._decay_lr()
        with noise_source(self.gen_noise):
            stats = self._step()
        if env.active:  # log the whole global batch's losses, not this rank's slice
            keys = sorted(stats)
            mean = global_mean(torch.tensor([stats[k] for k in keys], dtype=torch.float64,
                                            device=env.device), env)
            stats = dict(zip(keys, mean.tolist()))
        self.step_idx += 1
        self.images_seen += cfg.batch
        self.last_stats = stats
        return stats

    def _step(self) -> Dict[str, float]:
        cfg, env = self.cfg, self.env
        stats: Dict[str, float] = {}

        # D step: real batch, fakes from fresh z, per-sample alpha for the penalty.
        y = None
        if self.num_classes:
            real, y = self.loader.next(cfg.batch, self.gen_shared, env.device, labels=True)
        else:
            real = self.loader.next(cfg.batch, self.gen_shared, env.device)
        z = self._latents(cfg.batch)
        alpha = torch.rand(cfg.batch, generator=self.gen_shared, device=env.device)
        per = cfg.batch // env.world_size
        alpha = alpha[env.rank * per:(env.rank + 1) * per]
        self.D.requires_grad_(True)
        # Lazy R1 (StyleGAN2): the penalty on every r1_every-th D step, weighted r1_every times.
        r1_gamma = cfg.r1_gamma * cfg.r1_every if self.step_idx % cfg.r1_every == 0 else 0.0
        ys = y.chunk(cfg.accum_d) if y is not None else [None] * cfg.accum_d
        for r, zz, aa, yy in zip(real.chunk(cfg.accum_d), z.chunk(cfg.accum_d),
                                 alpha.chunk(cfg.accum_d), ys):
            with torch.no_grad(), self.autocast():
                fake = _generate(self.G, zz, yy)
            with self.autocast():
                loss, s = discriminator_loss(
                    cfg.loss, self.D, r, fake.float(), self.augment, aa, cfg.gp_weight, cfg.drift,
                    global_mean=lambda t: global_mean(t, env),
                    grad_scale=self.scaler_d.get_scale() if self.scaler_d.is_enabled() else 1.0,
                    labels=yy, r1_gamma=r1_gamma)
            self.scaler_d.scale(loss / cfg.accum_d).backward()
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / cfg.accum_d
        stats["D/grad_norm"] = self._optimizer_step(self.D, self.opt_d, self.scaler_d)

        # G step every n_critic D steps, including step 0.
        if self.step_idx % cfg.n_critic == 0:
            self.D.requires_grad_(False)
            zg = self._latents(cfg.g_batch, local=self.control is None)
            yg = self._labels(cfg.g_batch)
            same = None
            if self.control is not None:  # pairs of the global batch, then this rank's slice
                from .control import pair_latents
                zg, same = pair_latents(zg, self.control.layout, self.gen_shared)
                per = cfg.g_batch // env.world_size
                zg = zg[env.rank * per:(env.rank + 1) * per]
                same = same[env.rank * per // 2:(env.rank + 1) * per // 2].chunk(cfg.accum_g)
            ygs = yg.chunk(cfg.accum_g) if yg is not None else [None] * cfg.accum_g
            sr_on = cfg.sr_weight > 0 and self.epoch < cfg.sr_until_epoch
            reals = real.chunk(cfg.accum_g)
            for i, (zz, yy) in enumerate(zip(zg.chunk(cfg.accum_g), ygs)):
                with self.autocast():
                    kw = {} if yy is None else {"y": yy}
                    fake = _generate(self.G, zz, yy)
                    d_fake = self.D(fake, augment=self.augment, **kw)
                    loss = generator_loss(cfg.loss, d_fake)
                    stats["G/loss"] = stats.get("G/loss", 0.0) + loss.item() / cfg.accum_g
                    if same is not None and self.images_seen >= cfg.control_start * cfg.kimg * 1000:
                        closs, cs = self.control.loss(fake, same[i])
                        loss = loss + closs
                        for k, v in cs.items():
                            stats[k] = stats.get(k, 0.0) + v / cfg.accum_g
                    if sr_on:
                        sr = self._sr_loss(reals[i % len(reals)])
                        loss = loss + cfg.sr_weight * sr
                        stats["G/sr"] = stats.get("G/sr", 0.0) + sr.item() / cfg.accum_g
                self.scaler_g.scale(loss / cfg.accum_g).backward()
            stats["G/grad_norm"] = self._optimizer_step(self.G, self.opt_g, self.scaler_g)
            # The released rule counts the D batch of one iteration (dis_batch_size x world
            # size; 64 for CIFAR-10), not the G batch: beta = 0.5^(64 / ema_nimg).
            stats["G/ema_beta"] = self.ema.update(self.G, cfg.batch // cfg.accum_d,
                                                  self.images_seen)
            self.D.requires_grad_(True)
        return stats

    def _sr_loss(self, real: torch.Tensor) -> torch.Tensor:
        """v1 co-training: `MSE(G.reconstruct(x), x)`; G rebuilds x from its low-resolution version."""
        if not hasattr(self.G, "reconstruct"):
            raise ValueError("sr_weight > 0 needs a generator with reconstruct(x) (models built "
                             "with sr_head=True)")
        return F.mse_loss(self.G.reconstruct(real).float(), real)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, ema: bool = True, batch: int = 64,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images for latents `z` from the EMA (or raw) generator, clamped to [-1, 1], float32 CPU.

        A class-conditional model generates class `labels[i]` for `z[i]`; by default the classes
        cycle, `i % num_classes`.

        Attention noise comes from a generator of its own, seeded from `cfg.seed`: the same `z`
        gives the same images at every call, and the training streams are left untouched.
        """
        g = self.ema.module if ema else self.G
        gen = torch.Generator(device=self.env.device)
        gen.manual_seed(_seed_of(self.cfg.seed, _SAMPLE_STREAM))
        if self.num_classes and labels is None:
            labels = torch.arange(z.shape[0]) % self.num_classes
        ys = labels.split(batch) if labels is not None else [None] * len(z.split(batch))
        out = []
        with noise_source(gen):
            for zz, yy in zip(z.split(batch), ys):
                with self.autocast():
                    yy = None if yy is None else yy.to(self.env.device)
                    out.append(_generate(g, zz.to(self.env.device), yy).float().clamp(-1, 1).cpu())
        return torch.cat(out)

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything that changes during training (tensors and primitives only).

        Under torchrun every rank must call it (it gathers each rank's global RNG states).
        """
        rng = all_gather_object(capture_rng(), self.env)
        return {
            "format": CKPT_FORMAT, "config": self.cfg.to_dict(),
            "step": self.step_idx, "images_seen": self.images_seen, "epoch": self.epoch,
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.ema.module.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "sampler": self.loader.sampler.state_dict(), "rng": rng[0], "rng_ranks": rng,
            **({"control": self.control.state_dict()} if self.control is not None else {}),
        }

    def load_state_dict(self, s: Dict[str, Any], restore_global_rng: bool = True) -> None:
        """Continue from a `state_dict()` (weights, optimizers, counters, sampler, RNG states)."""
        if s.get("format") != CKPT_FORMAT:
            raise ValueError(f"Trainer.load_state_dict: checkpoint format {s.get('format')!r}; "
                             f"expected {CKPT_FORMAT}")
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.ema.module.load_state_dict(s["G_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        if s.get("scaler_g"):
            self.scaler_g.load_state_dict(s["scaler_g"])
            self.scaler_d.load_state_dict(s["scaler_d"])
        if s.get("sampler") is not None:  # None: converted from a released checkpoint
            self.loader.sampler.load_state_dict(s["sampler"])
        if self.control is not None:
            if "control" not in s:
                raise ValueError("Trainer.load_state_dict: this run is controlled (control="
                                 f"{self.cfg.control!r}) but the checkpoint has no attribute networks")
            self.control.load_state_dict(s["control"])
        self.step_idx, self.images_seen = int(s["step"]), int(s["images_seen"])
        if restore_global_rng and s.get("rng") is not None:  # None: converted from a released file
            ranks = s.get("rng_ranks") or [s["rng"]]
            # A checkpoint of another world size has no state for the extra ranks: rank 0's then.
            restore_rng(ranks[self.env.rank] if self.env.rank < len(ranks) else s["rng"])
