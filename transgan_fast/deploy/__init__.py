"""Deploying a trained generator: export to an AOTInductor `.pt2` package or to ONNX, and run it.

    G, info = load_generator("runs/00000-cifar10-...")          # EMA weights
    export_generator(G, "pt2", "g.pt2", info=info)               # writes g.pt2 and g.pt2.json
    images = load_exported("g.pt2")(z)

See docs/export.md for what each artefact holds and the tolerances against eager G.
"""
from .export import (FORMATS, ExportError, ExportWrapper, export_generator, fused_ops_of,
                     load_generator, sidecar_path)
from .runtime import ExportedGenerator, RuntimeUnavailableError, load_exported

__all__ = ["FORMATS", "ExportError", "ExportWrapper", "export_generator", "fused_ops_of",
           "load_generator", "sidecar_path", "ExportedGenerator", "RuntimeUnavailableError",
           "load_exported"]
