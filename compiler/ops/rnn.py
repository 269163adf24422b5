"""ONNX RNN (batch 1, the default tanh) -> one recurrent crossbar layer per direction
(:mod:`.recurrent`). Per time step t::

    a = [x_t ; h_{t-1}] @ Wcat + b          crossbars: I + H rows, H columns
    h = tanh(a)                             VFU: a at ``f`` bits, tanh at ``bits - 1``

The pre-activation saturates at +-2**TANH_INT_BITS, one integer bit fewer than the LSTM's
and GRU's sigmoid gates need: a saturated h reads tanh(4) = 1 - 6.7e-4 (below half of h's
last bit only up to 9 fraction bits; at 16-bit words it is about 22 of h's 2**-15 steps,
the largest error this cell makes). tanh is
evaluated at h's precision (a shifted up: a wide VFU intermediate), so h keeps ``bits - 1``
fraction bits rather than the pre-activation's ``f``.
"""
from dataclasses import dataclass

from simulator.functional import alu
from simulator.isa import Fn

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from .recurrent import (CellFormat, RecurrentLayer, add_recurrent_layer,
                        add_recurrent_outputs, check_common, initial_h, vector_ops, weights)

TANH_INT_BITS = 2


def rnn_format(bits: int) -> CellFormat:
    if bits < 4:
        raise UnsupportedOpError(f"RNN needs input_bits >= 4 (got {bits})")
    f = bits - 1 - TANH_INT_BITS
    return CellFormat(bits, f, f, bits - 1)


@dataclass
class RNNLayer(RecurrentLayer):
    """One column group, the pre-activation; the register state is h_{t-1} (unused: the
    cell is memoryless beyond h, which the crossbars read back from Y)."""

    def activation_spans(self):
        return []                                    # tanh at h's precision, in the cell

    def cell_ref(self, a, s):
        fmt = self.fmt
        h = alu(Fn.TANH, alu(Fn.SHL, a, fmt.fh - fmt.f, 0), None, fmt.fh)
        h = alu(Fn.CLIP, h, None, fmt.bits)
        return h, h

    def emit_cell(self, em, G, S, j0, n, layer):
        fmt = self.fmt
        a = G + j0
        alu_, alui = vector_ops(em, n, layer)
        alui(Fn.SHL, a, a, fmt.fh - fmt.f)
        alu_(Fn.TANH, a, a, imm=fmt.fh)
        alu_(Fn.CLIP, a, a, imm=fmt.bits)
        return a


def lower_rnn(node, ctx):
    check_common(node, ctx, node_attrs(node), ["tanh"])
    W, R, b, H = weights(ctx, node, 1)
    fmt = rnn_format(ctx.bits)
    h0 = initial_h(ctx, node, H)
    for d in range(len(W)):
        add_recurrent_layer(ctx, node, d, RNNLayer, W[d].T, R[d].T, b[d, :H] + b[d, H:], fmt,
                            h0[d], None)
    add_recurrent_outputs(ctx, node, H)
