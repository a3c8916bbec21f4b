"""transgan_fast: fused attention kernels for vision-transformer GANs, and TransGAN on top.

`transgan_fast.ops` holds the ops (each with a plain-PyTorch reference and fused backends);
`transgan_fast.backends()` reports which backends were built and which can run here.
"""
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all
from .ops._dispatch import backends

__version__ = "0.1.0"
__all__ = list(_ops_all) + ["backends", "__version__"]
