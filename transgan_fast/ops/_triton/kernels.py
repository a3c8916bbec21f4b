"""Registration of the Triton kernels with the dispatch table (`_dispatch.register_kernel`)."""
from __future__ import annotations

from .._dispatch import register_kernel, register_limit
from .attention_bwd import attn_bwd, delta_kernel, dkdv_kernel, dq_kernel
from .attention_fwd import attn_fwd, attn_fwd_kernel
from .bias_grad import bias_reduce_kernel
from .shuffle import pixel_shuffle_seq, pixel_unshuffle_seq, shuffle_kernel, unshuffle_kernel
from .sparse import (sparse_av, sparse_av_kernel, sparse_avt, sparse_avt_kernel, sparse_qk,
                     sparse_qk_kernel)

register_kernel("triton", "attn_fwd")(attn_fwd)
register_kernel("triton", "attn_bwd")(attn_bwd)
register_kernel("triton", "pixel_shuffle_seq")(pixel_shuffle_seq)
register_kernel("triton", "pixel_unshuffle_seq")(pixel_unshuffle_seq)
register_kernel("triton", "sparse_qk")(sparse_qk)
register_kernel("triton", "sparse_av")(sparse_av)
register_kernel("triton", "sparse_avt")(sparse_avt)

# Every @triton.jit kernel of the backend (for torch's AOTAutograd cache key; see `_library`).
ALL_KERNELS = [attn_fwd_kernel, delta_kernel, dkdv_kernel, dq_kernel, shuffle_kernel, unshuffle_kernel,
               sparse_qk_kernel, sparse_av_kernel, sparse_avt_kernel, bias_reduce_kernel]

MAX_HEAD_DIM = 256     # the padded head dim DP of every tile configuration (tuning.DEFAULT_CONFIGS)
MAX_GRID_YZ = 65535    # heads and batch are the launch grid's y and z dimensions


@register_limit("triton")
def attention_limits(call):
    """The attention kernels' shape limits."""
    if call.op not in ("attention", "attention_qkv"):
        return None
    d = call.dim("d")
    if d is not None and d > MAX_HEAD_DIM:
        return f"head dim d={d} is above the supported {MAX_HEAD_DIM}"
    for name in ("heads", "B"):
        n = call.dim(name, 1)
        if n > MAX_GRID_YZ:
            return f"{name}={n} is above the launch grid's limit {MAX_GRID_YZ}"
    return None
