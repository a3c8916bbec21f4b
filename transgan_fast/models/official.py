"""Checkpoints of the released TransGAN code (VITA-Group/TransGAN, commit 6b85440).

The released trainer saves one pickled dict: `gen_state_dict`, `avg_gen_state_dict` (the EMA
generator), `dis_state_dict`, the optimizers, `epoch`, `best_fid`, `path_helper` and `fixed_z`;
the state dicts come from DistributedDataParallel, so their keys may start with `module.`.

`official_key_map(net, layout)` names, for every parameter of a package model, the key that holds
it in the released model of the same preset:

| preset      | generator file (layout)               | discriminator file (layout)         |
|-------------|----------------------------------------|-------------------------------------|
| cifar10     | ViT_custom_rp (`rp`)                   | ViT_custom_scale2_rp_noise (`scale2`) |
| stl10       | ViT_custom_rp (`rp`)                   | ViT_custom_scale2_rp_noise (`scale2`) |
| church256   | ViT_custom_local544444_256_rp_noise (`local`) | ViT_scale3_local_new_rp (`scale3`) |
| celebahq256 | Celeba256_gen (`celeba`)               | Celeba256_dis (`celeba`)            |

Tensors are copied unchanged (the layouts agree: packed qkv, Swin relative-bias tables, conv
patch embeddings). The released models also hold buffers the package computes itself: each
attention's `relative_position_index` and, when the run used the `filter` augmentation, the
discriminator's `Hz_fbank`; they are checked against the recomputed values, never dropped
silently. A key that maps to nothing, a missing key or a shape mismatch is an error naming it.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..nn.swin import swin_relative_position_index
from .config import TransGANConfig, config
from .discriminator import Discriminator
from .generator import Generator

__all__ = ["OFFICIAL_LAYOUTS", "official_key_map", "official_buffers", "official_to_package",
           "read_official", "load_official", "filter_bank"]

# preset -> (generator layout, discriminator layout)
OFFICIAL_LAYOUTS: Dict[str, Tuple[str, str]] = {
    "cifar10": ("rp", "scale2"),
    "stl10": ("rp", "scale2"),
    "church256": ("local", "scale3"),
    "celebahq256": ("celeba", "celeba"),
}

# Inside one transformer block: package name -> released name.
_BLOCK = [
    (r"norm1\.", "norm1.norm."), (r"norm2\.", "norm2.norm."),
    (r"attn\.rel_bias$", "attn.relative_position_bias_table"),
    (r"attn\.noise_strength$", "attn.noise_strength_1"),
    (r"cross\.q\.", "cross_attention.q_transform."), (r"cross\.k\.", "cross_attention.k_transform."),
    (r"cross\.v\.", "cross_attention.v_transform."), (r"cross\.proj\.", "cross_attention.proj."),
    (r"cross\.noise_strength$", "cross_attention.noise_strength_1"),
]


def _block_key(rest: str) -> str:
    for pat, rep in _BLOCK:
        if re.match(pat, rest):
            return re.sub(pat, rep, rest, count=1)
    return rest  # attn.qkv.weight, attn.proj.*, mlp.fc1.*, mlp.fc2.* keep their names


def _g_block_prefix(layout: str, stage: int, j: int) -> str:
    if layout == "rp":
        return f"blocks.block.{j}." if stage == 0 else f"upsample_blocks.{stage - 1}.block.{j}."
    return f"blocks_{stage + 1}.block.{j}."  # local, celeba (nn.Sequential named `block`)


def _d_block_prefix(layout: str, stage: int, j: int, depth: int) -> str:
    # scale3: the last block of stage 1 (global over the whole map) is `blocks_11`;
    # celeba: the last block of stage 2 is `blocks_21`.
    if (layout, stage) in (("scale3", 0), ("celeba", 1)) and j == depth - 1:
        return f"blocks_{stage + 1}1.0."
    return f"blocks_{stage + 1}.{j}."


def official_key_map(net: torch.nn.Module, layout: str) -> Dict[str, str]:
    """`{package key: released key}` for every parameter of `net` (a Generator or Discriminator)."""
    out = {}
    is_g = isinstance(net, Generator)
    if not isinstance(net, (Generator, Discriminator)):
        raise TypeError(f"official_key_map: net must be a Generator or Discriminator; got {type(net)}")
    valid = {"rp", "local", "celeba"} if is_g else {"scale2", "scale3", "celeba"}
    if layout not in valid:
        raise ValueError(f"official_key_map: layout for a {type(net).__name__} must be one of "
                         f"{sorted(valid)}; got {layout!r}")
    for k in net.state_dict():
        m = re.match(r"stages\.(\d+)\.(\d+)\.(.*)$", k)
        if m:
            i, j, rest = int(m[1]), int(m[2]), m[3]
            pre = (_g_block_prefix(layout, i, j) if is_g
                   else _d_block_prefix(layout, i, j, len(net.stages[i])))
            out[k] = pre + _block_key(rest)
        elif m := re.match(r"pos\.(\d+)$", k):
            out[k] = f"pos_embed_{int(m[1]) + 1}"
        elif m := re.match(r"embeds\.(\d+)\.conv\.(.*)$", k):
            out[k] = f"fRGB_{int(m[1]) + 1}.{m[2]}"
        elif k.startswith("final."):
            out[k] = "last_block.0." + _block_key(k[len("final."):])
        else:
            fixed = {"stem.weight": "l1.weight", "stem.bias": "l1.bias",
                     "mod.weight": "embedding_transform.weight", "mod.bias": "embedding_transform.bias",
                     "mod_pos": "embed_pos", "to_rgb.weight": "deconv.0.weight",
                     "to_rgb.bias": "deconv.0.bias", "norm.weight": "norm.norm.weight",
                     "norm.bias": "norm.norm.bias", "head.weight": "head.weight",
                     "head.bias": "head.bias", "cls_token": "cls_token"}
            if k not in fixed:
                raise ValueError(f"official_key_map: no released name for package key {k!r}")
            out[k] = fixed[k]
    return out


def filter_bank() -> torch.Tensor:
    """The `(4, 43)` filter bank `Hz_fbank` that the released discriminators build when the
    `filter` augmentation is on: 4 frequency bands from the `sym2` wavelet (the ADA construction:
    each level upsamples the bank by 2, low-passes it, and adds the level's high-pass band)."""
    lo = np.array([-0.12940952255092145, 0.22414386804185735, 0.836516303737469,
                   0.48296291314469025])                                  # sym2 H(z)
    hi = lo * (-1.0) ** np.arange(lo.size)                                  # H(-z)
    lo2, hi2 = np.convolve(lo, lo[::-1]) / 2, np.convolve(hi, hi[::-1]) / 2
    bank = np.eye(4, 1)
    for i in range(1, 4):
        up = np.zeros((4, 2 * bank.shape[1] - 1))
        up[:, ::2] = bank                                                   # zero-interleave
        bank = np.stack([np.convolve(row, lo2) for row in up])
        c = (bank.shape[1] - hi2.size) // 2
        bank[i, c:c + hi2.size] += hi2
    return torch.as_tensor(bank, dtype=torch.float32)


def official_buffers(net: torch.nn.Module, layout: str) -> Dict[str, torch.Tensor]:
    """Buffers of the released model that the package recomputes: `{released key: value}`.

    Each attention with a relative-bias table has `relative_position_index` (Swin's index for its
    window); `Hz_fbank` (discriminators, `filter` runs only) is handled by `official_to_package`.
    """
    kmap = official_key_map(net, layout)
    out = {}
    for name, m in net.named_modules():
        rel = getattr(m, "rel_bias", None)
        if isinstance(rel, torch.Tensor) and hasattr(m, "window"):
            key = kmap[f"{name}.rel_bias"].replace("relative_position_bias_table",
                                                   "relative_position_index")
            out[key] = swin_relative_position_index(m.window)
    return out


def _strip_module(sd: Mapping[str, Any]) -> Dict[str, Any]:
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def official_to_package(state: Mapping[str, Any], net: torch.nn.Module, layout: str,
                        what: str = "state dict") -> Dict[str, torch.Tensor]:
    """Map one released state dict (`module.` prefixes allowed) onto `net`'s keys, checking that
    every released key is used, every parameter is present with its shape, and every recomputed
    buffer equals the package's value. Returns a state dict for `net.load_state_dict`."""
    sd = _strip_module(state)
    kmap = official_key_map(net, layout)
    own = net.state_dict()
    bufs = official_buffers(net, layout)
    missing = sorted(v for v in kmap.values() if v not in sd)
    unknown = sorted(k for k in sd if k not in set(kmap.values()) | set(bufs) | {"Hz_fbank"})
    if missing or unknown:
        raise ValueError(f"load_official: {what} does not match the released {layout!r} "
                         f"{type(net).__name__} of preset {net.cfg.name!r}: missing keys "
                         f"{missing[:20]}{' ...' if len(missing) > 20 else ''}; unmapped keys "
                         f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}")
    for key, expect in list(bufs.items()) + ([("Hz_fbank", filter_bank())] if "Hz_fbank" in sd else []):
        got = sd.get(key)
        if got is None:
            continue  # the released code registers these as buffers, but absent is harmless
        same = tuple(got.shape) == tuple(expect.shape) and (
            torch.allclose(got.float().cpu(), expect, rtol=0, atol=1e-6) if key == "Hz_fbank"
            else torch.equal(got.cpu().to(expect.dtype), expect))
        if not same:
            raise ValueError(f"load_official: {what}: buffer {key!r} of shape {tuple(got.shape)} "
                             f"differs from the value the package computes (shape "
                             f"{tuple(expect.shape)}); the checkpoint is not of this preset")
    out = {}
    for pk, ok in kmap.items():
        t = sd[ok]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(own[pk].shape):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"load_official: {what}: {ok!r} has shape {shape}; the package's "
                             f"{pk!r} of preset {net.cfg.name!r} needs {tuple(own[pk].shape)}")
        out[pk] = t
    return out


