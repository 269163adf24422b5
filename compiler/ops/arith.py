"""Mul and Div by a constant, and Neg: a per-channel affine map (elementwise.add_affine).
A product or quotient of two activations is not supported (no data-dependent multiplier
path is worth it for the models we compile)."""
import numpy as np

from ..errors import UnsupportedOpError
from .elementwise import add_affine


def lower_mul(node, ctx):
    """Mul (either operand constant) and Div (constant divisor)."""
    a, b = (ctx.const(i) for i in node.input[:2])
    if (a is None) == (b is None):
        raise UnsupportedOpError(f"{node.op_type} needs exactly one constant operand "
                                 f"(got {'two' if a is not None else 'no'} constants)")
    if node.op_type == "Div":
        if b is None:
            raise UnsupportedOpError("Div by an activation is not supported (only by a "
                                     "constant)")
        b = np.asarray(b, np.float64)
        if np.any(b == 0):
            raise UnsupportedOpError("Div by a constant that contains zeros")
        k, x = 1.0 / b, node.input[0]
    else:
        k, x = (a, node.input[1]) if a is not None else (b, node.input[0])
    add_affine(node, ctx, ctx.tensor(x), np.asarray(k, np.float64), 0.0)


def lower_neg(node, ctx):
    add_affine(node, ctx, ctx.tensor(node.input[0]), -1.0, 0.0)
