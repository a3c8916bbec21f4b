"""Registration of the Triton kernels with the dispatch table (`_dispatch.register_kernel`)."""
from __future__ import annotations

from .._dispatch import register_kernel
from .attention_fwd import attn_fwd

register_kernel("triton", "attn_fwd")(attn_fwd)
from .attention_bwd import attn_bwd  # noqa: E402

register_kernel("triton", "attn_bwd")(attn_bwd)
from .shuffle import pixel_shuffle_seq, pixel_unshuffle_seq  # noqa: E402

register_kernel("triton", "pixel_shuffle_seq")(pixel_shuffle_seq)
register_kernel("triton", "pixel_unshuffle_seq")(pixel_unshuffle_seq)
