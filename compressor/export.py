"""Export a compressed model as QDQ ONNX, with per-layer metadata for the compiler.

The float model is exported with torch's TorchScript exporter (``dynamo=False``), keeping
BatchNormalization as its own node (the compiler folds it), then each quantized weight
initializer ``W`` is replaced by an integer initializer ``W_quantized``, a float scale
``W_scale`` and a zero point ``W_zero_point`` (0) feeding a ``DequantizeLinear`` whose output
is named ``W`` (with ``quant.per_channel``, ``W_scale`` and ``W_zero_point`` hold one per
output channel and the node has ``axis=0``: a Conv's output channels, a Gemm(transB)'s rows),
so the Conv/Gemm that read ``W`` are unchanged and onnxruntime runs the model.
Integer type: int8 for up to 8 bits; int16 for up to 16 bits when the opset is >= 21
(DequantizeLinear takes int16 from opset 21); int32 otherwise (noted in the metadata).
Mask-only (unquantized) layers keep their float initializer.

Metadata (``ModelProto.metadata_props``), the contract with ``compiler/``:

``xbarsim.compressor``  JSON: ``format`` (1), ``recipe``, ``method``, ``geometry`` (the
                        :class:`CrossbarGeometry` fields), ``accuracy``, ``layers`` (names),
                        ``output_scale`` (the model's outputs times it are the unfolded
                        model's; 1 unless ``pow2: fold``, :mod:`compressor.fold`).
``xbarsim.layer.NAME``  JSON per compressed layer: ``initializer`` (weight tensor name),
                        ``op`` (Conv/Gemm), ``constraint`` (recipe form), ``bits``,
                        ``mapping``, ``pow2``, ``scale`` (weight units per level; a list,
                        one per output channel, with ``per_channel``: true), ``levels``
                        ([qmin, qmax]), ``dtype`` (integer type stored, or ``float``),
                        ``note``, and the crossbar occupancy of
                        :func:`compressor.geometry.occupancy` (``matrix``, ``grid``,
                        ``blocks_nonzero``, ``nonzero_blocks``, ``max_nonzeros_per_segment``…).
"""
from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

# The exporter de-duplicates equal tensors behind Identity nodes; models' helper gives each
# its own initializer again, so every compressed weight is found by name.
from models.onnx_export import INPUT_NAME, OUTPUT_NAME, TORCHSCRIPT_EXPORTER, run_onnxruntime
from models.onnx_export import _inline_identity_initializers as _inline_identities
from simulator.cli import TORCH_MAX_OPSET
from simulator.errors import first_line
from simulator.fileio import atomic_write

from .errors import CompressionError
from .geometry import occupancy, to_crossbar
from .masking import broadcast_scale

FORMAT_VERSION = 1


def export_qdq(result, path: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None,
               opset: int = 19, verify: np.ndarray | None = None, atol: float = 1e-4) -> Path:
    """Write ``result`` (a :class:`compressor.pipeline.CompressionResult`) to ``path``.

    ``input_shape`` is one sample's shape (no batch); zoo models carry it as
    ``sample_shape``. ``verify``: a batch of inputs to run through onnxruntime and PyTorch;
    a difference above ``atol`` raises :class:`CompressionError`. Returns the path.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not 10 <= opset <= TORCH_MAX_OPSET:
        raise CompressionError(f"opset={opset!r}: must be an integer from 10 to "
                               f"{TORCH_MAX_OPSET} (DequantizeLinear exists from opset 10; 13 "
                               f"for per-channel scales; {TORCH_MAX_OPSET}: torch's newest)")
    from .pipeline import CompressionResult
    if not isinstance(result, CompressionResult):
        raise CompressionError(f"result: what compressor.compress returns, not "
                               f"{type(result).__name__}")
    model = result.model.eval()
    shape = tuple(input_shape or getattr(model, "sample_shape", ()) or ())
    if not shape:
        raise CompressionError("input_shape: needed, the model has no sample_shape "
                               "(e.g. (1, 28, 28))")
    if verify is not None:
        verify = _as_samples(verify, shape)
    sample = torch.zeros((1, *shape))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
            torch.onnx.export(model, (sample,), buf, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              **TORCHSCRIPT_EXPORTER)
    except (RuntimeError, ValueError, TypeError) as e:   # the tracer: a wrong input_shape
        raise CompressionError(f"cannot export the model with input {tuple(sample.shape)}: "
                               f"{first_line(e)}") from e
    proto = onnx.load_from_string(buf.getvalue())
    _inline_identities(proto.graph)
    geom = result.recipe.geometry
    props = {p.key: p.value for p in proto.metadata_props}
    props["xbarsim.model"] = getattr(model, "zoo_name", type(model).__name__)
    props["xbarsim.compressor"] = json.dumps({
        "format": FORMAT_VERSION, "recipe": result.recipe.name, "method": result.method,
        "geometry": geom.to_dict(), "accuracy": result.accuracy, "layers": list(result.layers),
        "output_scale": result.output_scale})
    consumers = {i: n.op_type for n in proto.graph.node for i in n.input}
    for name, layer in result.layers.items():
        w = dict(result.model.named_modules())[name].weight.detach().numpy()
        init, transposed = _weight_initializer(proto.graph, name, w)
        meta = _rewrite(proto.graph, init, layer, opset, transposed)
        meta.update(initializer=init, op=consumers.get(init, "?"),
                    constraint=layer.constraint.describe(),
                    **occupancy(to_crossbar(w, layer.view), geom))
        if layer.view is not None:   # rows in the chip's order (compressor.layout)
            meta["crossbar_view"] = list(layer.view)
        props[f"xbarsim.layer.{name}"] = json.dumps(meta)
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if verify is not None and not (isinstance(atol, (int, float)) and atol >= 0):
        raise CompressionError(f"atol={atol!r}: must be a number >= 0")
    with atomic_write(path) as tmp:
        onnx.save(proto, tmp)
        if verify is not None:  # data may be images for a model that takes flat vectors
            # checked before the file takes its name: a failed check leaves no wrong file
            err = max_difference(tmp, model, np.reshape(verify, (len(verify), *shape)))
            if err > atol:
                raise CompressionError(f"{path}: onnxruntime differs from PyTorch by "
                                       f"{err:.3g} > atol={atol}; nothing was written")
    return path


def _as_samples(verify, shape: tuple[int, ...]) -> np.ndarray:
    """``verify`` as a float32 array of at least one sample of ``shape`` (or of as many
    values); a torch tensor may require grad or live on a GPU."""
    if isinstance(verify, torch.Tensor):
        verify = verify.detach().cpu().numpy()
    wanted = (f"verify: an array of samples of shape {shape} (or of {math.prod(shape)} "
              f"values each)")
    try:
        verify = np.asarray(verify, np.float32)
    except (TypeError, ValueError) as e:   # ragged lists, strings
        raise CompressionError(f"{wanted}, not {type(verify).__name__}: {first_line(e)}") from e
    if verify.ndim < 1 or verify.size != len(verify) * math.prod(shape):
        raise CompressionError(f"{wanted}, not shape {verify.shape}")
    if not len(verify):
        raise CompressionError(f"{wanted}: at least one sample, not shape {verify.shape}")
    return verify


def max_difference(path: str | os.PathLike, model: torch.nn.Module, x: np.ndarray) -> float:
    """Largest ``|onnxruntime(path)(x) − model(x)|`` over a batch ``x``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    got = run_onnxruntime(path, x)
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    return float(np.max(np.abs(got - want)))


