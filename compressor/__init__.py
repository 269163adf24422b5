"""ADMM pruning and quantization for ReRAM crossbar accelerators (torch).

Every constraint is stated in the crossbar geometry (:mod:`compressor.geometry`) and is a
Euclidean projection (:mod:`compressor.projections`); :func:`compress` runs ADMM with them,
retrains with the masks frozen and snaps to the levels; :func:`export_qdq` writes a QDQ ONNX
model with per-layer metadata for the compiler; :func:`evaluate_hardware` compiles and
simulates it and says what the chip pays (:mod:`compressor.hardware`).

``geometry``, ``projections`` and ``constraints`` need only numpy; the rest imports torch.
"""
from importlib import import_module

from .constraints import Constraint, QuantSpec
from .errors import CompressionError
from .geometry import CrossbarGeometry, level_range
from .recipes import Recipe, load_recipe, parse_recipe, shipped_recipes

_LAZY = {
    "compress": "compressor.pipeline",
    "CompressionResult": "compressor.pipeline",
    "ADMM": "compressor.admm",
    "export_qdq": "compressor.export",
    "fold_pow2_scales": "compressor.fold",
    "check_foldable": "compressor.fold",
    "evaluate_hardware": "compressor.hardware",
    "accuracy_under_variation": "compressor.hardware",
}

__all__ = ["ADMM", "CompressionError", "CompressionResult", "Constraint", "CrossbarGeometry",
           "QuantSpec", "Recipe", "accuracy_under_variation", "check_foldable", "compress",
           "evaluate_hardware", "export_qdq", "fold_pow2_scales", "level_range", "load_recipe",
           "parse_recipe", "shipped_recipes"]


def __getattr__(name):
    # PEP 562: torch-using modules load on first use, so numpy-only users skip torch.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
