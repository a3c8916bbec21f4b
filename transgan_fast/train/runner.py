"""`run_training`: a whole run from a TrainConfig — run dir, resume, ticks, snapshots, metrics.

The loop is StyleGAN's: progress is counted in images; every `tick_kimg` a line and a stats
record are written; every `snapshot_ticks` ticks (and at the end) a checkpoint, a fixed-z EMA
sample grid and the metrics. Under torchrun every rank trains; rank 0 alone logs and writes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from . import checkpoint as ck
from .config import TrainConfig
from .data import open_source
from .distributed import DistEnv, init_from_env, split_batch
from .logging import RunLogger, make_run_dir, memory_mb, save_grid, trim_records
from .loop import Trainer
from .metrics import fid_is, swd
from .resume import describe, find_resume, write_origin

__all__ = ["run_training", "build_models", "with_data_classes", "check_resolution", "RunResult",
           "describe"]

ModelFactory = Callable[[TrainConfig], Tuple[torch.nn.Module, torch.nn.Module]]


def build_models(cfg: TrainConfig):
    """`transgan_fast.models.build(preset, backend, **cfg.model)` on the training options.

    `cfg.locality` adds the official CIFAR locality schedule when the preset has none;
    `cfg.sr_weight > 0` builds the generator with its super-resolution head. JSON lists in
    `cfg.model` become tuples (the model config's field types).
    """
    from .. import models
    from ..ops import LocalitySchedule
    over = {k: _tuples(v) for k, v in cfg.model.items()}
    base = models.config(cfg.preset)
    if cfg.locality and base.locality is None and "locality" not in over:
        over["locality"] = LocalitySchedule.cifar()
    if cfg.sr_weight > 0:
        over.setdefault("sr_head", True)
    if cfg.cond == "class":
        if cfg.num_classes is None:
            raise ValueError("build_models: cond='class' needs num_classes (see with_data_classes)")
        over["num_classes"] = cfg.num_classes
    return models.build(cfg.preset, backend=cfg.backend, **over)


def with_data_classes(cfg: TrainConfig, source) -> TrainConfig:
    """`cfg` with `num_classes` taken from the data's classes when `cond="class"` leaves it None
    (the resolved value is what options.json, checkpoints and the resume check see)."""
    if cfg.cond != "class":
        return cfg
    k = len(source.class_names)
    if cfg.num_classes is None:
        return dataclasses.replace(cfg, num_classes=k)
    if cfg.num_classes < k:
        raise ValueError(f"num_classes={cfg.num_classes} is smaller than the {k} classes of "
                         f"data {cfg.data!r} ({', '.join(source.class_names[:12])})")
    return cfg


def check_resolution(cfg: TrainConfig, G: torch.nn.Module, D: torch.nn.Module) -> None:
    """Raise ValueError unless the models work on `cfg.resolution` images (models that do not
    say their image size are not checked)."""
    for net, what in ((G, "generator"), (D, "discriminator")):
        size = getattr(getattr(net, "cfg", None), "img_size", None) or getattr(net, "img_size", None)
        if isinstance(size, int) and size != cfg.resolution:
            raise ValueError(f"resolution={cfg.resolution} does not match the model: the {what} of "
                             f"preset {cfg.preset!r} (with the model overrides) works on "
                             f"{size}x{size} images; pass --resolution {size} or change the model")


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class RunResult:
    """What a finished (or planned) run reports."""
    run_dir: Optional[str]
    steps: int = 0
    kimg: float = 0.0
    seconds: float = 0.0
    metrics: List[Dict[str, float]] = field(default_factory=list)  # one dict per evaluation
    stats: List[Dict[str, float]] = field(default_factory=list)    # one dict per tick
    resumed_from: Optional[str] = None
    precision: str = ""                                             # the chosen dtype and why


def _share(obj, env: DistEnv):
    if not env.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_training(cfg: TrainConfig, outdir: str = "runs", resume: Optional[str] = "auto",
                 model_factory: Optional[ModelFactory] = None, dry_run: bool = False,
                 progress: bool = True, max_seconds: Optional[float] = None,
                 echo: bool = True) -> RunResult:
    """Train per `cfg` (resolved) into a run directory under `outdir`; see the module docstring.

    resume: "auto" (continue the newest run of the same preset/data/batch with a checkpoint),
        a run directory or checkpoint path, or None for a fresh run.
    max_seconds: stop (with a final snapshot) after this much wall time, even before `cfg.kimg`.
    """
    env = init_from_env(cfg.device)
    split_batch(cfg.batch, env.world_size, "batch")
    split_batch(cfg.g_batch, env.world_size, "g_batch")
    source = open_source(cfg.data, cfg.resolution, cfg.seed, cfg.shapes_n,
                         labeled=cfg.cond == "class")
    cfg = with_data_classes(cfg, source)
    ck.seed_rng(cfg.seed)  # model initialisation (and any global-RNG draw of a custom model)
    G, D = (model_factory or build_models)(cfg)
    check_resolution(cfg, G, D)
    plan, refusal = None, None
    if env.is_main:
        try:
            plan = find_resume(resume, outdir, cfg)
        except (ValueError, OSError) as exc:
            if not env.active:
                raise
            refusal = f"{type(exc).__name__}: {exc}"
    shared = _share(refusal or (plan.run_dir, plan.ckpt_path, plan.new_branch), env)
    if isinstance(shared, str):  # rank 0 refused: every rank stops with its reason
        raise ValueError(shared)
    run_dir, ckpt_path, new_branch = shared
    n_params = (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters()))
    if dry_run:
        plan_out = {"run_dir": run_dir if run_dir and not new_branch
                    else make_run_dir(outdir, describe(cfg), create=False),
                    "resume_from": ckpt_path, "world_size": env.world_size, "device": str(env.device),
                    "per_rank_batch": cfg.batch // env.world_size, "dataset": f"{cfg.data} "
                    f"({len(source)} images, {len(source.skipped)} skipped)",
                    "steps": int(cfg.kimg * 1000 // cfg.batch), "G_params": n_params[0],
                    "D_params": n_params[1], "options": cfg.to_dict()}
        for line in (plan.notes if plan else []):
            print(line)
        print(json.dumps(plan_out, indent=2))
        return RunResult(run_dir=None)
    origin_dir = run_dir
    if env.is_main and (run_dir is None or new_branch):
        run_dir = make_run_dir(outdir, describe(cfg))
        if new_branch:
            write_origin(run_dir, ckpt_path, int(plan.state["step"]))
    run_dir = _share(run_dir, env)
    state = None
    if ckpt_path:
        state = plan.state if env.is_main else ck.load_checkpoint(ckpt_path)
    continuing = state is not None and not new_branch
    if continuing and env.is_main:  # ticks after the checkpoint will be run (and logged) again
        trim_records(run_dir, int(state["step"]))
    log = RunLogger(run_dir, enabled=env.is_main, echo=echo,
                    purge_step=int(state["images_seen"]) + 1 if continuing else None)
    for line in (plan.notes if plan else []):
        log.log(line)
    trainer = Trainer(cfg, G, D, source, env)
    result = RunResult(run_dir=run_dir, resumed_from=ckpt_path,
                       precision=f"{trainer.amp_dtype or torch.float32}: {trainer.precision_reason}")
    log.write_options(cfg.to_dict())
    if state is not None:
        trainer.load_state_dict(state)
        saved_world = len(state.get("rng_ranks") or [state["rng"]])
        if saved_world != env.world_size:
            log.log(f"WARNING: the checkpoint holds RNG states of {saved_world} ranks; this run "
                    f"has {env.world_size}: not a bit-exact continuation")
        log.log(f"Resumed from {ckpt_path} at step {trainer.step_idx}, "
                f"kimg {trainer.images_seen / 1000:.1f}"
                + (f" in a new run directory (the checkpoint is older than {origin_dir}'s "
                   f"newest; that branch is kept as it is)" if new_branch else ""))
    log.log(f"Run {run_dir}: G {n_params[0] / 1e6:.2f} M, D {n_params[1] / 1e6:.2f} M params; "
            f"data {cfg.data}: {len(source)} images ({len(source.skipped)} unreadable skipped); "
            f"world {env.world_size} on {env.device}; precision {trainer.amp_dtype or 'float32'} ({trainer.precision_reason})")
    for name, why in source.skipped[:10]:
        log.log(f"  skipped {name}: {why}")

    z_fixed = torch.randn(64, G.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 123))
    reals = source.get_many(list(range(min(cfg.metric_n, len(source))))).float() / 127.5 - 1
    if env.is_main and not os.path.exists(os.path.join(run_dir, "reals.png")):
        save_grid(reals[:64], os.path.join(run_dir, "reals.png"))
    rng_devices = [env.device.index or 0] if env.device.type == "cuda" else []

    def snapshot(final: bool):
        kimg = trainer.images_seen / 1000
        state = trainer.state_dict()  # on every rank: it gathers each rank's RNG states
        if not env.is_main:
            return
        ck.save_checkpoint(run_dir, state, trainer.step_idx, cfg.keep_ckpt)
        # Sampling and metrics must not move the training's random streams (global RNGs included).
        with torch.random.fork_rng(devices=rng_devices):
            save_grid(trainer.sample(z_fixed),
                      os.path.join(run_dir, f"fakes{int(round(kimg * 1000)):09d}.png"))
            values = evaluate(trainer, cfg, reals)
        if values:
            log.metric("quality", trainer.step_idx, kimg, values)
            result.metrics.append({"kimg": kimg, **values})
            log.log("  metrics: " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))

    total = int(cfg.kimg * 1000)
    bar = None
    if progress and env.is_main:
        from tqdm import tqdm
        bar = log.bar = tqdm(total=total, initial=trainer.images_seen, unit="img", dynamic_ncols=True,
                             leave=False)
    t0 = tick_t = time.time()
    tick_start, tick_idx, acc = trainer.images_seen, 0, {}
    if not ckpt_path and env.is_main:
        with torch.random.fork_rng(devices=rng_devices):
            values = evaluate(trainer, cfg, reals)
        if values:
            log.metric("quality", 0, 0.0, values)
            result.metrics.append({"kimg": 0.0, **values})
            log.log("  initial metrics: " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    while trainer.images_seen < total:
        s = trainer.step()
        for k, v in s.items():
            acc.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(cfg.batch)
        out_of_time = max_seconds is not None and time.time() - t0 >= max_seconds
        out_of_time = bool(_share(out_of_time, env))
        done = trainer.images_seen >= total or out_of_time
        if trainer.images_seen - tick_start >= cfg.tick_kimg * 1000 or done:
            now = time.time()
            kimg = trainer.images_seen / 1000
            rec = {k: sum(v) / len(v) for k, v in acc.items()}
            rec["sec_per_kimg"] = (now - tick_t) / max((trainer.images_seen - tick_start) / 1000, 1e-9)
            rec.update(memory_mb(env.device))
            log.stats(trainer.step_idx, kimg, rec)
            result.stats.append({"kimg": kimg, **rec})
            log.log(f"tick {tick_idx:<4d} step {trainer.step_idx:<7d} kimg {kimg:<8.2f} "
                    f"sec/kimg {rec['sec_per_kimg']:<7.2f} D {rec.get('D/loss', float('nan')):+.4f} "
                    + (f"G {rec['G/loss']:+.4f} " if "G/loss" in rec else "G -       ")
                    + " ".join(f"{k} {v:.0f}" for k, v in rec.items() if k.startswith("mem/")))
            tick_idx += 1
            tick_start, tick_t, acc = trainer.images_seen, now, {}
            if done or tick_idx % cfg.snapshot_ticks == 0:
                snapshot(done)
        if done:
            break
    result.steps, result.kimg, result.seconds = trainer.step_idx, trainer.images_seen / 1000, time.time() - t0
    log.log(f"Done: {result.steps} steps, {result.kimg:.2f} kimg in {result.seconds:.1f} s")
    log.close()
    return result


def evaluate(trainer: Trainer, cfg: TrainConfig, reals: torch.Tensor) -> Dict[str, float]:
    """The configured metrics (`cfg.metrics`) of EMA samples against `reals`."""
    names = [m.strip() for m in cfg.metrics.split(",") if m.strip()]
    if not names:
        return {}
    n = reals.shape[0]
    z = torch.randn(n, trainer.G.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 7))
    fakes = trainer.sample(z)
    out: Dict[str, float] = {}
    if "swd" in names:
        out.update(swd(reals, fakes))
    if "fid" in names or "is" in names:
        out.update(fid_is(fakes, reals, cfg.inception_weights, fid="fid" in names,
                          isc="is" in names, device=str(trainer.env.device)))
    unknown = set(names) - {"swd", "fid", "is"}
    if unknown:
        raise ValueError(f"metrics: unknown names {sorted(unknown)}; expected swd, fid, is")
    return out