def scale_json(scale):
    """A scale as JSON-ready data: a float, or a list of them per channel."""
    return None if scale is None else np.asarray(scale, dtype=np.float64).tolist()


def _weight_initializer(graph: onnx.GraphProto, name: str, w: np.ndarray) -> tuple[str, bool]:
    """``(initializer, transposed)`` holding module ``name``'s weight ``w``: ``name.weight``
    as it is, or, for a Linear without bias (which the exporter writes as a MatMul by the
    transposed weight, under a generated name), the MatMul's initializer equal to ``wᵀ``."""
    init = f"{name}.weight"
    inits = {t.name: t for t in graph.initializer}
    if init in inits:
        return init, False
    if w.ndim == 2:
        for n in graph.node:
            t = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
            if t is not None and tuple(t.dims) == w.T.shape \
                    and np.array_equal(numpy_helper.to_array(t), w.T):
                return t.name, True
    raise CompressionError(f"layer {name!r}: no ONNX initializer named {init!r} and no "
                           f"MatMul by its transposed weight (weight shared or renamed by the "
                           f"exporter)")


def _rewrite(graph: onnx.GraphProto, init: str, layer, opset: int,
             transposed: bool = False) -> dict:
    """Replace float initializer ``init`` by integer + DequantizeLinear; return metadata.
    ``transposed``: ``init`` holds the weight transposed (a MatMul's ``(in, out)``)."""
    c = layer.constraint
    meta: dict = {"note": ""}
    if c.quant is not None:  # pow2 "fold": the stored scale is a power of two, as for true
        q = c.quant
        meta.update(bits=q.bits, mapping=q.mapping, pow2=q.pow2, scale=scale_json(layer.scale),
                    levels=list(q.levels))
        if q.per_channel:
            meta["per_channel"] = True
    if layer.levels is None:
        meta["dtype"] = "float"
        return meta
    found = [i for i, t in enumerate(graph.initializer) if t.name == init]
    old = graph.initializer[found[0]]
    channels = np.ndim(layer.scale) == 1
    if channels and opset < 13:
        raise CompressionError(f"{init}: a per-channel scale needs DequantizeLinear's axis, "
                               f"from opset 13 (asked for {opset})")
    exact = layer.levels.astype(np.float32) * np.float32(
        broadcast_scale(layer.scale, layer.levels.ndim))
    levels = layer.levels.T if transposed else layer.levels
    exact = exact.T if transposed else exact
    if not np.array_equal(numpy_helper.to_array(old), exact):
        raise CompressionError(f"{init}: model weight is not scale * levels; snap it first")
    bits = c.quant.bits
    if bits <= 8:
        np_type = np.int8
    elif bits <= 16 and opset >= 21:
        np_type = np.int16
    else:
        np_type = np.int32
        meta["note"] = (f"{bits}-bit levels stored as int32: " + (
            f"DequantizeLinear takes int16 only from opset 21 (this model: {opset})"
            if bits <= 16 else "more bits than int16 holds"))
    meta["dtype"] = np.dtype(np_type).name
    del graph.initializer[found[0]]
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(levels.astype(np_type)),
                                f"{init}_quantized"),
        numpy_helper.from_array(np.array(layer.scale, dtype=np.float32), f"{init}_scale"),
        numpy_helper.from_array(np.zeros(np.shape(layer.scale), dtype=np_type),
                                f"{init}_zero_point"),
    ])
    # a per-channel scale runs along the output channels: axis 0 of a Conv's weight and of a
    # Gemm's (transB: the exporter's layout of a Linear weight), axis 1 of a MatMul's
    node = helper.make_node("DequantizeLinear",
                            [f"{init}_quantized", f"{init}_scale", f"{init}_zero_point"], [init],
                            name=f"{init}_DequantizeLinear",
                            **({"axis": int(transposed)} if channels else {}))
    graph.node.insert(0, node)
    return meta
