"""ONNX -> Program for the xbarsim machine (see :mod:`compiler.pipeline`)."""
from .errors import (CompilerError, LoweringError, ModelFormatError, ModelTooBigError,
                     UnsupportedOpError)
from .pipeline import compile_model

compile = compile_model  # the design's name: compile(model, config) -> Program

__all__ = ["compile_model", "compile", "CompilerError", "LoweringError", "ModelFormatError",
           "ModelTooBigError", "UnsupportedOpError"]
