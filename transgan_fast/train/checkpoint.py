"""Checkpoints: everything that changes during training, written atomically, loaded safely.

A checkpoint is one `torch.save` file holding only tensors and primitive containers (dicts,
lists, tuples, numbers, strings, None), so it loads with `torch.load(weights_only=True)`: no
pickled code is ever run. It is first written to a temporary file in the same directory, flushed
and fsync'ed, then `os.replace`d onto its final name (atomic on POSIX) and the directory is
fsync'ed: a crash or SIGKILL at any point leaves either the previous checkpoints or the new one,
never a truncated `ckpt-*.pt`. Stray temporaries of a killed writer are removed by the next save.
Only the last `keep` checkpoints are kept.

`seed_rng(seed)` seeds them all; `capture_rng()` / `restore_rng()` convert the torch (CPU and every CUDA device), numpy and
python `random` generator states to and from that safe form.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "load_latest", "CheckpointError", "seed_rng", "capture_rng", "restore_rng"]

_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def seed_rng(seed: int) -> None:
    """Seed the torch (CPU and every CUDA device), numpy and python `random` global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def capture_rng() -> Dict[str, Any]:
    """All global RNG states as tensors and primitives (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of `capture_rng` (CUDA states are restored for the devices present)."""
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state.get("torch_cuda"):
        n = min(len(state["torch_cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(state["torch_cuda"][:n])
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"],
                         s["has_gauss"], s["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def list_checkpoints(run_dir: str) -> List[str]:
    """Checkpoint paths in `run_dir`, oldest first (by step in the name)."""
    if not os.path.isdir(run_dir):
        return []
    names = sorted(n for n in os.listdir(run_dir) if _NAME.match(n))
    return [os.path.join(run_dir, n) for n in names]


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest checkpoint path in `run_dir`, or None."""
    paths = list_checkpoints(run_dir)
    return paths[-1] if paths else None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str, state: Dict[str, Any], step: int, keep: int = 3) -> str:
    """Write `state` as `run_dir/ckpt-<step>.pt` atomically; keep the newest `keep`; return the path."""
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1; got {keep}")
    if not 0 <= step < 10 ** 9:
        raise ValueError(f"save_checkpoint: step must be in [0, 1e9); got {step}")
    os.makedirs(run_dir, exist_ok=True)
    for n in os.listdir(run_dir):  # leftovers of a writer that was killed
        if n.startswith(".tmp-ckpt-"):
            try:
                os.remove(os.path.join(run_dir, n))
            except OSError:
                pass
    final = os.path.join(run_dir, f"ckpt-{step:09d}.pt")
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".tmp-ckpt-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(run_dir)
    for old in list_checkpoints(run_dir)[:-keep]:
        os.remove(old)
    return final


class CheckpointError(ValueError):
    """A file that is not a readable training checkpoint (truncated, corrupt or foreign)."""


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint with `torch.load(weights_only=True)` (never unpickles code).

    Raises FileNotFoundError for a missing file and `CheckpointError` (naming the file) for one
    that cannot be read.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a pickle with code in it, ...
        if isinstance(exc, pickle.UnpicklingError):
            why = "not a torch checkpoint, or one holding pickled objects (refused: weights only)"
        elif isinstance(exc, EOFError) or not str(exc).strip():
            why = f"{type(exc).__name__}: the file ends early"
        else:
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{why}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is a torch file but not a checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    return state


def load_latest(run_dir: str, map_location="cpu"):
    """`(path, state)` of the newest loadable checkpoint in `run_dir`, or `(None, None)`.

    A file that fails to load (it cannot be one of ours, which are written atomically, but a
    disk can fail) is reported and the next older one is tried.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as exc:  # corrupt file: fall back to an older one
            warnings.warn(f"load_latest: skipping unreadable checkpoint {path}: {exc}")
    return None, None
