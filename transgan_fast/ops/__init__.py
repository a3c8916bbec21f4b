"""Fused ops for vision-transformer GANs: attention (grid, local, packed qkv) and resampling.

Every op takes `backend="auto" | "ref" | "cpu" | "cuda" | "triton"`; see `transgan_fast.backends()`.
"""
from ._dispatch import BackendUnavailableError, backends
from .attention import (attention, attention_qkv, attention_ref, grid_attention,
                        grid_attention_ref, local_attention)
from .geometry import AttnGeometry, grid_geometry, local_geometry
from .resample import (avg_pool_seq, avg_pool_seq_ref, bicubic_upsample_seq,
                       bicubic_upsample_seq_ref, pixel_norm, pixel_norm_ref, pixel_shuffle_seq,
                       pixel_shuffle_seq_ref, pixel_unshuffle_seq, pixel_unshuffle_seq_ref)
from .schedule import LocalitySchedule

__all__ = [
    "BackendUnavailableError", "backends", "attention", "attention_qkv", "attention_ref",
    "grid_attention", "grid_attention_ref", "local_attention", "AttnGeometry", "grid_geometry",
    "local_geometry", "avg_pool_seq", "avg_pool_seq_ref", "bicubic_upsample_seq",
    "bicubic_upsample_seq_ref", "pixel_norm", "pixel_norm_ref", "pixel_shuffle_seq",
    "pixel_shuffle_seq_ref", "pixel_unshuffle_seq", "pixel_unshuffle_seq_ref", "LocalitySchedule",
]
