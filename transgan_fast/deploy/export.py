"""Export a trained generator: an AOTInductor `.pt2` package or an ONNX file, plus a JSON sidecar.

The exported program is `z (B, latent_dim) -> G(z).clamp(-1, 1) (B, 3, S, S)`, float32, the images
`transgan-fast generate` writes. Latent sampling (seeds, truncation) stays with the caller.

Which kernels go inside:
- CPU `.pt2` and ONNX: every fused op runs its plain-PyTorch reference (`backend="ref"`), which
  traces to standard aten ops (matmul, softmax, interpolate, pixel_shuffle...). The fused CPU
  kernels are called from Python through the pybind module, which cannot run inside a package
  loaded without Python, nor be expressed as ONNX operators.
- CUDA `.pt2`: attention and pixel shuffle run the Triton backend (`torch.library.triton_op`), so
  AOTInductor compiles those Triton kernels into the package; ops Triton lacks run their reference,
  which Inductor compiles into its own Triton kernels. (Untested here: the build machine has no GPU.)
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..nn import set_backend
from ..ops import _dispatch

__all__ = ["ExportError", "FORMATS", "load_generator", "export_generator", "ExportWrapper",
           "sidecar_path", "fused_ops_of", "check_target"]

FORMATS = ("pt2", "onnx")
MAX_DYNAMIC_BATCH = 4096
METADATA_PREFIX = "transgan_fast."
# The generator's fused ops: which Triton kernels serve each (docs/ops.md §5).
_TRITON_OPS = {"attention_qkv": ("attn_fwd",), "pixel_shuffle_seq": ("pixel_shuffle_seq",)}


class ExportError(ValueError):
    """A user error (bad checkpoint, format, path, device); the message is one line."""


def sidecar_path(path: str) -> str:
    """The JSON that describes an exported file: `<path>.json`."""
    return path + ".json"


# ----------------------------------------------------------------------------------------------
# Loading a trained generator.

def load_generator(checkpoint: str, ema: bool = True, backend: str = "auto") -> Tuple[nn.Module, Dict]:
    """`(G, info)` from a `ckpt-*.pt` file or a run directory (its newest checkpoint).

    G is in eval mode with the locality schedule at the checkpoint's epoch; `info` holds the
    checkpoint path, preset, step, epoch and which weights (EMA or raw) were loaded.
    """
    from ..train import checkpoint as ck
    from ..train.config import TrainConfig
    from ..train.runner import build_models
    if os.path.isdir(checkpoint):
        path = ck.latest_checkpoint(checkpoint)
        if path is None:
            raise ExportError(f"--checkpoint: run directory {checkpoint!r} holds no ckpt-*.pt file")
    elif os.path.isfile(checkpoint):
        path = checkpoint
    else:
        raise ExportError(f"--checkpoint: no file or run directory at {checkpoint!r}")
    try:
        state = ck.load_checkpoint(path)
    except Exception as exc:
        raise ExportError(f"--checkpoint: {path!r} is not a readable checkpoint "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    key = "G_ema" if ema else "G"
    if not isinstance(state, dict) or "config" not in state or key not in state:
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ExportError(f"--checkpoint: {path!r} is not a transgan_fast training checkpoint "
                          f"(needs 'config' and {key!r}; has {have})")
    cfg = TrainConfig.from_dict({**state["config"], "backend": backend})
    G, _ = build_models(cfg)
    try:
        G.load_state_dict(state[key])
    except RuntimeError as exc:
        raise ExportError(f"--checkpoint: {path!r}: {key} weights do not fit the model of its "
                          f"config ({str(exc).splitlines()[0]})")
    from ..train.sample import num_classes_of
    if num_classes_of(G):
        raise ExportError(f"--checkpoint: {path!r} holds a class-conditional generator; export "
                          f"handles latent -> image generators only (not yet G(z, y))")
    epoch = float(state.get("epoch", 0.0))
    G.set_progress(epoch)
    info = {"checkpoint": os.path.abspath(path), "preset": cfg.preset, "step": state.get("step"),
            "epoch": epoch, "weights": key}
    return G.eval(), info


# ----------------------------------------------------------------------------------------------
# What is exported.

class ExportWrapper(nn.Module):
    """`z -> G(z).clamp(-1, 1)` as float32: the program inside the exported file."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z).float().clamp(-1.0, 1.0)


