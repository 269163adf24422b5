"""Frontend: ONNX file -> :class:`Graph` (static shapes, constants folded, batch norm folded
into convolutions, QDQ weights recognised).

Refuses external data outside the model's folder, runs the ONNX checker and shape
inference, folds every node whose inputs are all constant (the model-zoo graphs build their
weights with ConstantOfShape) and ``Shape`` of statically shaped tensors. The batch dimension
is fixed to 1: a program computes one sample; the simulator runs a batch of them.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference, version_converter

from simulator.errors import first_line

from .errors import ModelFormatError, UnsupportedOpError
from .ir import node_attrs, quantized_elem_type

OPSET = 17
MIN_OPSET = 7   # the oldest opset onnxruntime runs every op of

#: How every warning about a QDQ weight whose exported integers do not reach the crossbars
#: ends, so one phrase finds them all.
OTHER_WEIGHTS = "the chip runs other weights than the file's"


@dataclass
class Graph:
    """The compiler's view of a model after the frontend."""

    nodes: list                      # remaining onnx NodeProto, topological order
    consts: dict[str, np.ndarray]    # initializers and folded constants
    shapes: dict[str, tuple]         # static shape of every activation tensor
    inputs: list[tuple[str, tuple]]  # graph inputs (name, shape with batch 1)
    outputs: list[str]
    qweights: dict[str, tuple] = field(default_factory=dict)
    """QDQ weights: name -> (integer array, scale array, axis) of a DequantizeLinear."""
    act_scales: dict[str, float] = field(default_factory=dict)
    """Activation scales fixed by QuantizeLinear/DequantizeLinear pairs in the model."""
    opset: int = OPSET
    name: str = "model"

    @property
    def dag(self) -> nx.DiGraph:
        g = nx.DiGraph()
        producer = {o: n.name for n in self.nodes for o in n.output}
        for n in self.nodes:
            g.add_node(n.name, node=n)
            for i in n.input:
                if i in producer:
                    g.add_edge(producer[i], n.name, tensor=i)
        return g

    def consumers(self, tensor: str) -> list:
        return [n for n in self.nodes if tensor in n.input]

    def to_onnx(self, extra_outputs: bool = False) -> onnx.ModelProto:
        """An equivalent ONNX model (constants as initializers); with ``extra_outputs``
        every intermediate tensor is an output too (for calibration)."""
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items()
                 if k in self.outputs or any(k in n.input for n in self.nodes)]
        ins = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s))
               for n, s in self.inputs]
        outs = list(self.outputs)
        if extra_outputs:
            outs += [o for n in self.nodes for o in n.output if o and o not in outs]
        # Untyped: onnxruntime infers each output's type (a Dropout mask is bool, ArgMax
        # int64, QuantizeLinear's its zero point's), where a declared float one is an error.
        out_vi = [helper.make_empty_tensor_value_info(o) for o in outs]
        g = helper.make_graph(self.nodes, self.name, ins, out_vi, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return m


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file, refusing external data that lives outside the model's folder."""
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelFormatError(f"{path} is a folder; expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelFormatError(f"{path}: not a valid ONNX model ({type(e).__name__}: "
                               f"{first_line(e, 'unparseable')})") from e
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError(f"{path}: not a valid ONNX model (empty graph)")
    base = path.parent.resolve()
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            target = (base / loc).resolve()
            if os.path.isabs(loc) or not target.is_relative_to(base):
                raise ModelFormatError(f"{path}: tensor {t.name!r} points to external data "
                                       f"{loc!r} outside the model's folder {base}; refused")
            if not target.exists():
                raise ModelFormatError(f"{path}: external data file {loc!r} of tensor "
                                       f"{t.name!r} is missing")
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise ModelFormatError(f"{path}: cannot read external data ({e})") from e
    return check_model(model, str(path))


def check_model(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """``model`` if ONNX's checker passes it, else a one-line error naming ``label``."""
    _check_unique_initializers(model)    # before the checker, which says less
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        # the checker names the node on its second line
        raise ModelFormatError(f"{label}: invalid ONNX model: {' '.join(str(e).split())}"
                               ) from e
    return model


def _check_unique_initializers(model: onnx.ModelProto) -> None:
    """A name given to two initializers: the last one won in the frontend, the first in
    onnxruntime."""
    names = Counter(i.name for i in model.graph.initializer)
    dup = next((k for k, c in names.items() if c > 1), None)
    if dup is not None:
        raise ModelFormatError(f"initializer name {dup!r} is given to {names[dup]} "
                               f"initializers; initializer names must be unique")


def _check_single_assignment(model: onnx.ModelProto) -> None:
    """A node writing a name that an initializer or graph input already holds (the
    checker's rule, which a model given in memory skipped): it was folded against the
    initializer and explained wrongly later."""
    held = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    for n in model.graph.node:
        clash = next((o for o in n.output if o in held), None)
        if clash is not None:
            raise ModelFormatError(f"node {n.name or n.op_type!r} ({n.op_type}) writes "
                                   f"{clash!r}, which an initializer or graph input already "
                                   f"holds; every tensor name must be written once")


def _densify_sparse_initializers(model: onnx.ModelProto) -> None:
    """Move ``graph.sparse_initializer`` (a pruned weight may be stored so) into dense
    initializers: the passes read constants from ``graph.initializer`` alone."""
    for sp in model.graph.sparse_initializer:
        name, dims = sp.values.name, tuple(sp.dims)
        try:
            values = numpy_helper.to_array(sp.values).reshape(-1)
            idx = numpy_helper.to_array(sp.indices).astype(np.int64)
            if idx.ndim == 2:     # (NNZ, rank) coordinates; else linear indices
                idx = np.ravel_multi_index(tuple(idx.T), dims)
            dense = np.zeros(int(np.prod(dims)), values.dtype)
            dense[idx.reshape(-1)] = values
        except (ValueError, IndexError) as e:
            raise ModelFormatError(f"sparse initializer {name!r} of shape {dims}: "
                                   f"{first_line(e)}") from e
        model.graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), name))
    del model.graph.sparse_initializer[:]


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def upgrade_old_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` converted to MIN_OPSET if its default-domain opset is older, else itself:
    onnxruntime (calibration, references) implements no older versions of
    BatchNormalization, Gemm, Add, Mul, PRelu, AveragePool...; opset 7 keeps Softmax's old
    semantics."""
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    copy = onnx.ModelProto()        # the caller's model stays as it is
    copy.CopyFrom(model)
    model = copy
    _densify_sparse_initializers(model)   # the converter knows no sparse initializers
    _legacy_broadcast_axis(model)
    try:
        model = version_converter.convert_version(model, MIN_OPSET)
        _legacy_prelu(model)
    except Exception as e:
        raise ModelFormatError(f"cannot upgrade the model from opset {opset} to "
                               f"{MIN_OPSET}: {first_line(e)}") from e
    return model


def _all_tensors(model):
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _eval_node(node, values: dict, opset: int) -> list[np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator
    ins = [helper.make_tensor_value_info(f"i{k}", _elem(values[name]), None)
           for k, name in enumerate(node.input) if name]
    names = {name: f"i{k}" for k, name in enumerate(node.input) if name}
    n2 = helper.make_node(node.op_type, [names.get(i, "") for i in node.input],
                          [f"o{k}" for k in range(len(node.output))], domain=node.domain)
    n2.attribute.extend(node.attribute)
    outs = [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None)
            for k in range(len(node.output))]
    m = helper.make_model(helper.make_graph([n2], "fold", ins, outs),
                          opset_imports=[helper.make_opsetid("", opset)])
    feeds = {names[name]: values[name] for name in node.input if name}
    return ReferenceEvaluator(m).run(None, feeds)


def _elem(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype)


def _static_shape(vi) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            return None
    return tuple(dims)


def _check_initial_state_batch(nodes, consts: dict) -> None:
    """A recurrent node's constant initial state is ``(directions, batch, hidden)``; torch
    builds a zero state at the export batch, which no longer fits once the batch is 1."""
    for n in nodes:
        if n.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        for k, what in ((5, "initial_h"), (6, "initial_c")):
            v = consts.get(n.input[k]) if len(n.input) > k and n.input[k] else None
            if v is not None and v.ndim == 3 and v.shape[1] != 1:
                raise UnsupportedOpError(
                    f"{n.op_type} node {n.name or n.output[0]!r}: its constant {what} holds "
                    f"a batch of {v.shape[1]} (the batch it was exported at), and the program "
                    f"computes one sample; export at batch 1 or with a dynamic batch")


def _fix_batch(model: onnx.ModelProto) -> list[tuple[str, tuple]]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        elem = vi.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            # the simulator feeds float32 samples, quantized to the machine's input words
            raise UnsupportedOpError(f"graph input {vi.name!r} holds "
                                     f"{onnx.TensorProto.DataType.Name(elem)} values; only "
                                     f"float32 graph inputs are supported")
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 0:
            raise UnsupportedOpError(f"graph input {vi.name!r} has no shape; the compiler "
                                     f"needs static shapes")
        if len(dims) == 1:
            raise UnsupportedOpError(f"graph input {vi.name!r} has one axis; the compiler "
                                     f"needs the batch axis first, (N, ...), and sets N to 1")
        if dims[0].HasField("dim_value") and dims[0].dim_value == 0:
            raise UnsupportedOpError(f"graph input {vi.name!r} has a static batch of 0; the "
                                     f"program computes one sample: export at batch 1 or "
                                     f"with a dynamic batch")
        if dims[0].HasField("dim_value") and dims[0].dim_value > 1:
            warnings.warn(f"graph input {vi.name!r} has a static batch of {dims[0].dim_value}; "
                          f"the program computes one sample (N set to 1) and the simulator "
                          f"runs a batch of any size", stacklevel=2)
        dims[0].Clear()
        dims[0].dim_value = 1
        for k, d in enumerate(dims[1:], 1):
            if d.HasField("dim_value") and d.dim_value == 0:
                raise UnsupportedOpError(f"graph input {vi.name!r} dimension {k} has size 0; "
                                         f"the compiler needs non-empty inputs")
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise UnsupportedOpError(f"graph input {vi.name!r} dimension {k} is not static "
                                         f"({d.dim_param or '?'}); export with fixed shapes")
        out.append((vi.name, tuple(d.dim_value for d in dims)))
    return out


# Ops that draw random numbers: refused, never folded (onnx's evaluator draws unseeded).
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Multinomial"}
FOLDABLE_ALWAYS = {"Constant", "ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze",
                   "Concat", "Reshape", "Cast", "Range", "Slice", "Mul", "Add", "Sub", "Div",
                   "Transpose", "Identity", "Expand", "Sqrt", "Pow", "Neg", "Floor", "Ceil",
                   "ReduceProd", "Equal", "Where", "Flatten", "DequantizeLinear",
                   "QuantizeLinear", "Tile", "Min", "Max", "Size", "Reciprocal"}


def _subgraphs(node):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _outer_names(graph) -> set[str]:
    """Tensors a (sub)graph reads without defining them, nested subgraphs included."""
    local = ({i.name for i in graph.input} | {i.name for i in graph.initializer}
             | {o for n in graph.node for o in n.output})
    reads = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    reads |= {x for n in graph.node for sub in _subgraphs(n) for x in _outer_names(sub)}
    return reads - local


def _reads_outer_scope(node) -> bool:
    """An If/Loop/Scan whose branches read tensors of the enclosing graph (activations) that
    its listed inputs, the condition or trip count, do not name: it cannot be folded."""
    return any(_outer_names(sub) for sub in _subgraphs(node))


# Folded ops that only move a constant's elements, so a QDQ weight keeps its integers
_ALIASES = ("Identity", "Dropout")
_RESHAPES = ("Reshape", "Unsqueeze", "Squeeze", "Flatten")


def _carry_qweight(node, consts, qweights) -> bool:
    """Record folded ``node``'s output as a QDQ weight when it only moves the elements of
    one (its first input): an alias, a Transpose (permuting the integers and the scale's
    axis), or a reshape that keeps a per-axis scale's axis as one axis. False if not."""
    if node.input[0] not in qweights or node.op_type not in (*_ALIASES, "Transpose",
                                                             *_RESHAPES):
        return False
    q, s, axis = qweights[node.input[0]]
    out = np.shape(consts[node.output[0]])
    if node.op_type == "Transpose":
        perm = list(node_attrs(node).get("perm") or range(q.ndim - 1, -1, -1))
        q = q.transpose(perm)
        axis = None if axis is None else perm.index(axis)
    elif node.op_type in _RESHAPES:
        if axis is not None:   # the axis whose leading elements and size stay the same
            lead = int(np.prod(q.shape[:axis]))
            axis = next((j for j in range(len(out)) if out[j] == q.shape[axis]
                         and int(np.prod(out[:j])) == lead), None)
            if axis is None:
                return False
        q = q.reshape(out)
    qweights[node.output[0]] = (q, s, axis)
    return True


def frontend(model: onnx.ModelProto, name: str = "model") -> Graph:
    """Static-shaped, constant-folded, BN-folded graph."""
    # never mutate the caller's; CopyFrom is a deep copy, 4-20x faster than a serialize round trip
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    model = upgrade_old_opset(model)     # densifies an old model's sparse initializers
    _densify_sparse_initializers(model)  # (a no-op then)
    opset = default_opset(model)
    inputs = _fix_batch(model)
    _check_unique_initializers(model)   # a model given here directly skipped the checker
    _check_single_assignment(model)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # Passes and layers key nodes by name: refuse duplicates, name unnamed nodes uniquely.
    names = Counter(n.name for n in model.graph.node if n.name)
    dup = next((k for k, c in names.items() if c > 1), None)
    if dup is not None:
        raise ModelFormatError(f"node name {dup!r} is given to {names[dup]} nodes; node names "
                               f"must be unique")
    nodes = []
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            qdq = n.op_type in ("QuantizeLinear", "DequantizeLinear")
            raise UnsupportedOpError(
                f"node {n.name or n.output[0]!r}: op {n.domain}.{n.op_type} from a custom "
                f"domain is not supported; allowed: the standard ai.onnx domain"
                + (" (its QuantizeLinear at opset 21 holds int4 and int16)" if qdq else ""))
        if n.op_type in RANDOM_OPS:   # folded, each compile drew other constants
            raise UnsupportedOpError(
                f"node {n.name or n.output[0]!r}: op {n.op_type} draws random numbers; the "
                f"chip computes a fixed function: export in eval mode or replace the draw "
                f"with a constant initializer")
        if not n.name:
            n.name = f"{n.op_type}_{n.output[0]}"
            while names[n.name]:
                n.name += "_"
            names[n.name] += 1
        nodes.append(n)
    graph_outputs = list(dict.fromkeys(o.name for o in model.graph.output))  # once each
    qweights: dict[str, tuple] = {}
    lost: dict[str, str] = {}   # folded from a QDQ weight without its integers -> by which node
    # Shapes first (needed to fold Shape of activations), then fold to a fixed point.
    shapes: dict[str, tuple] = {}
    for _ in range(8):
        shapes = _infer(nodes, consts, inputs, graph_outputs, opset)
        remaining, changed = [], False
        for n in nodes:
            if n.op_type == "Shape" and n.input[0] in shapes and n.input[0] not in consts:
                s = np.array(shapes[n.input[0]], np.int64)
                a = {x.name: x for x in n.attribute}
                start = a["start"].i if "start" in a else 0
                end = a["end"].i if "end" in a else len(s)
                consts[n.output[0]] = s[start:end] if "start" in a or "end" in a else s
                changed = True
                continue
            if n.op_type in ("Dropout", "Identity") and (
                    n.input[0] not in consts or dropout_training(n, consts)):
                remaining.append(n)   # an alias (or a random drop, which lowering refuses)
                continue
            if all((not i) or i in consts for i in n.input) and (
                    n.op_type in FOLDABLE_ALWAYS or n.input) and not _reads_outer_scope(n):
                if n.op_type == "DequantizeLinear":
                    consts[n.output[0]] = _dequantize_weight(n, consts, qweights)
                    changed = True
                    continue
                try:
                    vals = _eval_node(n, consts, opset)
                except Exception as e:
                    raise ModelFormatError(f"node {n.name!r} ({n.op_type}): constant folding "
                                           f"failed: {first_line(e)}") from e
                for o, v in zip(n.output, vals):
                    if o:   # "" is an omitted optional output, not a tensor
                        consts[o] = np.asarray(v)
                src = next((i for i in n.input if i in qweights or i in lost), None)
                if src is not None and not _carry_qweight(n, consts, qweights):
                    for o in n.output:
                        if o and consts[o].dtype.kind == "f":   # not Shape of the weight
                            lost[o] = lost.get(src, f"node {n.name!r} ({n.op_type})")
                changed = True
                continue
            remaining.append(n)
        nodes = remaining
        if not changed:
            break
    _check_weights_finite(nodes, consts)
    _check_initial_state_batch(nodes, consts)
    g = Graph(nodes=nodes, consts=consts, shapes=shapes, inputs=inputs, outputs=graph_outputs,
              qweights=qweights, opset=opset, name=name)
    _drop_same_type_casts(g)
    _recognise_qdq(g)
    _drop_unmappable_qweights(g, lost)
    _fold_batchnorm(g)
    _fold_affine_into_conv(g)
    g.shapes = _infer(g.nodes, g.consts, g.inputs, g.outputs, opset)
    return g


# Ops whose constant inputs become crossbar weights or their biases. Other ops may hold
# infinities on purpose (a Clip bound, a -inf padding value), so only these are checked.
_WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})


def dropout_training(node, consts) -> bool:
    """A Dropout that drops at random: training_mode (opset 12+) true or not constant."""
    if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
        return False
    mode = consts.get(node.input[2])
    return mode is None or bool(np.asarray(mode).reshape(-1)[0])


def batchnorm_training(node) -> bool:
    """A BatchNormalization in training mode: it normalises with the batch's statistics, not
    the running ones (training_mode=1, or running-statistics outputs before opset 14)."""
    return bool(node_attrs(node).get("training_mode", 0)) or any(node.output[1:])


def batchnorm_factor(node, gamma: np.ndarray, var: np.ndarray) -> np.ndarray:
    """gamma / sqrt(var + epsilon) of a BatchNormalization, refusing a variance that makes
    it NaN or inf (numpy warned, and the error blamed the next layer's scale)."""
    eps = float(node_attrs(node).get("epsilon", 1e-5))
    denom = np.asarray(var, np.float64) + eps
    bad = ~(np.isfinite(denom) & (denom > 0))
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise ModelFormatError(f"node {node.name!r} (BatchNormalization): variance "
                               f"{float(np.ravel(var)[c]):g} at index {c} (epsilon {eps:g}); "
                               f"allowed: variance + epsilon finite and > 0")
    return gamma / np.sqrt(denom)


def _check_weights_finite(nodes, consts) -> None:
    """Refuse a NaN in any constant a node reads (an Add's or a batch norm's NaN calibrated
    as 0 and ran as finite numbers), and inf in a weight; elsewhere inf may mean "no
    bound" (Clip) or pad with the lowest value (Pad before a MaxPool)."""
    for n in nodes:
        if n.op_type == "BatchNormalization" and len(n.input) == 5 and all(
                i in consts for i in n.input[1:]):
            batchnorm_factor(n, consts[n.input[1]], consts[n.input[4]])   # names a variance
        for i in n.input[n.op_type in _WEIGHT_OPS:]:
            v = consts.get(i)
            if v is None or v.dtype.kind != "f":
                continue
            bad = ~np.isfinite(v) if n.op_type in _WEIGHT_OPS else np.isnan(v)
            if bad.any():
                what = "weight" if n.op_type in _WEIGHT_OPS else "constant"
                kinds = "NaN/inf" if n.op_type in _WEIGHT_OPS else "NaN"
                raise ModelFormatError(f"node {n.name!r} ({n.op_type}): {what} {i!r} holds "
                                       f"{int(bad.sum())} {kinds} values")


LEGACY_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal",
                        "Greater", "Less")


def _legacy_broadcast_axis(model: onnx.ModelProto) -> None:
    """Before opset 7, ``broadcast=1, axis=a`` lines B up with A's axes a.. (a per-channel
    (C,) scale on NCHW at axis 1); the version converter pads B with trailing unit dims as
    if B were aligned to A's end, so (C,) became (C,1,1,1). A constant B gets its unit
    dims here (in ``model``, a copy), where the converter then agrees."""
    rank = _old_ranks(model)
    inits = {i.name: i for i in model.graph.initializer}
    for k, n in enumerate(model.graph.node):
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        if n.op_type not in LEGACY_BROADCAST_OPS or not a.get("broadcast") or len(n.input) < 2:
            continue
        ra, rb = rank.get(n.input[0]), rank.get(n.input[1])
        pad = None if ra is None or rb is None else ra - a.get("axis", ra - rb) - rb
        if not pad or pad < 0:
            continue    # B already ends at A's end (or a malformed axis, left to the checker)
        if n.input[1] not in inits:
            raise ModelFormatError(
                f"node {n.name or n.op_type!r} ({n.op_type}): opset-{default_opset(model)} "
                f"broadcast of {n.input[1]!r} along axis {a['axis']} needs it constant (an "
                f"initializer), so that it can be upgraded to opset {MIN_OPSET}")
        b = numpy_helper.to_array(inits[n.input[1]])
        # one copy per padding: a B read along one axis of a 4-D and of a 3-D input
        name = f"{n.input[1]}__axis{a['axis']}_pad{pad}"
        if name not in {i.name for i in model.graph.initializer}:
            model.graph.initializer.append(numpy_helper.from_array(
                b.reshape(b.shape + (1,) * pad), name))
            if any(i.name == n.input[1] for i in model.graph.input):   # IR < 4 lists them
                model.graph.input.append(helper.make_tensor_value_info(
                    name, inits[n.input[1]].data_type, list(b.shape) + [1] * pad))
        model.graph.node[k].input[1] = name


def _old_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's rank that shape inference finds in the (old-opset) model."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:   # the converter reports what is wrong with the model
        inferred = model
    vis = (list(model.graph.input) + list(inferred.graph.value_info)
           + list(model.graph.output))
    rank = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in vis
            if vi.type.tensor_type.HasField("shape")}
    rank.update({i.name: len(i.dims) for i in model.graph.initializer})
    return rank


def _legacy_prelu(model: onnx.ModelProto) -> None:
    """Before opset 7 a 1-D PRelu slope applies per channel (axis 1); from 7 on it broadcasts
    numpy-style, and the version converter leaves it as it was: give it trailing unit dims."""
    inits = {i.name: i for i in model.graph.initializer}
    vis = list(model.graph.input) + list(shape_inference.infer_shapes(model).graph.value_info)
    rank = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in vis}
    for n in model.graph.node:
        if n.op_type == "PRelu" and n.input[1] in inits and rank.get(n.input[0], 0) > 2:
            slope = numpy_helper.to_array(inits[n.input[1]])
            if slope.ndim == 1 and slope.size > 1:
                shaped = slope.reshape((-1,) + (1,) * (rank[n.input[0]] - 2))
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(shaped, n.input[1]))


def _infer(nodes, consts, inputs, outputs, opset) -> dict[str, tuple]:
    used = {i for n in nodes for i in n.input}
    # Small constants go in as values (Reshape targets, ...); big ones (weights) only as
    # typed shapes, so shape inference does not serialise hundreds of MB.
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()
             if k in used and np.size(v) <= 4096]
    ins = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s)) for n, s in inputs]
    ins += [helper.make_tensor_value_info(k, _elem(v), list(np.shape(v)))
            for k, v in consts.items() if k in used and np.size(v) > 4096]
    # Outputs that are graph inputs or constants are declared already (as UNDEFINED they
    # would fail inference, blaming another tensor).
    produced = {o for n in nodes for o in n.output}
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
            for o in outputs if o in produced]
    g = helper.make_graph(nodes, "g", ins, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:
        raise ModelFormatError(f"shape inference failed: {first_line(e)}") from e
    shapes = {n: tuple(s) for n, s in inputs}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        s = _static_shape(vi)
        if s is not None:
            shapes[vi.name] = s
    for k, v in consts.items():
        shapes[k] = tuple(np.shape(v))
    return shapes


# ONNX's 4-bit integers, which numpy (ml_dtypes) does not count as np.integer
_INT4 = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def _dequantize_weight(n, consts, qweights) -> np.ndarray:
    """Fold DequantizeLinear of a constant: (q - zero_point) * scale in float32, as ONNX
    defines it. Integer input = a quantized weight: record (q - zero_point as int64, scale
    as float64, axis) in ``qweights`` so Conv/Gemm map exactly those integers; the scale is
    0-D with axis None, or 1-D along ``axis`` (>= 0)."""
    q = np.asarray(consts[n.input[0]])
    s = np.asarray(consts[n.input[1]])
    zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    a = node_attrs(n)
    if a.get("block_size", 0):
        raise UnsupportedOpError(f"node {n.name!r}: blocked DequantizeLinear is not supported")
    axis = int(a.get("axis", 1))
    axis += q.ndim if axis < 0 else 0
    shape = [1] * q.ndim
    per_axis = s.ndim == 1 and s.size > 1
    if per_axis:
        shape[axis] = s.size
    if np.issubdtype(q.dtype, np.integer) or _elem(q) in _INT4:
        qi = integer_levels(q, zp, axis)
        s = s.astype(np.float64).reshape(-1 if per_axis else ())
        value = qi.astype(np.float32) * s.astype(np.float32).reshape(shape)
        if (s < 0).any():
            # the mapping takes positive scales: a negative one's sign goes into the levels
            # (q * -s = -q * s), which a symmetric level set holds as well
            sign = np.where(s < 0, -1, 1).astype(np.int64)
            qi = qi * (sign.reshape(shape) if per_axis else sign)
            s = np.abs(s)
        qweights[n.output[0]] = (qi, s, axis if per_axis else None)
        return value
    z = np.zeros((), np.int64) if zp is None else np.asarray(zp, np.int64).reshape(
        shape if np.size(zp) > 1 else ())
    return (q.astype(np.float32) - z.astype(np.float32)) * s.astype(np.float32).reshape(shape)


def integer_levels(q, zp, axis: int) -> np.ndarray:
    """The levels a DequantizeLinear of integers ``q`` stands for, ``q - zero_point`` as
    int64: a zero point of one value, or one per index of ``axis``."""
    q = np.asarray(q).astype(np.int64)
    if zp is None:
        return q
    z = np.asarray(zp, np.int64)
    return q - z.reshape([-1 if d == axis % q.ndim else 1 for d in range(q.ndim)]
                         if z.size > 1 else ())


def _recognise_qdq(g: Graph) -> None:
    """Q->DQ pairs on activations fix that activation's scale. (DequantizeLinear of
    constant integers, a quantized weight, was recorded while folding constants.)"""
    keep = []
    for n in g.nodes:
        if n.op_type == "QuantizeLinear":
            sc = g.consts.get(n.input[1])
            if sc is not None and not (np.isfinite(sc).all() and (np.asarray(sc) > 0).all()):
                raise UnsupportedOpError(f"node {n.name!r} (QuantizeLinear): scale "
                                         f"{np.asarray(sc).ravel()[:4].tolist()} on an "
                                         f"activation; allowed: finite and positive")
            qtype = _quantized_type(n, g.consts)
            if qtype is not None and qtype not in _ACTIVATION_QTYPES:
                raise UnsupportedOpError(
                    f"node {n.name!r} (QuantizeLinear): "
                    f"{onnx.TensorProto.DataType.Name(qtype).lower()} activations are not "
                    f"supported; allowed: 8- and 16-bit integer types")
            zp = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            # A lone Q with a zero point needs its input up to (qmax - zp)·s: at scale s
            # that can overflow the input's word (q stopped at 27 of 127 on 8-bit words),
            # so there the calibrated scale stays and the Q rescales
            if sc is not None and np.size(sc) == 1 and (
                    zp is None or not np.any(np.asarray(zp)) or _feeds_only_dq(g, n)):
                g.act_scales[n.input[0]] = float(np.asarray(sc).reshape(()))
        keep.append(n)
    g.nodes = keep


def _drop_unmappable_qweights(g: Graph, lost: dict[str, str]) -> None:
    """Conv/Gemm/MatMul read a QDQ weight's scale per output column: drop per-axis weights
    quantized along another axis (they fall back to quantizing the float weight), and warn
    where a layer's weight is such a one, or was folded from one by a node whose integers
    the frontend does not follow (``lost``: tensor -> that node)."""
    for n in g.nodes:
        if len(n.input) < 2:
            continue
        w = n.input[1]
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        out_axis = {"Conv": 0, "Gemm": 0 if trans_b else 1, "MatMul": 1}.get(n.op_type)
        why = None
        if w in g.qweights:
            axis = g.qweights[w][2]
            if axis is not None and axis != out_axis:
                del g.qweights[w]
                why = f"is scaled per index of axis {axis}, not per output column"
        elif w in lost:
            why = f"passes through {lost[w]}, whose integers the compiler does not follow"
        if n.op_type in ("LSTM", "GRU", "RNN"):
            qdq = [i for i in n.input[1:3] if i in g.qweights or i in lost]
            if qdq:   # W and R are quantized jointly, over [x; h] rows: other integers
                warnings.warn(f"node {n.name!r} ({n.op_type}): its QDQ weights "
                              f"{', '.join(map(repr, qdq))} are quantized with the "
                              f"recurrence's [x; h] rows from their float values, so "
                              f"{OTHER_WEIGHTS}", stacklevel=3)
            continue
        if why and out_axis is not None:
            warnings.warn(f"node {n.name!r} ({n.op_type}): its QDQ weight {w!r} {why}: "
                          f"quantized from its float values, so {OTHER_WEIGHTS}",
                          stacklevel=3)


# QuantizeLinear output types the machine holds as activations (onnxruntime cannot return
# int4 ones to calibration, and the words hold 8 or 16 bits)
_ACTIVATION_QTYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                      onnx.TensorProto.UINT16)


def _quantized_type(q, consts) -> int | None:
    """A QuantizeLinear's output element type; None where its zero point is computed."""
    has_zp = len(q.input) > 2 and bool(q.input[2])
    if has_zp and q.input[2] not in consts:
        return None
    return quantized_elem_type(q, consts[q.input[2]] if has_zp else None)


def _drop_same_type_casts(g: Graph) -> None:
    """A Cast of a QuantizeLinear's output to the type it has already is the identity
    (torch's eager-mode quantized export puts Cast(to=UINT8) between each Q and its DQ): its
    readers read the Q's output, so a Q -> DQ pair stays one; as a graph output it is also
    an Identity. A Cast that changes the type stays (lowering refuses it)."""
    producers = {o: n for n in g.nodes for o in n.output}
    keep = []
    for n in g.nodes:
        q = producers.get(n.input[0]) if n.op_type == "Cast" else None
        if (q is None or q.op_type != "QuantizeLinear"
                or node_attrs(n).get("to") != _quantized_type(q, g.consts)):
            keep.append(n)
        else:
            for reader in g.consumers(n.output[0]):
                reader.input[:] = [n.input[0] if i == n.output[0] else i for i in reader.input]
            if n.output[0] in g.outputs:
                keep.append(helper.make_node("Identity", [n.input[0]], [n.output[0]],
                                             name=n.name))
    g.nodes = keep


def _feeds_only_dq(g: Graph, q) -> bool:
    readers = g.consumers(q.output[0])
    return len(readers) == 1 and readers[0].op_type == "DequantizeLinear"


def _fold_batchnorm(g: Graph) -> None:
    """Conv -> BatchNormalization (BN the conv output's only consumer): scale the conv's
    weights and bias, drop the BN."""
    producers = {o: n for n in g.nodes for o in n.output}
    replace, drop = {}, set()
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization":
            continue
        conv = producers.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or len(g.consumers(bn.input[0])) != 1
                or bn.input[0] in g.outputs        # the conv output itself is wanted
                or batchnorm_training(bn)          # batch statistics: lowering refuses it
                or conv.input[1] not in g.consts or not _const_bias(g, conv)
                or any(i not in g.consts for i in bn.input[1:5])):
            continue
        scale, b, mean, var = (np.asarray(g.consts[i], np.float64) for i in bn.input[1:5])
        if scale.size != np.shape(g.consts[conv.input[1]])[0]:
            continue                               # not per channel (opset < 9 spatial=0)
        k = batchnorm_factor(bn, scale, var)
        w = np.asarray(g.consts[conv.input[1]], np.float64)
        has_bias = len(conv.input) > 2 and conv.input[2]
        bias = np.asarray(g.consts[conv.input[2]], np.float64) if has_bias else 0.0
        wname, bname = conv.name + "_bnfold_w", conv.name + "_bnfold_b"
        wq = _scale_qweight(g, conv.input[1], wname, k)
        g.consts[wname] = wq if wq is not None else (
            w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        g.consts[bname] = ((bias - mean) * k + b).astype(np.float32)
        new = helper.make_node("Conv", [conv.input[0], wname, bname], [bn.output[0]],
                               name=conv.name)
        new.attribute.extend(conv.attribute)
        replace[conv.name] = new
        drop.add(bn.name)
    g.nodes = [replace.get(n.name, n) for n in g.nodes if n.name not in drop]


def _scale_qweight(g: Graph, src: str, dst: str, k: np.ndarray) -> np.ndarray | None:
    """Record QDQ conv weight ``src`` times ``k`` per output channel as ``dst``, keeping its
    integers: |k| goes into the (now per-channel, axis 0) scale, a negative k negates the
    channel's integers, k = 0 zeroes them. Returns dst's float weight; None if src is float."""
    if src not in g.qweights:
        return None
    q, s, _ = g.qweights[src]
    k = np.asarray(k, np.float64).reshape(-1)
    shape = (-1,) + (1,) * (q.ndim - 1)
    s = np.broadcast_to(np.asarray(s, np.float64), k.shape) * np.where(k == 0, 1.0, np.abs(k))
    q = q * np.sign(k).astype(np.int64).reshape(shape)
    g.qweights[dst] = (q, s, 0)
    return q.astype(np.float32) * s.astype(np.float32).reshape(shape)


def _const_bias(g: Graph, conv) -> bool:
    """The conv has no bias or a constant one (a computed bias cannot be folded into)."""
    return len(conv.input) <= 2 or not conv.input[2] or conv.input[2] in g.consts


def _per_channel(c, cout: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts per output channel of a conv output of ``rank`` axes
    (N, C, spatial...), as (cout,); None when it does not (a constant of higher rank would
    also raise the result's rank)."""
    c = np.asarray(c, np.float64)
    if c.ndim > rank:
        return None
    if c.size == 1:
        return np.full(cout, float(c.reshape(())))
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)     # ONNX broadcasts from the right
    if full.shape[1] == cout and all(n == 1 for i, n in enumerate(full.shape) if i != 1):
        return full.reshape(cout)
    return None


def _fold_affine_into_conv(g: Graph) -> None:
    """Conv -> Mul by a per-channel constant -> Add of a per-channel constant (batch norm
    exported as Mul/Add, as in DenseNet and Inception v2): fold into the conv's weights and
    bias, saving a VFU pass over the whole feature map per layer."""
    changed = True
    while changed:
        changed = False
        producers = {o: n for n in g.nodes for o in n.output}
        for node in g.nodes:
            if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
                continue
            k = 1 if node.input[1] in g.consts else 0 if node.input[0] in g.consts else None
            if k is None:
                continue
            x = node.input[1 - k]
            conv = producers.get(x)
            if (conv is None or conv.op_type != "Conv" or conv.input[1] not in g.consts
                    or len(g.consumers(x)) != 1 or x in g.outputs or not _const_bias(g, conv)):
                continue
            w = np.asarray(g.consts[conv.input[1]], np.float64)
            cout = w.shape[0]
            c = _per_channel(g.consts[node.input[k]], cout, w.ndim)
            if c is None:
                continue
            has_bias = len(conv.input) > 2 and conv.input[2]
            b = np.asarray(g.consts[conv.input[2]], np.float64) if has_bias else np.zeros(cout)
            if node.op_type == "Mul":
                w = w * c.reshape(-1, *([1] * (w.ndim - 1)))
                b = b * c
            else:
                b = b + c
            tag = f"{conv.name}_{node.name}_fold"
            wq = _scale_qweight(g, conv.input[1], tag + "_w",
                                c if node.op_type == "Mul" else np.ones(cout))
            g.consts[tag + "_w"] = wq if wq is not None else w.astype(np.float32)
            g.consts[tag + "_b"] = b.astype(np.float32)
            new = helper.make_node("Conv", [conv.input[0], tag + "_w", tag + "_b"],
                                   [node.output[0]], name=conv.name)
            new.attribute.extend(conv.attribute)
            g.nodes = [new if n is conv else n for n in g.nodes if n is not node]
            if not g.consumers(conv.input[1]):     # another conv may share the QDQ weight
                g.qweights.pop(conv.input[1], None)
            changed = True
            break