def read_official(checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    """The released checkpoint as a dict: `checkpoint` itself when it is a mapping, else the file
    loaded with `torch.load(weights_only=True)`. numpy scalars and dtypes (the released trainer
    may store `best_fid` as a numpy float) are the only extra types allowed; they are data, not
    code. Anything else the file pickles makes this an error that says how to proceed."""
    if isinstance(checkpoint, Mapping):
        return dict(checkpoint)
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_official: no checkpoint file at {path!r}")
    safe = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
            type(np.dtype(np.int64))]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    # Files written under numpy 1.x (the released ones) name it numpy.core.multiarray.scalar.
    safe += [scalar, (scalar, "numpy.core.multiarray.scalar")]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln]
        why = lines[0] if lines else str(exc).splitlines()[0]
        raise ValueError(
            f"load_official: {path!r} pickles objects beyond tensors, numbers, strings and numpy "
            f"scalars, so it cannot be read safely ({why}). If you trust the "
            f"file, load it yourself with torch.load(path, map_location='cpu', weights_only=False) "
            f"and pass the resulting dict to load_official") from None


def load_official(checkpoint, preset: str, ema: bool = True, backend: str = "auto",
                  **overrides) -> Tuple[Generator, Optional[Discriminator]]:
    """`(G, D)` of `preset` holding the weights of a released TransGAN checkpoint.

    Args:
        checkpoint: a path, or the loaded dict, in the released layout (`gen_state_dict`,
            `avg_gen_state_dict`, `dis_state_dict`; keys may start with `module.`).
        preset: one of `OFFICIAL_LAYOUTS` (cifar10, stl10, church256, celebahq256).
        ema: G takes the EMA weights (`avg_gen_state_dict`, what the paper evaluates) when True,
            the raw ones (`gen_state_dict`) when False.
        backend: passed to the models; `overrides` change config fields (shape-changing overrides
            make the released weights not fit, which is reported).

    A checkpoint without `dis_state_dict` (a generator-only release) gives `D = None`.
    """
    if preset not in OFFICIAL_LAYOUTS:
        raise ValueError(f"load_official: preset must be one of {sorted(OFFICIAL_LAYOUTS)} (the "
                         f"presets with a released model file); got {preset!r}")
    ck = read_official(checkpoint)
    gkey = "avg_gen_state_dict" if ema else "gen_state_dict"
    if gkey not in ck:
        raise ValueError(f"load_official: the checkpoint has no {gkey!r} (ema={ema}); its keys are "
                         f"{sorted(ck)}")
    cfg: TransGANConfig = config(preset, **overrides)
    g_layout, d_layout = OFFICIAL_LAYOUTS[preset]
    G = Generator(cfg, backend=backend)
    G.load_state_dict(official_to_package(ck[gkey], G, g_layout, gkey))
    D = None
    if "dis_state_dict" in ck:
        D = Discriminator(cfg, backend=backend)
        D.load_state_dict(official_to_package(ck["dis_state_dict"], D, d_layout, "dis_state_dict"))
    return G.eval(), D
