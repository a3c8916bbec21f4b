"""Modules built on the fused ops: TransGAN attention layers and blocks, and drop-in attention
for other ViT GANs (Swin window attention, StyleSwin double attention, NATTEN neighbourhood)."""
from .attention import Attention, CrossAttention, trunc_normal_
from .blocks import Mlp, PatchEmbed, PixelNorm, TransformerBlock, make_norm, set_backend

__all__ = ["Attention", "CrossAttention", "trunc_normal_", "Mlp", "PatchEmbed", "PixelNorm",
           "TransformerBlock", "make_norm", "set_backend"]
