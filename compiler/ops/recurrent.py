"""Recurrent layers (ONNX LSTM, GRU and RNN; batch 1) -> one recurrent crossbar layer per
direction.

Per time step t, every gate's matrix product is one crossbar product::

    z = [x_t ; h_{t-1}] @ Wcat + b          crossbars: I + H rows, 4H columns (RNN: H)

and the cell (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`) turns the requantized columns into
the new state on the VFU. The layer is an :class:`~compiler.ir.MVMLayer` (partition and placement
treat ``Wcat`` like any fully connected weight) that generates its own code
(:mod:`._recurrent_code`): one loop over the time steps, so the program does not grow with
the sequence. ``h_t`` is stored into the layer's output ``Y`` in tile memory (with two
directions, each layer's own, which a copy then interleaves into the node's Y); the next
step's crossbar input loads it back from there (the load waits for the store's valid bit, across
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
from ..ir import MVMLayer, node_attrs, padded, rescale_multiplier_bits
from ..quantize import quantize_weight
from ._mvm import fit_bias, requant_constants, sum_bound
from .concat import ConcatLayer, vector_concat_perm
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

    def column_frac(self, columns: int, linear_cols: int = 0) -> np.ndarray:
        """Fraction bits of each of the ``columns`` gate columns: ``f``, and ``fx`` for the
        last ``linear_cols`` (columns no activation saturates right away)."""
        frac = np.full(columns, self.f)
        if linear_cols:
            frac[-linear_cols:] = self.fx or self.f
        return frac


@dataclass
class RecurrentLayer(MVMLayer):
    """A recurrent layer over ``steps`` time steps, forward or (``reverse``) from the last
    step to the first. ``weight`` (I + H, G*H): rows x_t then h_{t-1} (h_{t+1} reversed);
    columns the cell's G gate groups (LSTM, GRU: 4; RNN: 1). ``x_pos``: buffer offset of
    x_t[k] at t = 0, ``x_step``: offset between time steps. Output: Y (steps * H words,
    t-major, h_t at Y[t] in either direction).
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
    reverse: bool = False

    def time_walk(self, base: int, stride: int) -> tuple[int, list[int]]:
        """(first address, [stride]) of a pointer that visits ``base + t * stride`` in the
        order this layer runs its time steps."""
        if self.reverse:
            return base + (self.steps - 1) * stride, [-stride]
        return base, [stride]

    def activation_spans(self) -> list[tuple[Fn, int, int]]:
        """(function, first column, end column) applied to the requantized gate columns;
        columns outside every span stay linear at ``f`` bits."""
        raise NotImplementedError

    def cell_ref(self, a: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gate activations (B, G*H) and state -> (new state, h_t), on integers."""
        raise NotImplementedError

    def emit_cell(self, em, G: int, S: int, j0: int, n: int, layer: int) -> int:
        """Emit the cell update of units j0..j0+n (gates in G: the cell's blocks of H; state
        in S); return the register holding h_t. Twin of :meth:`cell_ref`."""
        raise NotImplementedError

    def gates_ref(self, acc: np.ndarray) -> np.ndarray:
        """Accumulators -> gate activations at ``f`` bits. Twin of
        :func:`._recurrent_code.emit_gates`."""
        z = self.requant(acc + self.bias)     # pre-shift, multiply, shift, clip to fmt.bits
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
        ys = [None] * T
        for t in (range(T - 1, -1, -1) if self.reverse else range(T)):
            x = buf[:, self.x_pos + t * self.x_step]
            s, h = self.cell_ref(self.gates_ref(np.concatenate([x, h], axis=1) @ self.weight), s)
            ys[t] = h
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


DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}
"""ONNX's direction attribute -> the ``reverse`` flag of each direction, in its order."""


def directions(node) -> list[bool]:
    """The ``reverse`` flag of each direction the node runs (see :data:`DIRECTIONS`)."""
    return DIRECTIONS[_dec(node_attrs(node).get("direction", "forward"))]


def check_common(node, ctx, a: dict, default_activations: list[str]) -> tuple[int, int, int]:
    """Refuse what no cell supports; return (T, B, I) of the input sequence."""
    op = node.op_type
    T, B, I = ctx.shape(node.input[0])
    direction = _dec(a.get("direction", "forward"))
    if direction not in DIRECTIONS:
        raise UnsupportedOpError(f"{op} direction={direction!r}: choose from "
                                 f"{', '.join(DIRECTIONS)}")
    acts = [_dec(v).lower() for v in a.get("activations", [])]
    defaults = default_activations * len(DIRECTIONS[direction])
    if acts and acts != defaults:
        raise UnsupportedOpError(f"{op} activations {acts}: only the default "
                                 f"{defaults} is supported")
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
    source = _batch_axis_source(ctx, node.input[0])
    if source is not None:
        # The frontend fixes a graph input's first dimension as the batch, which for a
        # time-major (seq, batch, features) input would silently cut the sequence to 1.
        raise UnsupportedOpError(
            f"{op} reads graph input {source!r} time-major (seq, batch, features); graph "
            f"inputs are batch-first here: export with batch_first=True (torch), which "
            f"transposes inside the graph")
    return T, B, I


#: Ops that leave their input's first axis where it was (per element, or on the last axis).
_AXIS0_KEEPING = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                  "Elu", "Selu", "Softplus", "Clip", "Add", "Sub", "Mul", "Div", "Neg", "Abs",
                  "Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear"}


