"""Metrics: SWD behaviour, Fréchet distance against scipy, FID/IS error paths."""
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from transgan_fast.train.data import ShapesSource
from transgan_fast.train.metrics import fid_is, frechet_distance, laplacian_pyramid, swd


def shapes(n, seed):
    return ShapesSource(n, 32, seed).images.float() / 127.5 - 1


def test_swd_identical_zero_different_positive():
    a, b = shapes(512, 0), shapes(512, 1)
    same = swd(a, a.clone(), patches_per_image=16, repeats=2)
    assert set(same) == {"swd/32", "swd/16", "swd/avg"}
    assert same["swd/avg"] == pytest.approx(0.0, abs=1e-6)
    fresh = swd(a, b, patches_per_image=32, repeats=2)["swd/avg"]  # same distribution
    noise = swd(a, torch.rand_like(a) * 2 - 1, patches_per_image=32, repeats=2)["swd/avg"]
    blurred = swd(a, torch.nn.functional.avg_pool2d(a, 3, 1, 1), patches_per_image=32, repeats=2)["swd/avg"]
    assert noise > 5 * fresh and blurred > 2.5 * fresh and noise > 100


def test_swd_errors():
    with pytest.raises(ValueError, match="equal C, H, W"):
        swd(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 16, 16))


def test_laplacian_pyramid_reconstructs():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    levels = laplacian_pyramid(x, 8)
    assert [l.shape[-1] for l in levels] == [32, 16, 8]
    y = levels[-1]
    for band in reversed(levels[:-1]):
        y = band + torch.nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, x)


def _ref_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    for d in (1, 5, 32):
        A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_ref_fd(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)
    # known Gaussians: identical -> 0; isotropic N(0, a^2 I) vs N(m, b^2 I) -> |m|^2 + d (a - b)^2
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7)
    d, a, b = 4, 2.0, 0.5
    m = np.ones(d)
    assert frechet_distance(np.zeros(d), a * a * np.eye(d), m, b * b * np.eye(d)) == pytest.approx(d + d * (a - b) ** 2)
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_fid_is_errors(tmp_path, monkeypatch):
    x = torch.zeros(4, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fid_is(x, x, None)
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        fid_is(x, x, str(tmp_path / "missing.pth"))
    w = tmp_path / "inception.pth"
    w.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    with pytest.raises(ImportError, match="torch-fidelity is not installed"):
        fid_is(x, x, str(w))
