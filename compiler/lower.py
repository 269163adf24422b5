"""Lowering: frontend Graph + calibration -> LayerProgram (quantized layers over tensors).

Each ONNX op's lowering is one function in ``compiler/ops/``, listed in the explicit
registry :data:`compiler.ops.REGISTRY`. This module owns what they share: the context that
creates tensors with calibrated scales, the error wrapping that names the node, and fusion
bookkeeping.
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import CompilerError, LoweringError, UnsupportedOpError
from .frontend import Graph
from .ir import Layer, LayerProgram, TensorInfo


class LowerContext:
    """What an op's lowering function may use."""

    def __init__(self, graph: Graph, absmax: dict[str, float], cfg, headroom: float = 2.0):
        self.graph, self.absmax_, self.cfg = graph, absmax, cfg
        self.headroom = headroom
        self.bits = cfg.input_bits
        self.wbits = cfg.weight_bits
        self.prog = LayerProgram(input_bits=cfg.input_bits)
        self.skip: set[str] = set()       # nodes fused into an earlier layer
        self.flattened: set[str] = set()  # map tensors viewed as vectors (must stay unpadded)
        self.nonneg: set[str] = set()     # tensors known to be >= 0 (ReLU outputs)
        self.zero_warned: set[str] = set()  # tensors said to be zero on every sample
        self.node = None                  # the node being lowered
        # per stored map, the nodes that read a border beyond it: (node, border value)
        self.border_readers: dict[str, list[tuple]] = {}
        self._consumers: dict[str, list] = {}
        for n in graph.nodes:
            for i in n.input:
                self._consumers.setdefault(i, []).append(n)

    # ---- graph queries ---------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        return self.graph.consts.get(name)

    def shape(self, name: str) -> tuple:
        if name not in self.graph.shapes:
            raise CompilerError(f"tensor {name!r} has no static shape after shape inference")
        return tuple(self.graph.shapes[name])

    def consumers(self, tensor: str) -> list:
        return self._consumers.get(tensor, [])

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self.graph.outputs

    def sole_consumer(self, tensor: str, op_types: tuple[str, ...]):
        """The one consumer of ``tensor`` if it has exactly one and of these types and the
        tensor is not a graph output (so it may be fused away)."""
        c = self.consumers(tensor)
        if len(c) == 1 and c[0].op_type in op_types and not self.is_graph_output(tensor):
            return c[0]
        return None

    # ---- tensors ---------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        if name not in self.prog.tensors:
            if name in self.graph.consts:
                raise UnsupportedOpError(f"a constant operand ({name!r}) is not supported "
                                         f"here; this op takes computed tensors")
            raise CompilerError(f"tensor {name!r} is used before it is produced")
        return self.prog.tensors[name]

    def absmax(self, name: str) -> float:
        v = self.absmax_.get(name)
        if v is None:
            raise CompilerError(f"no calibration range for tensor {name!r}")
        if not np.isfinite(v):   # float32 overflow in onnxruntime: no word holds it
            raise CompilerError(f"tensor {name!r} is infinite on the calibration inputs (a "
                                f"float32 overflow, or an infinite constant it is computed "
                                f"from); fixed-point words hold finite values only")
        if v == 0 and name not in self.zero_warned:
            # every sample left it zero (a ReLU of all-negative inputs, say): its scale is a
            # floor, and any real input saturates it
            self.zero_warned.add(name)
            warnings.warn(f"tensor {name!r} is zero on every calibration sample, so its "
                          f"range is a guess (1e-8): inputs that make it nonzero saturate "
                          f"it; calibrate with samples that exercise it", stacklevel=2)
        # only a range of zero gets the guess: a real one below it (inputs ~1e-11) was
        # floored too, and every output came out 0
        return float(v) if v > 0 else 1e-8

    def scale_for(self, name: str) -> float:
        """Fixed-point step for a tensor: ``headroom`` x its calibrated |max| maps to the
        top code (inputs beyond the calibration set's range then still fit). A scale fixed
        by the model's own Q/DQ nodes wins."""
        if name in self.graph.act_scales:
            return self.graph.act_scales[name]
        return self.headroom * self.absmax(name) / ((1 << (self.bits - 1)) - 1)

    def new_tensor(self, name: str, shape: tuple, scale: float, **kw) -> TensorInfo:
        """Create an activation tensor; 4-D (1, C, H, W) and 3-D (1, C, L) become maps."""
        shape = tuple(int(s) for s in shape)
        as_map = kw.pop("as_map", True)
        if len(shape) == 4 and as_map:
            t = TensorInfo(name, "map", shape, scale, H=shape[2], W=shape[3], C=shape[1], **kw)
        elif len(shape) == 3 and as_map:
            t = TensorInfo(name, "map", shape, scale, H=1, W=shape[2], C=shape[1], **kw)
        else:
            t = TensorInfo(name, "vec", shape, scale, F=int(np.prod(shape)), **kw)
        self.prog.tensors[name] = t
        if kw.get("alias_of") in self.nonneg:    # the same words: Identity, Reshape, Flatten
            self.nonneg.add(name)
        return t

    def require_pad(self, name: str, pads: tuple, value: int = 0) -> None:
        """The consumer reads ``pads`` (top, left, bottom, right) beyond the border of map
        ``name``, expecting ``value`` there: grow the stored buffer's border."""
        if not any(pads):
            return
        t = self.tensor(self.prog.storage(name))
        if t.kind != "map":
            raise UnsupportedOpError(f"padding a non-spatial tensor {name!r}")
        readers = self.border_readers.setdefault(t.name, [])
        readers.append((self.node, value))
        if any(t.pad) and t.pad_value != value:
            if name in self.nonneg and min(value, t.pad_value) <= 0:
                value = 0  # max-pooling a ReLU output: a zero border is as good as -inf
            else:
                raise UnsupportedOpError(
                    f"tensor {name!r} is read with a border of "
                    f"{self._border_text(t.pad_value, t.scale)} by "
                    f"{_nodes_text(n for n, v in readers if v == t.pad_value)} and of "
                    f"{self._border_text(value, t.scale)} by {_nodes_text([self.node])}; one "
                    f"border per tensor is supported: pad one reader's input with an "
                    f"explicit Pad node instead")
        t.pad = tuple(max(a, b) for a, b in zip(t.pad, pads))
        t.pad_value = value

    def _border_text(self, value: int, scale: float) -> str:
        """A border's integer as the real value it stands for (a max-pool's lowest: -inf)."""
        return "-inf" if value == -(1 << (self.bits - 1)) else f"{value * scale:g}"

    def add(self, layer: Layer) -> Layer:
        # the layer that lands on a QuantizeLinear's grid does the Q's rounding: half to even
        layer.round_even = (layer.op == "QuantizeLinear"
                            or layer.output in self.graph.act_scales)
        self.prog.layers.append(layer)
        return layer


