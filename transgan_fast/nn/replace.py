"""`replace_attention`: swap the attention layers of an existing model for the fused drop-ins.

Recognised by class name and attributes (no import of the source project is needed):
- Swin `WindowAttention` (original Swin, timm, Swin-based GANs): `qkv`, `proj`,
  `relative_position_bias_table`, `num_heads`, `window_size` -> `transgan_fast.nn.WindowAttention`.
- NATTEN `NeighborhoodAttention2D`: `qkv`, `proj`, `rpb`, `kernel_size`, `dilation`
  -> `transgan_fast.nn.NeighborhoodAttention2D` (stride 1, odd kernel sizes, not causal).
Weights are kept (the state dicts are layout-compatible); anything that looks like attention but
cannot be swapped faithfully is listed with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .natten import NeighborhoodAttention2D
from .swin import WindowAttention, swin_relative_position_index

__all__ = ["replace_attention", "ReplaceReport"]


@dataclass
class ReplaceReport:
    """What `replace_attention` did: `swapped` (name, old class, new class) and `skipped`
    (name, class, reason)."""

    swapped: List[Tuple[str, str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replace_attention: swapped {len(self.swapped)}, skipped {len(self.skipped)}"]
        lines += [f"  swapped {n or '<root>'}: {a} -> {b}" for n, a, b in self.swapped]
        lines += [f"  skipped {n or '<root>'} ({c}): {why}" for n, c, why in self.skipped]
        return "\n".join(lines)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _drop_p(v) -> float:
    return float(v.p) if isinstance(v, nn.Dropout) else float(v or 0.0)


def _persistent_index(m: nn.Module) -> bool:
    """Whether `m` saves `relative_position_index` in its state dict (original Swin) or not (timm),
    so the swapped model's state dict loads strictly into the unswapped one and back."""
    return ("relative_position_index" in dict(m.named_buffers(recurse=False))
            and "relative_position_index" not in m._non_persistent_buffers_set)


