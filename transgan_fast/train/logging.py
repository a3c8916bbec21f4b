"""Run directories and run logging, StyleGAN-style.

`runs/00003-cifar10-shapes-b64/` holds `options.json` (the resolved config), `log.txt` (every
printed line), `stats.jsonl` (one JSON object per tick), `metric-swd.jsonl` (one per
evaluation), TensorBoard events, `reals.png` and `fakes<kimg>.png` (fixed-z EMA samples), and the
checkpoints. Only rank 0 writes; other ranks get a logger that does nothing.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
from typing import Dict, Optional

import numpy as np
import torch

__all__ = ["make_run_dir", "RunLogger", "save_grid", "memory_mb", "trim_records"]


def make_run_dir(outdir: str, desc: str, create: bool = True) -> str:
    """`outdir/<next id:05d>-<desc>`; the id is one past the largest existing one."""
    ids = []
    if os.path.isdir(outdir):
        for n in os.listdir(outdir):
            m = re.match(r"^(\d+)-", n)
            if m and os.path.isdir(os.path.join(outdir, n)):
                ids.append(int(m.group(1)))
    path = os.path.join(outdir, f"{max(ids, default=-1) + 1:05d}-{desc}")
    if create:
        os.makedirs(path, exist_ok=False)
    return path


def trim_records(run_dir: str, step: int) -> None:
    """Drop the `stats.jsonl` / `metric-*.jsonl` records after `step` (a resume re-runs them)."""
    for name in os.listdir(run_dir):
        if not (name == "stats.jsonl" or (name.startswith("metric-") and name.endswith(".jsonl"))):
            continue
        path = os.path.join(run_dir, name)
        with open(path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a kill
        if len(keep) != len(lines):
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, path)


def save_grid(images: torch.Tensor, path: str, nrow: Optional[int] = None) -> str:
    """Write `(N, 3, H, W)` images in [-1, 1] as one PNG grid (`nrow` per row; default square)."""
    from PIL import Image
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"save_grid: images must be (N, 3, H, W); got {tuple(images.shape)}")
    N, _, H, W = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(N))))
    rows = int(math.ceil(N / nrow))
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    grid = torch.zeros(3, rows * H, nrow * W, dtype=torch.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = u8[i]
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)  # (H, W, 3)
    return path


def memory_mb(device: torch.device) -> Dict[str, float]:
    """Peak memory: CUDA allocated on GPU runs, process max RSS on CPU runs."""
    if device.type == "cuda":
        return {"mem/gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mem/cpu_rss_mb": rss_kb / 1024}


class RunLogger:
    """Text log, stats.jsonl, metric jsonl and TensorBoard for one run (rank 0 only)."""

    def __init__(self, run_dir: Optional[str], enabled: bool = True, tensorboard: bool = True,
                 echo: bool = True, purge_step: Optional[int] = None):
        """`purge_step`: hide TensorBoard events from this global step (images seen) on, which a
        resumed run writes again."""
        self.run_dir, self.enabled, self.echo = run_dir, enabled and run_dir is not None, echo
        self.tb = None
        self.bar = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._log = open(os.path.join(run_dir, "log.txt"), "a")
        self._stats = open(os.path.join(run_dir, "stats.jsonl"), "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(run_dir, purge_step=purge_step)
            except ImportError as exc:
                self.log(f"TensorBoard disabled: {exc}")

    def log(self, line: str) -> None:
        if not self.enabled:
            return
        if self.echo:
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, file=sys.stdout, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def write_options(self, options: dict) -> None:
        if self.enabled:
            with open(os.path.join(self.run_dir, "options.json"), "w") as f:
                json.dump(options, f, indent=2, sort_keys=True)

    def stats(self, step: int, kimg: float, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))
                 and np.isfinite(v)}
        self._stats.write(json.dumps({"step": step, "kimg": kimg, **clean}) + "\n")
        self._stats.flush()
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, global_step=int(kimg * 1000))

    def metric(self, name: str, step: int, kimg: float, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, f"metric-{name}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "kimg": kimg, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"metrics/{k}", v, global_step=int(kimg * 1000))

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._log.close()
        self._stats.close()