def lower(graph: Graph, absmax: dict[str, float], cfg, headroom: float = 2.0) -> LayerProgram:
    """Lower every node with its registered function, in topological order."""
    from .ops import REGISTRY, supported_ops
    ctx = LowerContext(graph, absmax, cfg, headroom)
    for name, shape in graph.inputs:
        t = ctx.new_tensor(name, shape, ctx.scale_for(name))
        ctx.prog.inputs.append(t.name)
    for node in graph.nodes:
        if node.name in ctx.skip:
            continue
        fn = REGISTRY.get(node.op_type)
        if fn is None:
            raise UnsupportedOpError(
                f"node {node.name!r}: op {node.op_type} is not supported; supported ops: "
                f"{', '.join(supported_ops())}")
        ctx.node = node
        try:
            fn(node, ctx)
        except CompilerError as e:
            # already prefixed (a bare name such as "1" is in most messages)
            if str(e).startswith(f"node {node.name!r}"):
                raise
            raise type(e)(f"node {node.name!r} ({node.op_type}): {e}") from e
        except Exception as e:
            raise LoweringError(f"node {node.name!r} ({node.op_type}): lowering failed: "
                                f"{type(e).__name__}: {e}") from e
    _finalize(ctx)
    for o in graph.outputs:
        if o not in ctx.prog.tensors:
            raise CompilerError(f"graph output {o!r} is a constant or was never produced")
        shape = tuple(ctx.prog.tensors[o].shape)
        if not shape or shape[0] != 1:
            # the program computes one sample and the simulator batches along axis 0
            raise UnsupportedOpError(f"graph output {o!r} has shape {shape}: its first axis "
                                     f"must be the batch of 1 (a Transpose or Squeeze moved "
                                     f"or removed it)")
        ctx.prog.outputs.append(o)
    return ctx.prog


def _nodes_text(nodes) -> str:
    return ", ".join(f"{n.op_type} {n.name!r}" for n in nodes) or "no node"


def _finalize(ctx: LowerContext) -> None:
    """Aliases share their storage's border; a map viewed as a vector must have none."""
    prog = ctx.prog
    for name in ctx.flattened:
        st = prog.tensors[prog.storage(name)]
        if any(st.pad):
            padded = [n for n, _ in ctx.border_readers.get(st.name, [])]
            vector = [n for n in ctx.consumers(name) if n not in padded]
            raise UnsupportedOpError(
                f"tensor {name!r} is flattened (read as a vector) by {_nodes_text(vector)} "
                f"and read with a padded border by {_nodes_text(padded)}; a flattened map is "
                f"stored without a border: pad the input of {_nodes_text(padded[:1])} with "
                f"an explicit Pad node instead")
    for t in prog.tensors.values():
        if t.alias_of is not None and t.kind == "map":
            st = prog.tensors[prog.storage(t.name)]
            t.pad, t.pad_value = st.pad, st.pad_value
