"""Recurrent layers (ONNX LSTM, GRU and RNN; forward, batch 1) -> one recurrent crossbar layer.

Per time step t, every gate's matrix product is one crossbar product::

    z = [x_t ; h_{t-1}] @ Wcat + b          crossbars: I + H rows, 4H columns (RNN: H)

and the cell (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`) turns the requantized columns into
the new state on the VFU. The layer is an :class:`~compiler.ir.MVMLayer` (partition and placement
treat ``Wcat`` like any fully connected weight) that generates its own code
(:mod:`._recurrent_code`): one loop over the time steps, so the program does not grow with
the sequence. ``h_t`` is stored into the output ``Y`` in tile memory; the next step's
crossbar input loads it back from there (the load waits for the store's valid bit, across
cores and, via the tile control units, tiles). The cell's own state (an LSTM's ``c``, a
GRU's ``h``) stays in the home core's registers for the whole sequence.

Fixed point: ``x`` arrives at its calibrated scale ``s_x``, ``h`` has the fixed scale
``2**-(bits-1)`` (|h| < 1). Each column of ``Wcat`` is quantized jointly over its x rows
(times ``s_x``) and h rows (times ``s_h``), so both halves add up in one accumulator of scale
``s_acc[n]``; a per-column multiplier moves it to ``f`` fraction bits for the activations.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import MVMLayer, multiplier, node_attrs, padded, requantize
from ..quantize import quantize_weight
from .gather import add_copy, buffer_positions

H_SPACE = 1 << 40
"""Row offsets at or above this address h_{t-1} (word ``off - H_SPACE`` of the previous
step's hidden state) rather than the input sequence; the gap keeps partition's contiguous
runs from straddling the two sources."""

GATE_INT_BITS = 3    # gate pre-activations saturate at +-8 (sigmoid(8) = 1 - 3.4e-4)


@dataclass(frozen=True)
class CellFormat:
    """Fixed-point formats of one recurrent cell: word width and fraction bits."""

    bits: int
    f: int      # gate pre-activations and activations
    fc: int     # an LSTM's cell state (a GRU has none: = f)
    fh: int     # hidden state (= bits - 1)
    fx: int = 0  # a GRU's candidate columns (wider range than the gates); 0: = f

    def column_frac(self, hidden: int, linear_cols: int = 0) -> np.ndarray:
        """Fraction bits of each of the 4H gate columns: ``f``, and ``fx`` for the last
        ``linear_cols`` (columns no activation saturates right away)."""
        frac = np.full(4 * hidden, self.f)
        if linear_cols:
            frac[-linear_cols:] = self.fx or self.f
        return frac


@dataclass
class RecurrentLayer(MVMLayer):
    """A forward recurrent layer over ``steps`` time steps. ``weight`` (I + H, 4H): rows x_t
    then h_{t-1}; columns the cell's four gate groups. ``x_pos``: buffer offset of x_t[k] at
    t = 0, ``x_step``: offset between time steps. Output: Y (steps * H words, t-major).
    ``h0``: the initial hidden state (fh bits), the crossbars' first h input; ``s0``: the
    initial state the home core keeps in registers. Subclasses define the cell:
    :meth:`activation_spans`, :meth:`cell_ref` and its emitting twin :meth:`emit_cell`."""

    steps: int = 1
    hidden: int = 1
    x_pos: np.ndarray = None
    x_step: int = 0
    fmt: CellFormat = None
    h0: np.ndarray = None
    s0: np.ndarray = None

    def activation_spans(self) -> list[tuple[Fn, int, int]]:
        """(function, first column, end column) applied to the requantized gate columns;
        columns outside every span stay linear at ``f`` bits."""
        raise NotImplementedError

    def cell_ref(self, a: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gate activations (B, 4H) and state -> (new state, h_t), on integers."""
        raise NotImplementedError

    def emit_cell(self, em, G: int, S: int, j0: int, n: int, layer: int) -> int:
        """Emit the cell update of units j0..j0+n (gates in G: four blocks of H; state in
        S); return the register holding h_t. Twin of :meth:`cell_ref`."""
        raise NotImplementedError

    def gates_ref(self, acc: np.ndarray) -> np.ndarray:
        """Accumulators -> gate activations at ``f`` bits. Twin of
        :func:`._recurrent_code.emit_gates`."""
        z = requantize(acc + self.bias, self.mult, self.shift, self.fmt.bits)
        for fn, lo, hi in self.activation_spans():
            z[:, lo:hi] = alu(fn, z[:, lo:hi], None, self.fmt.f)
        return z

    def row_offsets(self, t_in):
        return np.concatenate([self.x_pos, H_SPACE + np.arange(self.hidden)]).astype(np.int64)

    def generate_code(self, cg, i, core_em, tile_em, lay):
        from ._recurrent_code import generate_recurrent
        generate_recurrent(cg, i, self, core_em, tile_em, lay)

    def reference(self, ins, tensors):
        B = ins[0].shape[0]
        H, T = self.hidden, self.steps
        st = tensors[self.inputs[0]]
        while st.alias_of is not None:
            st = tensors[st.alias_of]
        buf = padded(ins[0], st)
        h = np.broadcast_to(self.h0, (B, H)).astype(np.int64)
        s = np.broadcast_to(self.s0, (B, H)).astype(np.int64)
        ys = []
        for t in range(T):
            x = buf[:, self.x_pos + t * self.x_step]
            s, h = self.cell_ref(self.gates_ref(np.concatenate([x, h], axis=1) @ self.weight), s)
            ys.append(h)
        return np.concatenate(ys, axis=1)


def vector_ops(em, n: int, layer: int):
    """Emitters ``alu(fn, dst, a, b=0, imm=0)`` and ``alui(fn, dst, a, imm)`` of n-word
    vector instructions, for a cell's :meth:`RecurrentLayer.emit_cell`."""
    def alu_(fn, dst, a, b=0, imm=0):
        em.emit(Op.ALU, fn=fn, dst=dst, src1=a, src2=b, imm=imm, vec=n, layer=layer)

    def alui(fn, dst, a, imm):
        em.emit(Op.ALUI, fn=fn, dst=dst, src1=a, imm=imm, vec=n, layer=layer)
    return alu_, alui


def opt_const(ctx, node, k: int, what: str):
    """Optional input k: None if absent, else its constant value (non-constant: refused)."""
    if len(node.input) <= k or not node.input[k]:
        return None
    v = ctx.const(node.input[k])
    if v is None:
        raise UnsupportedOpError(f"{node.op_type} {what} (input {k}) must be a constant")
    return np.asarray(v, np.float64)


def _dec(v):
    return v.decode() if isinstance(v, bytes) else v


def check_common(node, ctx, a: dict, default_activations: list[str]) -> tuple[int, int, int]:
    """Refuse what neither cell supports; return (T, B, I) of the input sequence."""
    op = node.op_type
    T, B, I = ctx.shape(node.input[0])
    direction = _dec(a.get("direction", "forward"))
    if direction != "forward":
        raise UnsupportedOpError(f"{op} direction={direction!r}: only 'forward' is supported")
    acts = [_dec(v).lower() for v in a.get("activations", [])]
    if acts and acts != default_activations:
        raise UnsupportedOpError(f"{op} activations {acts}: only the default "
                                 f"{default_activations} is supported")
    if "clip" in a:
        raise UnsupportedOpError(f"{op} cell clipping (attribute clip) is not supported")
    if a.get("layout", 0):
        raise UnsupportedOpError(f"{op} layout=1 (batch-major) is not supported; onnxruntime, "
                                 f"the calibration reference, does not run it either")
    if B != 1:
        raise UnsupportedOpError(f"{op} batch size {B}: the compiler runs batch 1")
    seq = opt_const(ctx, node, 4, "sequence_lens")
    if seq is not None and not np.all(seq == T):
        raise UnsupportedOpError(f"{op} sequence_lens shorter than the sequence is not "
                                 f"supported (variable-length sequences)")
    if node.input[0] in ctx.prog.inputs:
        # The frontend fixes a graph input's first dimension as the batch, which for a
        # time-major (seq, batch, features) input would silently cut the sequence to 1.
        raise UnsupportedOpError(
            f"{op} reads graph input {node.input[0]!r} time-major (seq, batch, features); "
            f"graph inputs are batch-first here: export with batch_first=True (torch), which "
            f"transposes inside the graph")
    return T, B, I


def weights(ctx, node, gates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(W, R, bias, H) of one direction: W (gates*H, I), R (gates*H, H), bias (2*gates*H:
    the input's then the recurrence's, zeros when absent)."""
    op = node.op_type
    W, R = (opt_const(ctx, node, k, n) for k, n in ((1, "weight W"), (2, "recurrence R")))
    if W is None or R is None:
        raise UnsupportedOpError(f"{op} needs constant W and R")
    if W.shape[0] != 1:
        raise UnsupportedOpError(f"{op} with more than one direction is not supported")
    H = int(node_attrs(node).get("hidden_size", R.shape[-1]))
    b = opt_const(ctx, node, 3, "bias B")
    b = np.zeros(2 * gates * H) if b is None else b.reshape(2 * gates * H)
    return W[0], R[0], b, H


def initial_h(ctx, node, H: int) -> np.ndarray:
    """The initial hidden state (input 5), zeros when absent."""
    h0 = opt_const(ctx, node, 5, "initial_h")
    return np.zeros(H) if h0 is None else h0.reshape(H)


def add_recurrent_layer(ctx, node, cls, wx: np.ndarray, wh: np.ndarray, bias: np.ndarray,
                        fmt: CellFormat, h0: np.ndarray, s0_int: np.ndarray,
                        col_frac: np.ndarray | None = None) -> None:
    """Quantize ``Wcat = [wx ; wh]`` (real, (I, 4H) and (H, 4H)), add the layer and its
    outputs Y and Y_h. ``bias`` (4H) is real; ``h0`` real; ``s0_int`` the register state;
    ``col_frac`` the fraction bits each column is requantized to (default: ``fmt.f``)."""
    op = node.op_type
    T, _, I = ctx.shape(node.input[0])
    H = wh.shape[0]
    # Where x_t[k] lives: an affine walk over t of fixed per-feature offsets.
    pos = buffer_positions(ctx, node.input[0]).reshape(T, I)
    step = int(pos[1, 0] - pos[0, 0]) if T > 1 else 0
    if not np.array_equal(pos, pos[:1] + step * np.arange(T)[:, None]):
        raise UnsupportedOpError(f"{op} input {node.input[0]!r}: time steps are not stored "
                                 f"a constant stride apart")
    s_x, s_h = ctx.tensor(node.input[0]).scale, 2.0 ** -fmt.fh
    wcat = np.vstack([wx * s_x, wh * s_h])                   # (I + H, 4H), per unit integer
    w_int, s_acc = quantize_weight(wcat, ctx.wbits)           # acc real = acc_int * s_acc[n]
    bias_int = np.rint(bias / s_acc).astype(np.int64)
    frac = np.full(wcat.shape[1], fmt.f) if col_frac is None else col_frac
    mult, shift = multiplier(s_acc * 2.0 ** frac)
    lim = 1 << (fmt.bits - 1)
    h0_int = np.clip(np.rint(h0 / s_h), -lim, lim - 1).astype(np.int64)

    y_name = node.output[0] if node.output and node.output[0] else f"{node.name}/Y"
    if T > 1 and ctx.is_graph_output(y_name):
        raise UnsupportedOpError(
            f"{op} output Y {y_name!r} is time-major (seq, 1, 1, hidden) but graph outputs "
            f"are batch-first here: transpose it in the graph (torch's batch_first=True "
            f"export does)")
    ctx.new_tensor(y_name, (T, 1, 1, H), s_h, as_map=False)
    ctx.add(cls(node.name, op, [node.input[0]], y_name, node=node.name, weight=w_int,
                bias=bias_int, mult=mult, shift=shift, out_bits=fmt.bits, w_scale=s_acc,
                steps=T, hidden=H, x_pos=pos[0].copy(), x_step=step, fmt=fmt, h0=h0_int,
                s0=s0_int))
    # Y_h = the last step of Y: a copy.
    if len(node.output) > 1 and node.output[1] and (
            ctx.consumers(node.output[1]) or ctx.is_graph_output(node.output[1])):
        add_copy(ctx, node, y_name, node.output[1], ctx.shape(node.output[1]),
                 (T - 1) * H + np.arange(H))
