"""The compiler's exceptions: one root (a subclass of xbarsim's), a subclass per concern."""
from simulator.errors import XbarsimError


class CompilerError(XbarsimError, ValueError):
    """The model cannot be compiled for this machine."""


class ModelFormatError(CompilerError):
    """The file is not a valid ONNX model (or escapes its folder for external data)."""


class UnsupportedOpError(CompilerError):
    """An ONNX op (or an attribute of one) the compiler cannot lower."""


class LoweringError(CompilerError):
    """Lowering one node failed; the message names the node and op."""


class ModelTooBigError(CompilerError):
    """The model needs more crossbars than the node has. ``tiles_needed``: the smallest
    ``node.tiles`` the placement fits on (None when unknown)."""

    def __init__(self, message: str, tiles_needed: int | None = None):
        super().__init__(message)
        self.tiles_needed = tiles_needed
