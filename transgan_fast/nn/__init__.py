"""Modules built on the fused ops: TransGAN attention layers and blocks, and drop-in attention
for other ViT GANs (Swin window attention, StyleSwin double attention, NATTEN neighbourhood)."""
from .attention import Attention, CrossAttention, noise_source, trunc_normal_
from .blocks import Mlp, PatchEmbed, PixelNorm, TransformerBlock, make_norm, set_backend
from .natten import NeighborhoodAttention2D
from .replace import ReplaceReport, replace_attention
from .swin import DoubleWindowAttention, WindowAttention

__all__ = ["Attention", "CrossAttention", "noise_source", "trunc_normal_", "Mlp", "PatchEmbed", "PixelNorm",
           "TransformerBlock", "make_norm", "set_backend",
           "NeighborhoodAttention2D", "ReplaceReport", "replace_attention", "DoubleWindowAttention",
           "WindowAttention"]
