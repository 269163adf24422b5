"""ONNX -> Program for the xbarsim machine (see :mod:`compiler.pipeline`).

``compile_model`` (and its alias ``compile``) load on first use, so importing a light
submodule (``compiler.sweep`` for the CLI, ``compiler.errors``) does not import onnx."""
from .errors import (CompilerError, LoweringError, ModelFormatError, ModelTooBigError,
                     UnsupportedOpError)


def __getattr__(name: str):
    if name in ("compile_model", "compile"):   # the design's name: compile(model, config)
        from .pipeline import compile_model
        return compile_model
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")


__all__ = ["compile_model", "compile", "CompilerError", "LoweringError", "ModelFormatError",
           "ModelTooBigError", "UnsupportedOpError"]
