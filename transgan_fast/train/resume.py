"""Which checkpoint a run continues, and where: resume never deletes or mixes work.

Rules (`find_resume`):
- A run directory continues only from its newest checkpoint. Resuming from an older one (an
  explicit `ckpt-*.pt` with newer checkpoints beside it, a checkpoint file outside a run's
  `ckpt-*.pt` series, or a fallback past an unreadable newest file) starts a new run directory that records its origin in `resume.json`; both branches are
  kept, and checkpoint pruning in either never touches the other.
- A new branch killed before its first checkpoint continues from the origin in `resume.json`.
- Options that change the training itself (model, learning rates, seed, batch, loss, ...) must
  match the checkpoint's; only bookkeeping (`RESUME_FREE`) may differ. An explicit resume with
  other options is refused, naming them; `auto` skips such runs and says so (a fresh run starts
  when none matches).
- An unreadable checkpoint is reported by name and the next older one is used.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import checkpoint as ck
from .config import TrainConfig

__all__ = ["ResumePlan", "find_resume", "option_diff", "RESUME_FREE", "describe"]

# Options a resumed run may change: length and bookkeeping, not what a step computes.
RESUME_FREE = frozenset({"kimg", "tick_kimg", "snapshot_ticks", "keep_ckpt", "metrics", "metric_n",
                         "inception_weights", "device", "backend"})
RESUME_RECORD = "resume.json"


def describe(cfg: TrainConfig) -> str:
    """The run-directory suffix: preset, data name, batch (`-cond` class-conditional, `-ctrl` controlled)."""
    data = cfg.data if cfg.data.startswith("shapes") and ":" not in cfg.data else os.path.basename(os.path.normpath(cfg.data.split(":")[-1]))
    cond = ("-cond" if cfg.cond == "class" else "") + ("-ctrl" if getattr(cfg, "control", "") else "")
    return f"{cfg.preset}-{data}-b{cfg.batch}{cond}".replace(os.sep, "_")


@dataclass
class ResumePlan:
    """What `find_resume` decided. `run_dir` None: a fresh run directory is made.

    `new_branch`: continue `ckpt_path` in a new run directory (it is not its run's newest).
    `notes`: lines to log (skipped runs, unreadable files), loudly.
    """
    run_dir: Optional[str] = None
    ckpt_path: Optional[str] = None
    state: Optional[Dict[str, Any]] = None
    new_branch: bool = False
    notes: List[str] = field(default_factory=list)


def _plain(v):
    return json.loads(json.dumps(v))  # tuples -> lists, the form options.json holds


def option_diff(saved: Dict[str, Any], cfg: TrainConfig) -> List[str]:
    """`name (saved -> now)` for every option that differs and may not change on resume."""
    now = _plain(cfg.to_dict())
    saved = _plain(saved)
    return [f"{k} ({saved[k]!r} -> {now[k]!r})" for k in sorted(now)
            if k in saved and k not in RESUME_FREE and saved[k] != now[k]]


def _newest_readable(run_dir: str, notes: List[str]):
    """(path, state, newest?) of the newest loadable checkpoint in `run_dir`, or (None, None, False)."""
    paths = ck.list_checkpoints(run_dir)
    for i, path in enumerate(reversed(paths)):
        try:
            return path, ck.load_checkpoint(path), i == 0
        except ck.CheckpointError as exc:
            notes.append(f"WARNING: skipping unreadable checkpoint: {exc}")
    return None, None, False


def _branch_origin(run_dir: str) -> Optional[str]:
    rec = os.path.join(run_dir, RESUME_RECORD)
    if not os.path.isfile(rec):
        return None
    with open(rec) as f:
        return json.load(f).get("resumed_from")


def _from_dir(run_dir: str, notes: List[str]) -> ResumePlan:
    """The plan for continuing `run_dir` (None ckpt_path: nothing to continue there)."""
    path, state, newest = _newest_readable(run_dir, notes)
    if path is not None:
        return ResumePlan(run_dir, path, state, new_branch=not newest, notes=notes)
    if ck.list_checkpoints(run_dir):
        return ResumePlan(notes=notes)  # every checkpoint unreadable
    origin = _branch_origin(run_dir)  # a branch killed before its first checkpoint
    if origin:
        try:
            return ResumePlan(run_dir, origin, ck.load_checkpoint(origin), notes=notes)
        except (ck.CheckpointError, FileNotFoundError) as exc:
            notes.append(f"WARNING: {run_dir} continues {origin}, which cannot be read: {exc}")
    return ResumePlan(notes=notes)


def find_resume(resume: Optional[str], outdir: str, cfg: TrainConfig) -> ResumePlan:
    """Decide what to continue (see the module docstring); raises ValueError on a refusal.

    resume: None / "none" (fresh run), "auto" (newest run in `outdir` with a matching name and
        options), a run directory, or a checkpoint file.
    """
    notes: List[str] = []
    if not resume or resume == "none":
        return ResumePlan()
    if resume != "auto":
        if os.path.isdir(resume):
            plan = _from_dir(resume, notes)
            if plan.ckpt_path is None:
                raise FileNotFoundError(f"resume={resume!r}: no readable checkpoint in that run "
                                        f"directory" + (f" ({notes[-1]})" if notes else ""))
        elif os.path.isfile(resume):
            run_dir = os.path.dirname(os.path.abspath(resume))
            ours = [os.path.abspath(p) for p in ck.list_checkpoints(run_dir)]
            # in place only from the newest ckpt-*.pt of a run; any other file starts a new run
            in_place = bool(ours) and ours[-1] == os.path.abspath(resume)
            plan = ResumePlan(run_dir, resume, ck.load_checkpoint(resume), new_branch=not in_place)
        else:
            raise FileNotFoundError(f"resume={resume!r} is neither a run directory nor a checkpoint")
        diff = option_diff(plan.state.get("config", {}), cfg)
        if diff:
            raise ValueError(f"resume={resume!r}: that run was trained with other options: "
                             f"{', '.join(diff)}; use the same options, or --resume none for a new run")
        return plan
    if not os.path.isdir(outdir):
        return ResumePlan()
    for name in sorted(os.listdir(outdir), reverse=True):  # newest run first
        d = os.path.join(outdir, name)
        if not (os.path.isdir(d) and name.endswith("-" + describe(cfg))):
            continue
        plan = _from_dir(d, notes)
        if plan.ckpt_path is None:
            continue
        diff = option_diff(plan.state.get("config", {}), cfg)
        if diff:
            notes.append(f"resume auto: not continuing {d}: its options differ: {', '.join(diff)}")
            continue
        return plan
    return ResumePlan(notes=notes)


def write_origin(run_dir: str, ckpt_path: str, step: int) -> None:
    """Record in a new branch's run directory which checkpoint it continues."""
    tmp = os.path.join(run_dir, RESUME_RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"resumed_from": os.path.abspath(ckpt_path), "step": step}, f, indent=2)
    os.replace(tmp, os.path.join(run_dir, RESUME_RECORD))  # a kill leaves no half-written record