def _batch_axis_source(ctx, tensor: str) -> str | None:
    """The graph input whose first (batch) axis is ``tensor``'s first axis, reached through
    ops that keep that axis in place; None when a reordering op (Transpose, Reshape...) or
    only constants lie between them."""
    producer = {o: n for n in ctx.graph.nodes for o in n.output}
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in ctx.prog.inputs:
            return t
        n = producer.get(t)
        if n is not None and (n.op_type in _AXIS0_KEEPING or _keeps_axis0(ctx, n)):
            stack += [i for i in n.input if i]
    return None


def _keeps_axis0(ctx, n) -> bool:
    """A shape op that leaves its input's first axis first: Unsqueeze or Squeeze on other
    axes (torch's unbatched ``nn.LSTM`` export unsqueezes a (seq, features) input at 1),
    or a Reshape whose target copies dimension 0 (a 0 there)."""
    if n.op_type in ("Unsqueeze", "Squeeze"):
        axes = node_attrs(n).get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = ctx.const(n.input[1])
        if axes is None:                     # Squeeze of every 1-axis: the batch's too
            return False
        rank = len(ctx.shape(n.output[0] if n.op_type == "Unsqueeze" else n.input[0]))
        return all(int(a) % rank != 0 for a in np.atleast_1d(axes))
    if n.op_type == "Reshape" and not node_attrs(n).get("allowzero", 0):
        target = ctx.const(n.input[1])
        return target is not None and len(target) > 0 and int(target[0]) == 0
    return False