def fused_ops_of(G: nn.Module) -> Dict[str, int]:
    """How many call sites of each fused op the generator has (`{op: count}`)."""
    from ..nn.attention import Attention
    from ..nn.blocks import PixelNorm
    counts: Dict[str, int] = {}
    for m in G.modules():
        if isinstance(m, Attention):
            counts["attention_qkv"] = counts.get("attention_qkv", 0) + 1
        elif isinstance(m, PixelNorm):
            counts["pixel_norm"] = counts.get("pixel_norm", 0) + 1
    for kind in getattr(G.cfg, "g_upsample", ()):
        op = "pixel_shuffle_seq" if kind == "pixelshuffle" else "bicubic_upsample_seq"
        counts[op] = counts.get(op, 0) + 1
    return counts


def _plan_backends(G: nn.Module, device: str) -> Dict[str, str]:
    """Point G's layers at the backend each op runs inside the artefact; returns `{op: backend}`.

    CPU: every op on `ref`. CUDA: ops the Triton backend has on `triton`, the rest on `ref`.
    """
    from ..nn.attention import Attention
    ops = fused_ops_of(G)
    plan = {op: "ref" for op in ops}
    set_backend(G, "ref")
    if device != "cuda":
        return plan
    have = _dispatch.KERNELS["triton"]
    for op, kernels in _TRITON_OPS.items():
        if op in plan and all(k in have for k in kernels):
            plan[op] = "triton"
    for m in G.modules():
        if isinstance(m, Attention) and plan.get("attention_qkv") == "triton":
            m.backend = "triton"
    # The generator's own backend serves both upsamplers: Triton only if every one is a shuffle.
    if "bicubic_upsample_seq" not in plan and plan.get("pixel_shuffle_seq") == "triton":
        G.backend = "triton"
    elif "pixel_shuffle_seq" in plan:
        plan["pixel_shuffle_seq"] = "ref"
    return plan


def _describe_plan(plan: Dict[str, str], fmt: str) -> Dict[str, str]:
    where = "ONNX operators" if fmt == "onnx" else "aten ops compiled by AOTInductor"
    return {op: ("Triton kernels of transgan_fast (triton_op), compiled into the package"
                 if b == "triton" else f"reference decomposition ({where})") for op, b in plan.items()}


# ----------------------------------------------------------------------------------------------
# Export.

