"""ONNX LSTM (forward, batch 1, default activations) -> one recurrent crossbar layer.

Per time step t (ONNX gate order i, o, f, c; all on one crossbar matrix)::

    z  = [x_t ; h_{t-1}] @ Wcat + b          crossbars: I + H rows, 4H columns
    i, o, f = sigmoid(z_i, z_o, z_f)          VFU, fixed point with ``f`` fraction bits
    g  = tanh(z_c)
    c  = f * c + i * g                        cell state, ``fc`` fraction bits, in registers
    h  = o * tanh(c)                          hidden state, ``bits - 1`` fraction bits

The layer is an :class:`~compiler.ir.MVMLayer` (partition and placement treat ``Wcat`` like
any fully connected weight) that generates its own code (:mod:`._lstm_code`): one loop over
the time steps, so the program does not grow with the sequence. ``h_t`` is stored into the
output ``Y`` in tile memory; the next step's crossbar input loads it back from there (the
load waits for the store's valid bit, across cores and, via the tile control units, tiles).

Fixed point: ``x`` arrives at its calibrated scale ``s_x``, ``h`` has the fixed scale
``2**-(bits-1)`` (|h| < 1). Each column of ``Wcat`` is quantized jointly over its x rows
(times ``s_x``) and h rows (times ``s_h``), so both halves add up in one accumulator of scale
``s_acc[n]``; a per-column multiplier moves it to ``f`` fraction bits for the activations.
The cell state's integer bits cover |c| <= |c_0| + T (each step adds at most 1), capped;
tanh(c) is evaluated at the gates' ``f`` bits (c shifted up: a wide VFU intermediate, like
the products), which halves the output error against tanh at ``fc`` bits.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn

from ..errors import UnsupportedOpError
from ..ir import MVMLayer, multiplier, node_attrs, padded, requantize
from ..quantize import quantize_weight
from .gather import add_copy, buffer_positions

H_SPACE = 1 << 40
"""Row offsets at or above this address h_{t-1} (word ``off - H_SPACE`` of the previous
step's hidden state) rather than the input sequence; the gap keeps partition's contiguous
runs from straddling the two sources."""

GATE_INT_BITS = 3    # gate pre-activations saturate at +-8 (sigmoid(8) = 1 - 3.4e-4)
CELL_INT_BITS_MAX = 6


@dataclass(frozen=True)
class CellFormat:
    """Fixed-point formats of one LSTM cell: word width and fraction bits."""

    bits: int
    f: int      # gate pre-activations and activations
    fc: int     # cell state
    fh: int     # hidden state (= bits - 1)

    @classmethod
    def choose(cls, bits: int, steps: int, c0_max: float) -> "CellFormat":
        fh = bits - 1
        f = max(bits - 1 - GATE_INT_BITS, 1)
        need = int(np.ceil(np.log2(c0_max + steps + 1)))
        fc = bits - 1 - min(max(need, 1), CELL_INT_BITS_MAX)
        fc = int(np.clip(fc, 1, f))
        if 2 * f < fh:
            raise UnsupportedOpError(f"LSTM needs input_bits >= 7 (got {bits})")
        return cls(bits, f, fc, fh)


# ---- the cell's VFU arithmetic, defined once for the reference, once for the code ------
# (the emitting twin is _lstm_code.emit_gates / emit_cell; keep the two in step)

def gates_ref(acc: np.ndarray, L: "LSTMLayer") -> np.ndarray:
    """Accumulators (+ bias) -> gate activations: i, o, f sigmoid, c tanh, ``f`` bits."""
    z = requantize(acc + L.bias, L.mult, L.shift, L.fmt.bits)
    H3 = 3 * L.hidden
    return np.concatenate([alu(Fn.SIGMOID, z[:, :H3], None, L.fmt.f),
                           alu(Fn.TANH, z[:, H3:], None, L.fmt.f)], axis=1)


def cell_ref(fmt: CellFormat, i, o, f, g, c):
    """One cell update on integers: returns (c_t, h_t)."""
    fc = alu(Fn.SHL, f * c, fmt.f - fmt.fc, 0)                    # f*c at 2f bits
    s = alu(Fn.SHR, i * g + fc, 2 * fmt.f - fmt.fc, 0)            # back to fc bits
    c = alu(Fn.CLIP, s, None, fmt.bits)
    tc = alu(Fn.TANH, alu(Fn.SHL, c, fmt.f - fmt.fc, 0), None, fmt.f)   # tanh at f bits
    h = alu(Fn.SHR, o * tc, 2 * fmt.f - fmt.fh, 0)
    return c, alu(Fn.CLIP, h, None, fmt.bits)


@dataclass
class LSTMLayer(MVMLayer):
    """A forward LSTM over ``steps`` time steps. ``weight`` (I + H, 4H): rows x_t then
    h_{t-1}; columns i, o, f, c gates. ``x_pos``: buffer offset of x_t[k] at t = 0,
    ``x_step``: offset between time steps. Output: Y (steps * H words, t-major)."""

    steps: int = 1
    hidden: int = 1
    x_pos: np.ndarray = None
    x_step: int = 0
    fmt: CellFormat = None
    h0: np.ndarray = None       # (H,) initial hidden state, fh bits
    c0: np.ndarray = None       # (H,) initial cell state, fc bits

    def row_offsets(self, t_in):
        return np.concatenate([self.x_pos, H_SPACE + np.arange(self.hidden)]).astype(np.int64)

    def generate_code(self, cg, i, core_em, tile_em, lay):
        from ._lstm_code import generate_lstm
        generate_lstm(cg, i, self, core_em, tile_em, lay)

    def reference(self, ins, tensors):
        B = ins[0].shape[0]
        H, T = self.hidden, self.steps
        st = tensors[self.inputs[0]]
        while st.alias_of is not None:
            st = tensors[st.alias_of]
        buf = padded(ins[0], st)
        h = np.broadcast_to(self.h0, (B, H)).astype(np.int64)
        c = np.broadcast_to(self.c0, (B, H)).astype(np.int64)
        ys = []
        for t in range(T):
            x = buf[:, self.x_pos + t * self.x_step]
            a = gates_ref(np.concatenate([x, h], axis=1) @ self.weight, self)
            c, h = cell_ref(self.fmt, a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:],
                            c)
            ys.append(h)
        return np.concatenate(ys, axis=1)


def _opt_const(ctx, node, k, what):
    """Optional input k: None if absent, else its constant value (non-constant: refused)."""
    if len(node.input) <= k or not node.input[k]:
        return None
    v = ctx.const(node.input[k])
    if v is None:
        raise UnsupportedOpError(f"LSTM {what} (input {k}) must be a constant")
    return np.asarray(v, np.float64)


def _check(node, ctx, a, T, B):
    def dec(v):
        return v.decode() if isinstance(v, bytes) else v
    direction = dec(a.get("direction", "forward"))
    if direction != "forward":
        raise UnsupportedOpError(f"LSTM direction={direction!r}: only 'forward' is supported")
    acts = [dec(v).lower() for v in a.get("activations", [])]
    if acts and acts != ["sigmoid", "tanh", "tanh"]:
        raise UnsupportedOpError(f"LSTM activations {acts}: only the default "
                                 f"(Sigmoid, Tanh, Tanh) is supported")
    if "clip" in a:
        raise UnsupportedOpError("LSTM cell clipping (attribute clip) is not supported")
    if a.get("layout", 0):
        raise UnsupportedOpError("LSTM layout=1 (batch-major) is not supported; onnxruntime, "
                                 "the calibration reference, does not run it either")
    if a.get("input_forget", 0):
        raise UnsupportedOpError("LSTM with input_forget=1 (coupled gates) is not supported")
    if B != 1:
        raise UnsupportedOpError(f"LSTM batch size {B}: the compiler runs batch 1")
    seq = _opt_const(ctx, node, 4, "sequence_lens")
    if seq is not None and not np.all(seq == T):
        raise UnsupportedOpError("LSTM sequence_lens shorter than the sequence is not "
                                 "supported (variable-length sequences)")
    p = _opt_const(ctx, node, 7, "peephole weights P")
    if p is not None and np.any(p != 0):
        raise UnsupportedOpError("LSTM peephole connections (input P) are not supported")
    if len(node.output) > 2 and node.output[2] and (
            ctx.consumers(node.output[2]) or ctx.is_graph_output(node.output[2])):
        raise UnsupportedOpError("LSTM output Y_c (the last cell state) is not supported; "
                                 "use Y or Y_h")


def lower_lstm(node, ctx):
    a = node_attrs(node)
    T, B, I = ctx.shape(node.input[0])
    _check(node, ctx, a, T, B)
    if node.input[0] in ctx.prog.inputs:
        # The frontend fixes a graph input's first dimension as the batch, which for a
        # time-major (seq, batch, features) input would silently cut the sequence to 1.
        raise UnsupportedOpError(
            f"LSTM reads graph input {node.input[0]!r} time-major (seq, batch, features); "
            f"graph inputs are batch-first here: export with batch_first=True (torch), which "
            f"transposes inside the graph")
    W, R = (_opt_const(ctx, node, k, n) for k, n in ((1, "weight W"), (2, "recurrence R")))
    if W is None or R is None:
        raise UnsupportedOpError("LSTM needs constant W and R")
    if W.shape[0] != 1:
        raise UnsupportedOpError("LSTM with more than one direction is not supported")
    H = int(a.get("hidden_size", R.shape[-1]))
    Bias = _opt_const(ctx, node, 3, "bias B")
    b = np.zeros(4 * H) if Bias is None else Bias.reshape(8 * H)[:4 * H] + \
        Bias.reshape(8 * H)[4 * H:]
    h0 = _opt_const(ctx, node, 5, "initial_h")
    c0 = _opt_const(ctx, node, 6, "initial_c")
    h0 = np.zeros(H) if h0 is None else h0.reshape(H)
    c0 = np.zeros(H) if c0 is None else c0.reshape(H)

    # Where x_t[k] lives: an affine walk over t of fixed per-feature offsets.
    pos = buffer_positions(ctx, node.input[0]).reshape(T, I)
    step = int(pos[1, 0] - pos[0, 0]) if T > 1 else 0
    if not np.array_equal(pos, pos[:1] + step * np.arange(T)[:, None]):
        raise UnsupportedOpError(f"LSTM input {node.input[0]!r}: time steps are not stored "
                                 f"a constant stride apart")

    bits = ctx.bits
    fmt = CellFormat.choose(bits, T, float(np.abs(c0).max(initial=0)))
    s_x, s_h = ctx.tensor(node.input[0]).scale, 2.0 ** -fmt.fh
    wcat = np.vstack([W[0].T * s_x, R[0].T * s_h])            # (I + H, 4H), per unit integer
    w_int, s_acc = quantize_weight(wcat, ctx.wbits)           # acc real = acc_int * s_acc[n]
    bias_int = np.rint(b / s_acc).astype(np.int64)
    mult, shift = multiplier(s_acc * 2.0 ** fmt.f)
    lim = 1 << (bits - 1)
    h0_int = np.clip(np.rint(h0 / s_h), -lim, lim - 1).astype(np.int64)
    c0_int = np.clip(np.rint(c0 * 2.0 ** fmt.fc), -lim, lim - 1).astype(np.int64)

    y_name = node.output[0] if node.output and node.output[0] else f"{node.name}/Y"
    if T > 1 and ctx.is_graph_output(y_name):
        raise UnsupportedOpError(
            f"LSTM output Y {y_name!r} is time-major (seq, 1, 1, hidden) but graph outputs "
            f"are batch-first here: transpose it in the graph (torch's batch_first=True "
            f"export does)")
    ctx.new_tensor(y_name, (T, 1, 1, H), s_h, as_map=False)
    ctx.add(LSTMLayer(node.name, "LSTM", [node.input[0]], y_name, node=node.name,
                      weight=w_int, bias=bias_int, mult=mult, shift=shift, out_bits=bits,
                      w_scale=s_acc, steps=T, hidden=H, x_pos=pos[0].copy(), x_step=step,
                      fmt=fmt, h0=h0_int, c0=c0_int))
    # Y_h = the last step of Y: a copy.
    if len(node.output) > 1 and node.output[1] and (
            ctx.consumers(node.output[1]) or ctx.is_graph_output(node.output[1])):
        add_copy(ctx, node, y_name, node.output[1], ctx.shape(node.output[1]),
                 (T - 1) * H + np.arange(H))