def _swin(m: nn.Module, backend: str):
    """A fused WindowAttention equal to Swin module `m`, or the reason why not."""
    if getattr(m, "relative_position_bias_table", None) is None:
        return "no relative_position_bias_table (Swin V2 continuous bias or another variant)"
    if not isinstance(getattr(m, "qkv", None), nn.Linear) or not isinstance(getattr(m, "proj", None), nn.Linear):
        return ("no qkv/proj Linear inside (e.g. StyleSwin's half attention taking q, k, v): "
                "swap the block's attention for DoubleWindowAttention by hand")
    dim, heads = m.qkv.in_features, int(m.num_heads)
    if m.qkv.out_features != 3 * dim or m.proj.in_features != dim or m.proj.out_features != dim:
        return f"attention width differs from dim (qkv {m.qkv.in_features}->{m.qkv.out_features})"
    Wh, Ww = _pair(m.window_size)
    if m.relative_position_bias_table.shape != ((2 * Wh - 1) * (2 * Ww - 1), heads):
        return f"bias table shape {tuple(m.relative_position_bias_table.shape)} is not Swin's"
    idx = getattr(m, "relative_position_index", None)
    if idx is not None and not torch.equal(idx.cpu().long().reshape(Wh * Ww, Wh * Ww),
                                           swin_relative_position_index((Wh, Ww))):
        return "relative_position_index differs from Swin's query-minus-key index"
    if hasattr(m, "logit_scale"):
        return "cosine attention (Swin V2) is not supported"
    new = WindowAttention(dim, (Wh, Ww), heads, qkv_bias=m.qkv.bias is not None,
                          qk_scale=float(getattr(m, "scale", (dim // heads) ** -0.5)),
                          attn_drop=_drop_p(getattr(m, "attn_drop", 0.0)),
                          proj_drop=_drop_p(getattr(m, "proj_drop", 0.0)), backend=backend,
                          persistent_index=_persistent_index(m))
    new.qkv.load_state_dict(m.qkv.state_dict())
    new.proj.load_state_dict(m.proj.state_dict())
    with torch.no_grad():
        new.relative_position_bias_table.copy_(m.relative_position_bias_table)
    return new


def _flags(v) -> List[int]:
    """A NATTEN per-axis argument (int, bool or tuple) as a flat list of ints."""
    return [int(c) for c in torch.as_tensor(v).reshape(-1).tolist()]


def _natten_unsupported(m: nn.Module) -> Optional[str]:
    """Why NATTEN module `m` computes something the fused module does not reproduce exactly."""
    if not isinstance(getattr(m, "qkv", None), nn.Linear) or not isinstance(getattr(m, "proj", None), nn.Linear):
        return "no qkv/proj Linear inside"
    if any(_flags(getattr(m, "is_causal", False))):
        return "causal neighbourhood attention is not supported"
    stride = _flags(getattr(m, "stride", 1))
    if any(st != 1 for st in stride):
        return (f"stride={tuple(stride)}: strided neighbourhood attention (queries share "
                f"neighbourhoods in groups of `stride`) is not supported; only stride 1")
    if any(k % 2 == 0 for k in _flags(m.kernel_size)):
        return (f"even kernel_size={tuple(_flags(m.kernel_size))}: NATTEN's placement of an even "
                f"window around its query is not verified against local_attention(border='shift'); "
                f"only odd kernel sizes are swapped")
    if _drop_p(getattr(m, "attn_drop", 0.0)) > 0:
        return "attention dropout > 0 cannot run inside the fused kernels"
    if m.qkv.out_features != 3 * m.qkv.in_features:
        return f"attention width differs from dim (qkv {m.qkv.in_features}->{m.qkv.out_features})"
    return None


def _natten(m: nn.Module, backend: str):
    """A fused NeighborhoodAttention2D equal to NATTEN module `m`, or the reason why not."""
    why = _natten_unsupported(m)
    if why:
        return why
    dim, heads = m.qkv.in_features, int(m.num_heads)
    rpb = getattr(m, "rpb", None)
    new = NeighborhoodAttention2D(dim, heads, _pair(m.kernel_size), _pair(m.dilation),
                                  rel_pos_bias=rpb is not None, qkv_bias=m.qkv.bias is not None,
                                  qk_scale=float(getattr(m, "scale", (dim // heads) ** -0.5)),
                                  proj_drop=_drop_p(getattr(m, "proj_drop", 0.0)), backend=backend)
    if rpb is not None and rpb.shape != new.rpb.shape:
        return f"rpb shape {tuple(rpb.shape)} is not NATTEN's (heads, 2k-1, 2k-1)"
    new.qkv.load_state_dict(m.qkv.state_dict())
    new.proj.load_state_dict(m.proj.state_dict())
    if rpb is not None:
        with torch.no_grad():
            new.rpb.copy_(rpb)
    return new


_RULES = {"WindowAttention": _swin, "NeighborhoodAttention2D": _natten}
_OURS = (WindowAttention, NeighborhoodAttention2D)


def replace_attention(model: nn.Module, backend: str = "auto") -> ReplaceReport:
    """Swap compatible attention modules of `model` in place (weights kept); return the report.

    A module whose class name is `WindowAttention` (Swin) or `NeighborhoodAttention2D` (NATTEN)
    and whose parameters match that layout is replaced by the fused equivalent on the same device,
    dtype and training mode. Other modules that carry `relative_position_bias_table` or `rpb`
    next to `qkv`/`proj` are reported as skipped with the reason.
    """
    report = ReplaceReport()
    for name, m in list(model.named_modules()):
        if isinstance(m, _OURS):
            continue
        cls = type(m).__name__
        rule = _RULES.get(cls)
        looks_like = any(hasattr(m, a) for a in ("relative_position_bias_table", "rpb")) and hasattr(m, "qkv")
        if rule is None:
            if looks_like:
                report.skipped.append((name, cls, "unrecognised attention class; layout unknown"))
            continue
        try:
            new = rule(m, backend)
        except (ValueError, TypeError, AttributeError) as exc:  # a layout the rules did not foresee
            new = f"cannot build the fused equivalent: {exc}"
        if isinstance(new, str):
            report.skipped.append((name, cls, new))
            continue
        ref = next(m.parameters(), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.train(m.training)
        if not name:
            report.skipped.append((name, cls, "the root module itself cannot be replaced in place; "
                                              "wrap it in a container"))
            continue
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name)._modules[child] = new
        report.swapped.append((name, cls, f"transgan_fast.nn.{type(new).__name__}"))
    return report
