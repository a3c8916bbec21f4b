"""Released TransGAN checkpoints (VITA-Group/TransGAN 6b85440): key layout, loading, errors.

The released key lists below are written out here from the released model files and launcher
arguments (models_search/*.py, exps/*_train.py), independently of the package's mapping, with
the shape of every tensor. Nothing is downloaded.
"""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from transgan_fast.models import build, load_official
from transgan_fast.models.official import (OFFICIAL_LAYOUTS, filter_bank, official_buffers,
                                           official_key_map, official_to_package)
from test_models import TINY


def _rel_index(w):
    """Swin's relative_position_index, as the released Attention builds it (meshgrid 'ij')."""
    c = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    r = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + (w - 1)
    return r[..., 0] * (2 * w - 1) + r[..., 1]


def _block(p, d, window=None, noise=False, ln=True, cross=None):
    """Keys of one released Block/DisBlock -> (shape, is_buffer)."""
    k = {f"{p}attn.qkv.weight": (3 * d, d), f"{p}attn.proj.weight": (d, d), f"{p}attn.proj.bias": (d,),
         f"{p}mlp.fc1.weight": (4 * d, d), f"{p}mlp.fc1.bias": (4 * d,),
         f"{p}mlp.fc2.weight": (d, 4 * d), f"{p}mlp.fc2.bias": (d,)}
    if ln:
        for n in ("norm1", "norm2"):
            k[f"{p}{n}.norm.weight"] = k[f"{p}{n}.norm.bias"] = (d,)
    if window:
        k[f"{p}attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, 4)
        k[f"{p}attn.relative_position_index"] = ("buffer", window)
    if noise:
        k[f"{p}attn.noise_strength_1"] = ()
    if cross:
        k.update({f"{p}cross_attention.q_transform.weight": (d, d),
                  f"{p}cross_attention.k_transform.weight": (d, cross),
                  f"{p}cross_attention.v_transform.weight": (d, cross),
                  f"{p}cross_attention.proj.weight": (d, d), f"{p}cross_attention.proj.bias": (d,),
                  f"{p}cross_attention.noise_strength_1": ()})
    return k


def _stage(prefix, depth, **kw):
    out = {}
    for j in range(depth):
        out.update(_block(f"{prefix}{j}.", **kw))
    return out


def _released_g(preset):
    if preset in ("cifar10", "stl10"):  # ViT_custom_rp
        z, b, depths, ln = (256, 8, (5, 4, 2), True) if preset == "cifar10" else (512, 12, (7, 5, 3), False)
        k = {"l1.weight": (b * b * 1024, z), "l1.bias": (b * b * 1024,),
             "deconv.0.weight": (3, 64, 1, 1), "deconv.0.bias": (3,)}
        for i, (d, dep) in enumerate(zip((1024, 256, 64), depths)):
            k[f"pos_embed_{i + 1}"] = (1, (b << i) ** 2, d)
            pre = "blocks.block." if i == 0 else f"upsample_blocks.{i - 1}.block."
            k.update(_stage(pre, dep, d=d, window=b << i, ln=ln))
        return k
    # church256: ViT_custom_local544444_256_rp_noise; celebahq256: Celeba256_gen (no blocks_1).
    hq = preset == "celebahq256"
    k = {"l1.weight": (65536, 512), "l1.bias": (65536,), "deconv.0.weight": (3, 16, 1, 1),
         "deconv.0.bias": (3,)}
    if hq:
        k.update({"embedding_transform.weight": (65536, 512), "embedding_transform.bias": (65536,),
                  "embed_pos": (1, 64, 1024)})
    dims, windows = (1024, 1024, 1024, 256, 64, 16), (8, 16, 32, 16, 16, 16)
    for i, (d, w) in enumerate(zip(dims, windows)):
        k[f"pos_embed_{i + 1}"] = (1, (8 << i) ** 2, d)
        if hq and i == 0:
            continue
        k.update(_stage(f"blocks_{i + 1}.block.", 5 if i == 0 else 4, d=d, window=w, noise=True,
                        ln=False, cross=1024 if hq else None))
    return k


def _released_d(preset):
    k = {"cls_token": (1, 1, 384), "head.weight": (1, 384), "head.bias": (1,)}
    if preset in ("cifar10", "stl10"):  # ViT_custom_scale2_rp_noise, patch 2
        S, ln = (32, True) if preset == "cifar10" else (48, False)
        k.update({"fRGB_1.weight": (288, 3, 2, 2), "fRGB_1.bias": (288,),
                  "fRGB_2.weight": (96, 3, 4, 4), "fRGB_2.bias": (96,),
                  "pos_embed_1": (1, (S // 2) ** 2, 288), "pos_embed_2": (1, (S // 4) ** 2, 384)})
        k.update(_stage("blocks_1.", 3, d=288, window=S // 2, noise=True, ln=ln))
        k.update(_stage("blocks_2.", 3, d=384, window=S // 4, noise=True, ln=ln))
        k.update(_block("last_block.0.", 384, noise=True, ln=ln))
    elif preset == "church256":  # ViT_scale3_local_new_rp, patch 4, d_window_size 16
        k.update({"fRGB_1.weight": (288, 3, 4, 4), "fRGB_1.bias": (288,),
                  "fRGB_2.weight": (48, 3, 8, 8), "fRGB_2.bias": (48,),
                  "fRGB_3.weight": (48, 3, 16, 16), "fRGB_3.bias": (48,),
                  "pos_embed_1": (1, 4096, 288), "pos_embed_2": (1, 1024, 336),
                  "pos_embed_3": (1, 256, 384)})
        k.update(_stage("blocks_1.", 2, d=288, window=16))
        k.update(_stage("blocks_11.", 1, d=288, window=64))
        k.update(_stage("blocks_2.", 3, d=336, window=32))
        k.update(_stage("blocks_3.", 4, d=384, window=16))
        k.update(_block("last_block.0.", 384))
    else:  # Celeba256_dis, patch 2, d_window_size 4, no relative bias, no noise
        k.update({"fRGB_1.weight": (96, 3, 4, 4), "fRGB_1.bias": (96,),
                  "fRGB_2.weight": (96, 3, 4, 4), "fRGB_2.bias": (96,),
                  "fRGB_3.weight": (192, 3, 8, 8), "fRGB_3.bias": (192,),
                  "pos_embed_1": (1, 16384, 96), "pos_embed_2": (1, 4096, 192),
                  "pos_embed_3": (1, 1024, 384)})
        k.update(_stage("blocks_1.", 3, d=96))
        k.update(_stage("blocks_2.", 2, d=192))
        k.update(_stage("blocks_21.", 1, d=192))
        k.update(_stage("blocks_3.", 4, d=384))
        k.update(_block("last_block.0.", 384))
    if preset != "stl10":  # stl10's D uses PixelNorm (no parameters)
        k["norm.norm.weight"] = k["norm.norm.bias"] = (384,)
    return k


# The released models' parameter counts (issue 11, counted from the model files).
RELEASED = {"cifar10": (83_312_495, 10_210_400), "stl10": (168_466_623, 10_341_536),
            "church256": (205_291_952, 17_754_569), "celebahq256": (212_903_275, 13_334_593)}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_LAYOUTS))
def test_key_map_is_the_released_layout(preset):
    """Every released key and shape is produced by the package's map, and nothing else."""
    G, D = build(preset, device="meta")
    for net, released, layout in ((G, _released_g(preset), OFFICIAL_LAYOUTS[preset][0]),
                                  (D, _released_d(preset), OFFICIAL_LAYOUTS[preset][1])):
        kmap = official_key_map(net, layout)
        own = dict(net.state_dict())
        ours = {kmap[k]: tuple(v.shape) for k, v in own.items()}
        for key, w in official_buffers(net, layout).items():
            assert torch.equal(w, _rel_index(int(w.shape[0] ** 0.5))), key
            ours[key] = ("buffer", int(w.shape[0] ** 0.5))
        assert len(set(kmap.values())) == len(kmap)  # one-to-one
        assert ours == released
    g, d = RELEASED[preset]
    assert sum(np.prod(s) for s in _released_g(preset).values() if s[:1] != ("buffer",)) == g
    assert sum(np.prod(s) for s in _released_d(preset).values() if s[:1] != ("buffer",)) == d


def test_filter_bank_is_a_band_split():
    """Hz_fbank: 4 bands (43 taps) that sum to the identity filter; the lowest band is a low-pass."""
    b = filter_bank().double()
    assert b.shape == (4, 43)
    delta = torch.zeros(43, dtype=torch.double)
    delta[21] = 1
    torch.testing.assert_close(b.sum(0), delta, rtol=0, atol=1e-12)
    assert abs(b[0].sum().item() - 1) < 1e-12 and b[1:].sum(1).abs().max() < 1e-12


def _released_checkpoint(preset, G, D, prefix="module."):
    """A checkpoint in the released layout built from package models (the inverse mapping, plus
    the buffers computed by the released formula)."""
    g_layout, d_layout = OFFICIAL_LAYOUTS[preset]

    def sd(net, layout):
        kmap = official_key_map(net, layout)
        out = {prefix + kmap[k]: v.clone() for k, v in net.state_dict().items()}
        for k, v in official_buffers(net, layout).items():
            out[prefix + k] = _rel_index(int(v.shape[0] ** 0.5))
        return out

    dsd = sd(D, d_layout)
    if preset == "celebahq256":  # its run uses the `filter` augmentation
        dsd[prefix + "Hz_fbank"] = filter_bank()
    raw = sd(G, g_layout)
    avg = {k: v * 0.5 if v.is_floating_point() else v for k, v in raw.items()}
    return {"epoch": 3, "gen_model": "x", "dis_model": "y", "gen_state_dict": raw,
            "avg_gen_state_dict": avg, "dis_state_dict": dsd,
            "best_fid": np.float64(12.5), "path_helper": {"prefix": "logs/x"},
            "fixed_z": torch.randn(4, G.latent_dim)}


def _randomise(*nets):
    with torch.no_grad():
        for net in nets:
            for n, p in net.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if "noise" in n else 0.05))


@pytest.mark.parametrize("preset", sorted(OFFICIAL_LAYOUTS))
def test_load_official_reproduces_outputs(preset, tmp_path):
    G, D = build(preset, backend="ref", **TINY[preset])
    _randomise(G, D)
    ck = _released_checkpoint(preset, G, D)
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    G2, D2 = load_official(str(path), preset, ema=False, backend="ref", **TINY[preset])
    Ge, _ = load_official(ck, preset, backend="ref", **TINY[preset])
    z = torch.randn(2, G.latent_dim)
    torch.manual_seed(5)
    x = G(z)
    torch.manual_seed(5)
    assert torch.equal(G2(z), x)
    torch.manual_seed(6)
    d = D(x)
    torch.manual_seed(6)
    assert torch.equal(D2(x), d)
    for (n, p), (_, q) in zip(G.named_parameters(), Ge.named_parameters()):
        assert torch.equal(q, 0.5 * p), n  # ema=True reads avg_gen_state_dict


def test_load_official_errors(tmp_path):
    preset, tiny = "cifar10", TINY["cifar10"]
    G, D = build(preset, **tiny)
    ck = _released_checkpoint(preset, G, D, prefix="")
    extra = dict(ck, dis_state_dict={**ck["dis_state_dict"], "blocks_9.0.attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unmapped keys \['blocks_9\.0\.attn\.qkv\.weight'\]"):
        load_official(extra, preset, **tiny)
    short = dict(ck, gen_state_dict={k: v for k, v in ck["gen_state_dict"].items() if k != "l1.bias"})
    with pytest.raises(ValueError, match=r"missing keys \['l1\.bias'\]"):
        load_official(short, preset, ema=False, **tiny)
    bad_idx = {k: (v.flip(0) if k.endswith("relative_position_index") else v)
               for k, v in ck["dis_state_dict"].items()}
    with pytest.raises(ValueError, match="buffer 'blocks_1.0.attn.relative_position_index'"):
        load_official(dict(ck, dis_state_dict=bad_idx), preset, **tiny)
    with pytest.raises(ValueError, match=r"'l1\.weight' has shape .*needs"):
        load_official(ck, preset, latent_dim=16, **{k: v for k, v in tiny.items() if k != "latent_dim"})
    with pytest.raises(ValueError, match="no 'avg_gen_state_dict'"):
        load_official({"gen_state_dict": ck["gen_state_dict"]}, preset, **tiny)
    with pytest.raises(ValueError, match="preset must be one of"):
        load_official(ck, "celeba64")
    G2, D2 = load_official({"avg_gen_state_dict": ck["avg_gen_state_dict"]}, preset, **tiny)
    assert D2 is None and G2.latent_dim == tiny["latent_dim"]


def test_filter_bank_buffer_is_checked():
    preset, tiny = "celebahq256", TINY["celebahq256"]
    G, D = build(preset, **tiny)
    ck = _released_checkpoint(preset, G, D)
    sd = official_to_package(ck["dis_state_dict"], D, "celeba")
    assert "Hz_fbank" not in sd and set(sd) == set(D.state_dict())
    bad = dict(ck["dis_state_dict"], **{"module.Hz_fbank": filter_bank() * 2})
    with pytest.raises(ValueError, match="buffer 'Hz_fbank'"):
        official_to_package(bad, D, "celeba")


def test_numpy1_scalar_in_file_loads(tmp_path):
    """best_fid pickled by numpy 1.x refers to numpy.core.multiarray.scalar; it loads safely."""
    preset, tiny = "cifar10", TINY["cifar10"]
    G, D = build(preset, **tiny)
    path = tmp_path / "ck.pth"
    torch.save(_released_checkpoint(preset, G, D), path)
    data = {}
    with zipfile.ZipFile(path) as z:
        for n in z.namelist():
            data[n] = z.read(n)
    pkl = next(n for n in data if n.endswith("data.pkl"))
    new = data[pkl].replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    assert new != data[pkl]
    data[pkl] = new
    with zipfile.ZipFile(path, "w") as z:
        for n, b in data.items():
            z.writestr(n, b)
    G2, _ = load_official(str(path), preset, **tiny)
    assert G2.latent_dim == tiny["latent_dim"]


class _Opaque:
    pass


def test_unsafe_file_is_refused(tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"gen_state_dict": {}, "args": _Opaque()}, path)
    with pytest.raises(ValueError, match=r"(?s)Unsupported global.*_Opaque.*weights_only=False"):
        load_official(str(path), "cifar10")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_official(str(tmp_path / "absent.pth"), "cifar10")
