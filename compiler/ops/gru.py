"""ONNX GRU (batch 1, default activations, ``linear_before_reset=1``) -> one recurrent
crossbar layer per direction (:mod:`.recurrent`). Per time step t (ONNX gate order z, r, h)::

    [a_z a_r a_x a_h] = [x_t ; h_{t-1}] @ Wcat + b    crossbars: I + H rows, 4H columns
    z, r = sigmoid(a_z, a_r)                           VFU, ``f`` fraction bits
    n  = tanh(a_x + r * a_h)                           a_x = W_h x_t + Wb_h
                                                       a_h = R_h h_{t-1} + Rb_h
    h  = n + z * (h_{t-1} - n)                         = (1 - z) n + z h_{t-1}, ``bits - 1``
                                                         fraction bits, in registers

``Wcat`` has four column groups: z and r read both x_t and h_{t-1}; the candidate's input
part (``a_x``: only x rows nonzero) and its recurrent part (``a_h``: only h rows nonzero) are
separate columns so that the reset gate can scale the recurrent part alone (each at ``fx``
fraction bits, the integer bits of its own range: see :func:`gru_format`), which is what
``linear_before_reset=1`` means (and what torch's ``nn.GRU`` computes and exports). With
``linear_before_reset=0`` the reset gate multiplies h_{t-1} *before* R_h, which needs a
second crossbar product per step after the gates; it is refused.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from .recurrent import (GATE_INT_BITS, CellFormat, RecurrentLayer, add_recurrent_layer,
                        add_recurrent_outputs, check_common, initial_h, vector_ops, weights)


def gru_format(bits: int, bound: float) -> CellFormat:
    """``bound``: the largest |a_x| or |a_h| the weights allow. The gates saturate at
    +-2**GATE_INT_BITS like the LSTM's, but the candidate's two parts are added *before*
    their tanh, so each gets the integer bits of its own range (``fx`` fraction bits): a
    large a_x and a large a_h of opposite sign may sum to where tanh is not saturated."""
    if bits < 7:
        raise UnsupportedOpError(f"GRU needs input_bits >= 7 (got {bits})")
    f = bits - 1 - GATE_INT_BITS
    need = int(np.ceil(np.log2(bound))) if bound > 1 else 0
    fx = bits - 1 - int(np.clip(need, GATE_INT_BITS, bits - 3))
    return CellFormat(bits, f, f, bits - 1, fx)


@dataclass
class GRULayer(RecurrentLayer):
    """Columns z, r, a_x, a_h; the register state is h_{t-1} itself (``fh`` bits)."""

    def activation_spans(self):
        return [(Fn.SIGMOID, 0, 2 * self.hidden)]

    def cell_ref(self, a, h):
        fmt, H = self.fmt, self.hidden
        z, r, ax, ah = (a[:, k * H:(k + 1) * H] for k in range(4))
        rh = alu(Fn.SHR, r * ah, fmt.f, 0)                              # fx bits
        s = alu(Fn.SHL, ax + rh, fmt.f - fmt.fx, 0)                      # f bits, wide
        n = alu(Fn.SHL, alu(Fn.TANH, s, None, fmt.f), fmt.fh - fmt.f, 0)  # fh bits
        zd = alu(Fn.SHR, z * (h - n), fmt.f, 0)                         # fh bits
        h = alu(Fn.CLIP, n + zd, None, fmt.bits)
        return h, h

    def emit_cell(self, em, G, S, j0, n, layer):
        fmt, H = self.fmt, self.hidden
        z, r, ax, ah, h = G + j0, G + H + j0, G + 2 * H + j0, G + 3 * H + j0, S + j0
        alu_, alui = vector_ops(em, n, layer)
        alu_(Fn.MUL, ah, r, ah)
        alui(Fn.SHR, ah, ah, fmt.f)
        alu_(Fn.ADD, ax, ax, ah)
        alui(Fn.SHL, ax, ax, fmt.f - fmt.fx)          # the candidate at the gates' precision
        alu_(Fn.TANH, ax, ax, imm=fmt.f)
        alui(Fn.SHL, ax, ax, fmt.fh - fmt.f)          # n at the hidden state's precision
        alu_(Fn.SUB, ah, h, ax)
        alu_(Fn.MUL, ah, z, ah)
        alui(Fn.SHR, ah, ah, fmt.f)
        alu_(Fn.ADD, h, ax, ah)
        alu_(Fn.CLIP, h, h, imm=fmt.bits)
        return h


def lower_gru(node, ctx):
    a = node_attrs(node)
    check_common(node, ctx, a, ["sigmoid", "tanh"])
    if not a.get("linear_before_reset", 0):
        raise UnsupportedOpError(
            "GRU linear_before_reset=0 (the reset gate applied before the recurrent "
            "product) needs a second crossbar product per step and is not supported; "
            "linear_before_reset=1 (torch's nn.GRU) is")
    Ws, Rs, bs, H = weights(ctx, node, 3)
    h0 = initial_h(ctx, node, H)
    x_max = ctx.tensor(node.input[0]).scale * 2.0 ** (ctx.bits - 1)
    for d, (W, R, b) in enumerate(zip(Ws, Rs, bs)):
        I = W.shape[1]
        # Column groups z, r, a_x, a_h (see the module docstring).
        wx = np.zeros((I, 4 * H))
        wh = np.zeros((H, 4 * H))
        wx[:, :3 * H] = W.T                          # z, r, and the candidate's input part
        wh[:, :2 * H] = R[:2 * H].T                  # z, r
        wh[:, 3 * H:] = R[2 * H:].T                  # the candidate's recurrent part
        wb, rb = b[:3 * H], b[3 * H:]
        bias = np.concatenate([wb[:2 * H] + rb[:2 * H], wb[2 * H:], rb[2 * H:]])
        # |a_x| <= sum|W_h| max|x| + |Wb_h|, |a_h| <= sum|R_h| + |Rb_h| (|h| < 1), per unit
        bound = max(float((np.abs(W[2 * H:]).sum(axis=1) * x_max + np.abs(wb[2 * H:])).max()),
                    float((np.abs(R[2 * H:]).sum(axis=1) + np.abs(rb[2 * H:])).max()))
        fmt = gru_format(ctx.bits, bound)
        add_recurrent_layer(ctx, node, d, GRULayer, wx, wh, bias, fmt, h0[d], None,
                            fmt.column_frac(4 * H, linear_cols=2 * H))
    add_recurrent_outputs(ctx, node, H)
