"""transgan_fast: fused attention kernels for vision-transformer GANs, and TransGAN on top.

`transgan_fast.ops` holds the ops (each with a plain-PyTorch reference and fused backends);
`transgan_fast.backends()` reports which backends were built and which can run here.

The ops are re-exported here lazily: importing the package does not import torch until one of
them is used, so the command line can set OpenMP's environment before torch loads OpenMP.
"""
import importlib as _importlib

__version__ = "0.1.0"


def _ops():
    return _importlib.import_module(".ops", __name__)


def __getattr__(name):
    if name == "__all__":
        return list(_ops().__all__) + ["backends", "__version__"]
    if name == "backends":
        return _importlib.import_module(".ops._dispatch", __name__).backends
    ops = _ops()
    if name == "ops":
        return ops
    if name in ops.__all__:
        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__getattr__("__all__")))
