"""Resampling ops, every backend side by side: pixel_shuffle_seq (+ position-embedding add).

Spec §7 target: fused pixel_shuffle_seq + add >= 1.5x the reference permute/shuffle/permute/add.
Shapes are the TransGAN generator's upsampling points (CIFAR preset, batch 32).
"""
import pytest
import torch

import transgan_fast as tf
from conftest import QUICK, check_parity, record, skip_unless

# (B, H, W, C): CIFAR G stage 1->2 (8x8x1024) and 2->3 (16x16x256); a 64x64 map of 64 channels.
SHAPES = [(32, 8, 8, 1024), (32, 16, 16, 256), (8, 64, 64, 64)] if not QUICK else [(2, 8, 8, 64)]
BACKENDS = ["ref", "cpu", "cuda", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,H,W,C", SHAPES, ids=lambda v: str(v))
def test_pixel_shuffle_pos(benchmark, backend, B, H, W, C):
    skip_unless(backend, "cpu", "pixel_shuffle_seq")
    x = torch.randn(B, H * W, C)
    pos = torch.randn(1, 4 * H * W, C // 4)
    ref = tf.pixel_shuffle_seq_ref(x.double(), (H, W), pos.double())
    check_parity(tf.pixel_shuffle_seq(x, (H, W), pos, backend=backend), ref)
    record(benchmark, f"pixel_shuffle_seq+pos-{B}x{H}x{W}x{C}",
           lambda: tf.pixel_shuffle_seq(x, (H, W), pos, backend=backend), rounds=20,
           backend=backend, bytes=x.numel() * 4 * 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_shuffle_pos_fwd_bwd(benchmark, backend):
    B, H, W, C = (2, 8, 8, 64) if QUICK else (32, 16, 16, 256)
    skip_unless(backend, "cpu", "pixel_shuffle_seq")
    x = torch.randn(B, H * W, C, requires_grad=True)
    pos = torch.randn(1, 4 * H * W, C // 4, requires_grad=True)
    g = torch.randn(B, 4 * H * W, C // 4)

    def step():
        out = tf.pixel_shuffle_seq(x, (H, W), pos, backend=backend)
        torch.autograd.grad(out, (x, pos), g)

    record(benchmark, f"pixel_shuffle_seq+pos-fwdbwd-{B}x{H}x{W}x{C}", step, rounds=20, backend=backend)