def weights(ctx, node, gates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(W, R, bias, H), each direction d at index d: W (D, gates*H, I), R (D, gates*H, H),
    bias (D, 2*gates*H: the input's then the recurrence's, zeros when absent)."""
    op = node.op_type
    W, R = (opt_const(ctx, node, k, n) for k, n in ((1, "weight W"), (2, "recurrence R")))
    if W is None or R is None:
        raise UnsupportedOpError(f"{op} needs constant W and R")
    D = len(directions(node))
    if W.shape[0] != D or R.shape[0] != D:
        raise UnsupportedOpError(f"{op} W and R hold {W.shape[0]} and {R.shape[0]} "
                                 f"directions; its direction attribute needs {D}")
    H = int(node_attrs(node).get("hidden_size", R.shape[-1]))
    b = opt_const(ctx, node, 3, "bias B")
    b = np.zeros((D, 2 * gates * H)) if b is None else b.reshape(D, 2 * gates * H)
    return W, R, b, H


def per_direction(ctx, node, k: int, what: str, H: int) -> np.ndarray:
    """Optional per-direction initial state input k (initial_h, initial_c): (D, H), zeros
    when absent."""
    D = len(directions(node))
    v = opt_const(ctx, node, k, what)
    return np.zeros((D, H)) if v is None else v.reshape(D, H)


def initial_h(ctx, node, H: int) -> np.ndarray:
    """The initial hidden state of each direction (input 5): (D, H), zeros when absent."""
    return per_direction(ctx, node, 5, "initial_h", H)


def _y_name(node) -> str:
    return node.output[0] if node.output and node.output[0] else f"{node.name}/Y"


def _direction_names(node, d: int) -> tuple[str, str]:
    """(layer name, output Y name) of direction ``d``: the node's own with one direction."""
    if len(directions(node)) == 1:
        return node.name, _y_name(node)
    way = "reverse" if directions(node)[d] else "forward"
    return f"{node.name}:{way}", f"{node.name}/Y_{way}"


def add_recurrent_layer(ctx, node, d: int, cls, wx: np.ndarray, wh: np.ndarray,
                        bias: np.ndarray, fmt: CellFormat, h0: np.ndarray,
                        s0_int: np.ndarray, col_frac: np.ndarray | None = None) -> None:
    """Quantize direction ``d``'s ``Wcat = [wx ; wh]`` (real, (I, G*H) and (H, G*H)) and
    add its layer and sequence output. ``bias`` (G*H) is real; ``h0`` real; ``s0_int`` the
    register state (None: the initial h, a GRU's and an RNN's state); ``col_frac`` the
    fraction bits each column is requantized to (default: ``fmt.f``). Then
    :func:`add_recurrent_outputs` makes the node's outputs."""
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
    wcat = np.vstack([wx * s_x, wh * s_h])                   # (I + H, G*H), per unit integer
    w_int, s_acc = quantize_weight(wcat, ctx.wbits)           # acc real = acc_int * s_acc[n]
    in_bits = max(ctx.bits, fmt.bits)                        # x words and h words
    w_int, s_acc, bias_int = fit_bias(w_int, s_acc, bias, 1.0, in_bits)
    frac = np.full(wcat.shape[1], fmt.f) if col_frac is None else col_frac
    mult, shift, pre_shift, pre_clip = requant_constants(
        s_acc * 2.0 ** frac, sum_bound(w_int, bias_int, in_bits),
        rescale_multiplier_bits(fmt.bits))
    lim = 1 << (fmt.bits - 1)
    if np.abs(h0).max(initial=0) > 1:
        raise UnsupportedOpError(
            f"{op} initial_h reaches {np.abs(h0).max():.4g}: the hidden state is stored in "
            f"[-1, 1) (tanh's range), so |initial_h| <= 1 is supported")
    h0_int = np.clip(np.rint(h0 / s_h), -lim, lim - 1).astype(np.int64)
    s0_int = h0_int if s0_int is None else s0_int
    name, y_name = _direction_names(node, d)
    ctx.new_tensor(y_name, (T, 1, 1, H), s_h, as_map=False)
    ctx.add(cls(name, op, [node.input[0]], y_name, node=node.name, weight=w_int,
                bias=bias_int, mult=mult, shift=shift, pre_shift=pre_shift, pre_clip=pre_clip,
                out_bits=fmt.bits, w_scale=s_acc,
                steps=T, hidden=H, x_pos=pos[0].copy(), x_step=step, fmt=fmt, h0=h0_int,
                s0=s0_int, reverse=directions(node)[d]))


def add_recurrent_outputs(ctx, node, H: int) -> None:
    """The node's Y (T, D, 1, H): with two directions, a copy that interleaves their
    sequences (a vector ``perm``: no data moves beyond the copy itself); and Y_h (D, 1, H),
    each direction's last step: Y[T-1] forward, Y[0] reverse."""
    op = node.op_type
    T = ctx.shape(node.input[0])[0]
    flags = directions(node)
    y_name = _y_name(node)
    if T > 1 and ctx.is_graph_output(y_name):
        raise UnsupportedOpError(
            f"{op} output Y {y_name!r} is time-major (seq, directions, 1, hidden) but graph "
            f"outputs are batch-first here: transpose it in the graph (torch's "
            f"batch_first=True export does)")
    if len(flags) > 1:
        parts = [ctx.tensor(_direction_names(node, d)[1]) for d in range(len(flags))]
        shape = (T, len(flags), 1, H)
        ctx.new_tensor(y_name, shape, parts[0].scale, as_map=False,
                       perm=vector_concat_perm(shape, 1, parts))
        ctx.add(ConcatLayer(f"{node.name}:Y", "Concat", [p.name for p in parts], y_name,
                            node=node.name, rescale=[(0, 0)] * len(parts), bits=ctx.bits))
    # Y_h: copies of the last step of each direction, Y[T-1, d] forward and Y[0, d] reverse,
    # wherever Y's memory order puts them.
    if len(node.output) > 1 and node.output[1] and (
            ctx.consumers(node.output[1]) or ctx.is_graph_output(node.output[1])):
        if len(flags) > 1 and ctx.is_graph_output(node.output[1]):
            raise UnsupportedOpError(
                f"{op} output Y_h {node.output[1]!r} is direction-major (directions, 1, "
                f"hidden) but graph outputs are batch-first here: transpose it in the graph")
        D = len(flags)
        last = np.concatenate([((0 if rev else T - 1) * D + d) * H + np.arange(H)
                               for d, rev in enumerate(flags)])
        add_copy(ctx, node, y_name, node.output[1], ctx.shape(node.output[1]),
                 buffer_positions(ctx, y_name)[last])