def check_target(fmt: str, out: str, device: str, batch: Optional[int]) -> None:
    """Raise `ExportError` if `fmt`, `out`, `device` or `batch` cannot be exported to."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not out.endswith("." + fmt):
        raise ExportError(f"--out: {out!r} must end in '.{fmt}' for --format {fmt}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ExportError(f"--out: directory {parent!r} does not exist; create it first")
    if device not in ("cpu", "cuda"):
        raise ExportError(f"--device: must be 'cpu' or 'cuda'; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device: cuda requested but torch sees no CUDA device here")
    if device == "cuda" and fmt == "onnx":
        raise ExportError("--device: ONNX export runs on cpu (the file itself is device-neutral)")
    if batch is not None and not 1 <= batch <= MAX_DYNAMIC_BATCH:
        raise ExportError(f"--batch: must be in [1, {MAX_DYNAMIC_BATCH}]; got {batch}")


def export_generator(G: nn.Module, fmt: str, out: str, batch: Optional[int] = None,
                     device: str = "cpu", noise: str = "random",
                     info: Optional[Dict[str, Any]] = None, check: bool = True) -> Dict[str, Any]:
    """Export `G` to `out` as `fmt` ("pt2" or "onnx"); write the sidecar; return its content.

    `batch=None` exports a dynamic batch (1..4096), an int a fixed one. `noise="random"` keeps the
    attention-noise draws of noise layers (fresh per call), `"zero"` removes them. With `check`,
    the artefact is run on a few latents and compared with eager G (`check` in the sidecar).
    """
    check_target(fmt, out, device, batch)
    if noise not in ("random", "zero"):
        raise ExportError(f"--noise: must be 'random' or 'zero'; got {noise!r}")
    eager = ExportWrapper(G).eval()
    G = copy.deepcopy(G).eval().to(device)
    noise_layers = [m for m in G.modules() if getattr(m, "noise_strength", None) is not None]
    if noise == "zero":
        for m in noise_layers:
            m.noise_strength = None
    plan = _plan_backends(G, device)
    model = ExportWrapper(G).eval()
    cfg = G.cfg
    example = torch.randn(batch or 2, cfg.latent_dim, device=device)
    dyn = None if batch else ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},)
    from .. import __version__
    meta = {
        "format": fmt, "file": os.path.basename(out), "transgan_fast_version": __version__,
        "torch_version": torch.__version__, "device": device, **(info or {}),
        "preset": (info or {}).get("preset", cfg.name), "model": _config_dict(cfg),
        "input": {"name": "z", "shape": ["batch" if batch is None else batch, cfg.latent_dim],
                  "dtype": "float32", "latent": "z ~ N(0, I); seed s: torch.randn(latent_dim, "
                  "generator=torch.Generator().manual_seed(s))"},
        "output": {"name": "image", "shape": ["batch" if batch is None else batch, 3,
                                              cfg.img_size, cfg.img_size],
                   "dtype": "float32", "value_range": [-1.0, 1.0], "clamped": True,
                   "to_uint8": "round((x + 1) * 127.5)"},
        "latent_dim": cfg.latent_dim, "img_size": cfg.img_size,
        "batch": "dynamic" if batch is None else batch,
        "noise": {"layers": len(noise_layers), "mode": noise if noise_layers else "none"},
        "ops": _describe_plan(plan, fmt),
    }
    with torch.no_grad():
        ep = torch.export.export(model, (example,), dynamic_shapes=dyn)
    meta["custom_ops_in_graph"] = sorted({str(n.target) for n in ep.graph.nodes
                                          if n.op == "call_function" and "transgan_fast" in str(n.target)})
    if fmt == "pt2":
        _write_pt2(ep, out, meta)
    else:
        meta["onnx_ops"] = _write_onnx(ep, out)
    if check and not noise_layers:
        meta["check"] = _check_against_eager(out, meta, eager.to(device), device)
    elif check and noise == "zero":  # the eager G would draw noise: compare with it switched off
        meta["check"] = _check_against_eager(out, meta, model, device)
    with open(sidecar_path(out), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def _config_dict(cfg) -> Dict[str, Any]:
    import dataclasses
    d = dataclasses.asdict(cfg)
    if d.get("locality") is not None:
        d["locality"] = str(cfg.locality)
    return d


def _write_pt2(ep, out: str, meta: Dict[str, Any]) -> None:
    # The package carries its own shape facts, so the C++ loader needs no JSON parser.
    md = {METADATA_PREFIX + k: str(meta[k]) for k in ("latent_dim", "img_size", "batch", "preset")}
    torch._inductor.aoti_compile_and_package(
        ep, package_path=out, inductor_configs={"aot_inductor.metadata": md})


def _write_onnx(ep, out: str):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"--format onnx needs the onnx and onnxscript packages "
                          f"(pip install 'transgan_fast[export]'): {exc}")
    with torch.no_grad():
        # From the exported program itself, so both formats start from one trace.
        torch.onnx.export(ep, (), out, dynamo=True, input_names=["z"],
                          output_names=["image"], external_data=False, verbose=False)
    proto = onnx.load(out)
    return sorted({n.op_type for n in proto.graph.node})


def _check_against_eager(out: str, meta: Dict[str, Any], model: nn.Module, device: str):
    """Max |artefact - eager| on fixed latents, or why it could not run here."""
    from .runtime import ExportedGenerator, RuntimeUnavailableError
    try:
        exported = ExportedGenerator(out, meta, device=device)
    except RuntimeUnavailableError as exc:
        return {"ran": False, "reason": str(exc)}
    n = meta["batch"] if isinstance(meta["batch"], int) else 3
    z = torch.randn(n, meta["latent_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(z.to(device)).cpu()
    got = exported(z)
    return {"ran": True, "latents": n, "max_abs_diff_vs_eager": float((got - ref).abs().max())}
