"""Sample-quality metrics: sliced Wasserstein distance (weight-free), FID and IS (optional).

SWD follows Progressive GAN's multi-scale version: each image set is turned into a Laplacian
pyramid (5-tap binomial filter) from full resolution down to `min_res`; at every level
`patches_per_image` random 7×7 neighbourhoods are taken as 147-dim descriptors, each level's
descriptors are normalised per channel (own mean and std), and the sliced Wasserstein distance
between the two descriptor sets is the mean over `repeats × dirs` random unit projections of the
mean absolute difference of the sorted projections. Values are reported ×1e3 per level
(`swd/<res>`) and averaged (`swd/avg`). Patch positions and projections come from a seeded
generator, so identical sets give exactly 0.

FID and IS run through torch-fidelity (the `metrics` extra) with an Inception checkpoint the user
has on disk; nothing is downloaded. `frechet_distance` is our own float64 implementation.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["swd", "laplacian_pyramid", "frechet_distance", "fid_is"]


def _binomial(C: int, dtype, device) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype, device=device) / 16
    return (k[:, None] * k[None, :]).expand(C, 1, 5, 5)  # (C, 1, 5, 5) depthwise


def laplacian_pyramid(x: torch.Tensor, min_res: int = 16):
    """Levels `[band_0, band_1, ..., lowpass]` from full resolution down to `min_res`."""
    k = _binomial(x.shape[1], x.dtype, x.device)
    levels = []
    while x.shape[-1] > min_res and x.shape[-1] % 2 == 0:
        low = F.conv2d(F.pad(x, [2] * 4, mode="reflect"), k, groups=x.shape[1])[:, :, ::2, ::2]
        up = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        levels.append(x - up)
        x = low
    levels.append(x)
    return levels


def _descriptors(level: torch.Tensor, n: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    B, C, H, W = level.shape
    p = min(patch, H, W)
    ys = torch.randint(0, H - p + 1, (B, n), generator=gen)
    xs = torch.randint(0, W - p + 1, (B, n), generator=gen)
    off = torch.arange(p)
    rows = (ys[..., None] + off).view(B, n, p, 1)  # (B, n, p, 1)
    cols = (xs[..., None] + off).view(B, n, 1, p)  # (B, n, 1, p)
    flat = (rows * W + cols).view(B, 1, n * p * p).expand(B, C, n * p * p)
    d = level.flatten(2).gather(2, flat).view(B, C, n, p * p)  # (B, C, n, p*p)
    d = d.permute(0, 2, 1, 3).reshape(B * n, C, p * p)  # (B*n, C, p*p)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((d - mean) / std).flatten(1)  # (B*n, C*p*p)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, dirs: int, repeats: int,
                        gen: torch.Generator) -> float:
    total = 0.0
    for _ in range(repeats):
        proj = torch.randn(a.shape[1], dirs, generator=gen, dtype=a.dtype)
        proj /= proj.norm(dim=0, keepdim=True)
        pa = np.sort((a @ proj).numpy(), axis=0)  # (n, dirs); numpy's sort is ~3x torch's on CPU
        pb = np.sort((b @ proj).numpy(), axis=0)
        total += float(np.abs(pa - pb).mean())
    return total / repeats


@torch.no_grad()
def swd(a: torch.Tensor, b: torch.Tensor, patches_per_image: int = 64, patch: int = 7,
        min_res: int = 16, dirs: int = 128, repeats: int = 4, seed: int = 0) -> Dict[str, float]:
    """Multi-scale sliced Wasserstein distance between image sets `(N, 3, H, W)` in [-1, 1].

    Returns `{"swd/<res>": value×1e3 per pyramid level, "swd/avg": mean over levels}`.
    The two sets are cut to the same size.
    """
    if a.dim() != 4 or b.dim() != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"swd: a and b must be (N, C, H, W) with equal C, H, W; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    n = min(a.shape[0], b.shape[0])
    if n < 2:
        raise ValueError(f"swd: need at least 2 images per set; got {a.shape[0]} and {b.shape[0]}")
    a, b = a[:n].float().cpu(), b[:n].float().cpu()
    out = {}
    for la, lb in zip(laplacian_pyramid(a, min_res), laplacian_pyramid(b, min_res)):
        g = torch.Generator().manual_seed(seed)
        da = _descriptors(la, patches_per_image, patch, g)
        g = torch.Generator().manual_seed(seed)  # same positions in both sets
        db = _descriptors(lb, patches_per_image, patch, g)
        out[f"swd/{la.shape[-1]}"] = 1e3 * _sliced_wasserstein(
            da, db, dirs, repeats, torch.Generator().manual_seed(seed + 1))
    out["swd/avg"] = float(np.mean(list(out.values())))
    return out


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """`‖μ1−μ2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1 Σ2)^½)` in float64.

    `tr((Σ1 Σ2)^½)` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    `Σ1^½ Σ2 Σ1^½` (similar to Σ1 Σ2), which avoids a non-symmetric matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: need mu (d,) and sigma (d, d) with one d; got mu1 "
                         f"{mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


class _UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


def fid_is(fakes: torch.Tensor, reals: Optional[torch.Tensor], inception_weights: Optional[str],
           fid: bool = True, isc: bool = True, device: str = "cpu") -> Dict[str, float]:
    """FID (fakes vs reals) and IS (fakes) through torch-fidelity with local Inception weights.

    Images are `(N, 3, H, W)` in [-1, 1]. `inception_weights` is the path of torch-fidelity's
    `inception-v3-compat` checkpoint on disk; it is never downloaded.
    """
    if not inception_weights or not os.path.isfile(inception_weights):
        raise FileNotFoundError(
            f"fid_is: inception_weights={inception_weights!r} is not a file. FID/IS need the "
            f"torch-fidelity Inception checkpoint (pt_inception-2015-12-05) on disk; "
            f"transgan_fast never downloads it. Pass --inception-weights PATH.")
    try:
        import torch_fidelity
    except ImportError as exc:
        raise ImportError("fid_is: torch-fidelity is not installed; install the 'metrics' extra "
                          "(pip install torch-fidelity) to compute FID/IS") from exc
    if fid and reals is None:
        raise ValueError("fid_is: fid=True needs reals")

    def to_u8(x):
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    res = torch_fidelity.calculate_metrics(
        input1=_UInt8Images(to_u8(fakes)),
        input2=_UInt8Images(to_u8(reals)) if fid else None,
        fid=fid, isc=isc, cuda=device.startswith("cuda"), verbose=False,
        feature_extractor_weights_path=inception_weights)
    out = {}
    if fid:
        out["fid"] = float(res["frechet_inception_distance"])
    if isc:
        out["is"] = float(res["inception_score_mean"])
    return out
