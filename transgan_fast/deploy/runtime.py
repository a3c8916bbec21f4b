"""Run an exported generator (`.pt2` through AOTInductor's loader, `.onnx` through onnxruntime).

    gen = load_exported("g.pt2")          # reads g.pt2.json beside it
    images = gen(z)                       # z (B, latent_dim) float32 -> (B, 3, S, S) in [-1, 1]

A fixed-batch artefact takes any number of latents: they are run in chunks of its batch, the
last chunk padded (the padding's images are dropped).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch

from .export import ExportError, sidecar_path

__all__ = ["ExportedGenerator", "load_exported", "RuntimeUnavailableError"]


class RuntimeUnavailableError(RuntimeError):
    """The runtime an artefact needs is not installed (onnxruntime)."""


class ExportedGenerator:
    """A loaded `.pt2` or `.onnx` generator; `meta` is its sidecar."""

    def __init__(self, path: str, meta: Dict[str, Any], device: str = "cpu"):
        self.path, self.meta, self.device = path, meta, torch.device(device)
        self.latent_dim = int(meta["latent_dim"])
        self.batch: Optional[int] = meta["batch"] if isinstance(meta["batch"], int) else None
        if meta["format"] == "pt2":
            self._run = self._pt2(path)
        elif meta["format"] == "onnx":
            self._run = self._onnx(path)
        else:
            raise ExportError(f"{sidecar_path(path)}: unknown format {meta['format']!r}")

    def _pt2(self, path):
        package = torch._inductor.aoti_load_package(path)
        return lambda z: package(z.to(self.device)).cpu()

    def _onnx(self, path):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailableError(f"running .onnx files needs onnxruntime "
                                          f"(pip install 'transgan_fast[export]'): {exc}")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda z: torch.from_numpy(session.run(["image"], {"z": z.cpu().numpy()})[0])

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Images `(B, 3, S, S)` float32 on the CPU for latents `z (B, latent_dim)`."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"ExportedGenerator: z must be (B, {self.latent_dim}); got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
        if z.dtype != torch.float32:
            raise ValueError(f"ExportedGenerator: z must be float32; got {z.dtype}")
        with torch.no_grad():
            if self.batch is None:
                return self._run(z.contiguous())
            out = []
            for chunk in z.split(self.batch):
                n = chunk.shape[0]
                if n < self.batch:  # pad to the compiled batch; the padding's images are dropped
                    chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, self.latent_dim)])
                out.append(self._run(chunk.contiguous())[:n])
            return torch.cat(out)


def load_exported(path: str, device: str = "cpu") -> ExportedGenerator:
    """Load an exported generator and its sidecar (`<path>.json`, written by the export)."""
    if not os.path.isfile(path):
        raise ExportError(f"--exported: no file at {path!r}")
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise ExportError(f"--exported: {path!r} has no sidecar {side!r} (the export writes it "
                          f"beside the file; keep them together)")
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"--exported: sidecar {side!r} is not readable JSON ({exc})")
    if not isinstance(meta, dict) or not {"format", "latent_dim", "batch"} <= set(meta):
        raise ExportError(f"--exported: sidecar {side!r} lacks format/latent_dim/batch")
    if meta.get("device") == "cuda" and device != "cuda":
        raise ExportError(f"--exported: {path!r} was compiled for cuda; pass --device cuda")
    return ExportedGenerator(path, meta, device=device)
