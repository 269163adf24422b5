"""ONNX LSTM (batch 1, default activations) -> one recurrent crossbar layer per direction
(:mod:`.recurrent`). Per time step t (ONNX gate order i, o, f, c)::

    z  = [x_t ; h_{t-1}] @ Wcat + b          crossbars: I + H rows, 4H columns
    i, o, f = sigmoid(z_i, z_o, z_f)          VFU, fixed point with ``f`` fraction bits
    g  = tanh(z_c)
    c  = f * c + i * g                        cell state, ``fc`` fraction bits, in registers
    h  = o * tanh(c)                          hidden state, ``bits - 1`` fraction bits

The cell state's integer bits cover |c| <= |c_0| + T (each step adds at most 1), capped;
tanh(c) is evaluated at the gates' ``f`` bits (c shifted up: a wide VFU intermediate, like
the products), which halves the output error against tanh at ``fc`` bits.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from .recurrent import (GATE_INT_BITS, CellFormat, RecurrentLayer, add_recurrent_layer,
                        add_recurrent_outputs, check_common, initial_h, opt_const,
                        per_direction, vector_ops, weights)

CELL_INT_BITS_MAX = 6


def lstm_format(bits: int, steps: int, c0_max: float) -> CellFormat:
    fh = bits - 1
    f = max(bits - 1 - GATE_INT_BITS, 1)
    need = int(np.ceil(np.log2(c0_max + steps + 1)))
    fc = bits - 1 - min(max(need, 1), CELL_INT_BITS_MAX)
    fc = int(np.clip(fc, 1, f))
    if 2 * f < fh:
        raise UnsupportedOpError(f"LSTM needs input_bits >= 7 (got {bits})")
    return CellFormat(bits, f, fc, fh)


@dataclass
class LSTMLayer(RecurrentLayer):
    """Columns i, o, f, c gates; the register state is the cell state c (``fc`` bits)."""

    def activation_spans(self):
        H = self.hidden
        return [(Fn.SIGMOID, 0, 3 * H), (Fn.TANH, 3 * H, 4 * H)]

    def cell_ref(self, a, c):
        fmt, H = self.fmt, self.hidden
        i, o, f, g = (a[:, k * H:(k + 1) * H] for k in range(4))
        fc = alu(Fn.SHL, f * c, fmt.f - fmt.fc, 0)                    # f*c at 2f bits
        s = alu(Fn.SHR, i * g + fc, 2 * fmt.f - fmt.fc, 0)            # back to fc bits
        c = alu(Fn.CLIP, s, None, fmt.bits)
        tc = alu(Fn.TANH, alu(Fn.SHL, c, fmt.f - fmt.fc, 0), None, fmt.f)   # tanh at f bits
        h = alu(Fn.SHR, o * tc, 2 * fmt.f - fmt.fh, 0)
        return c, alu(Fn.CLIP, h, None, fmt.bits)

    def emit_cell(self, em, G, C, j0, n, layer):
        fmt, H = self.fmt, self.hidden
        i, o, f, g, c = G + j0, G + H + j0, G + 2 * H + j0, G + 3 * H + j0, C + j0
        alu_, alui = vector_ops(em, n, layer)
        alu_(Fn.MUL, f, f, c)
        alui(Fn.SHL, f, f, fmt.f - fmt.fc)
        alu_(Fn.MUL, i, i, g)
        alu_(Fn.ADD, i, i, f)
        alui(Fn.SHR, i, i, 2 * fmt.f - fmt.fc)
        alu_(Fn.CLIP, c, i, imm=fmt.bits)
        alui(Fn.SHL, g, c, fmt.f - fmt.fc)           # tanh(c) at the gates' precision
        alu_(Fn.TANH, g, g, imm=fmt.f)
        alu_(Fn.MUL, o, o, g)
        alui(Fn.SHR, o, o, 2 * fmt.f - fmt.fh)
        alu_(Fn.CLIP, o, o, imm=fmt.bits)
        return o


def lower_lstm(node, ctx):
    a = node_attrs(node)
    T, _, _ = check_common(node, ctx, a, ["sigmoid", "tanh", "tanh"])
    if a.get("input_forget", 0):
        raise UnsupportedOpError("LSTM with input_forget=1 (coupled gates) is not supported")
    p = opt_const(ctx, node, 7, "peephole weights P")
    if p is not None and np.any(p != 0):
        raise UnsupportedOpError("LSTM peephole connections (input P) are not supported")
    if len(node.output) > 2 and node.output[2] and (
            ctx.consumers(node.output[2]) or ctx.is_graph_output(node.output[2])):
        raise UnsupportedOpError("LSTM output Y_c (the last cell state) is not supported; "
                                 "use Y or Y_h")
    W, R, b, H = weights(ctx, node, 4)
    h0, c0 = initial_h(ctx, node, H), per_direction(ctx, node, 6, "initial_c", H)
    if np.abs(c0).max(initial=0) >= 2 ** CELL_INT_BITS_MAX:
        raise UnsupportedOpError(
            f"LSTM initial_c reaches {np.abs(c0).max():.4g}: the cell state is stored with "
            f"at most {CELL_INT_BITS_MAX} integer bits, so |initial_c| < "
            f"{2 ** CELL_INT_BITS_MAX} is supported")
    fmt = lstm_format(ctx.bits, T, float(np.abs(c0).max(initial=0)))
    lim = 1 << (fmt.bits - 1)
    c0_int = np.clip(np.rint(c0 * 2.0 ** fmt.fc), -lim, lim - 1).astype(np.int64)
    for d in range(len(W)):
        add_recurrent_layer(ctx, node, d, LSTMLayer, W[d].T, R[d].T,
                            b[d, :4 * H] + b[d, 4 * H:], fmt, h0[d], c0_int[d])
    add_recurrent_outputs(ctx, node, H)
