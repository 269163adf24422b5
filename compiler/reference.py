"""References a compiled model is checked against: onnxruntime on the original model
(float) and the integer reference of the lowered layers (numpy, bit-exact target)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from simulator.errors import first_line
from simulator.functional import quantize_input

from .errors import CompilerError
from .frontend import MIN_OPSET, Graph, default_opset, load_model, upgrade_old_opset
from .ir import LayerProgram


def onnxruntime_session(model: str | Path | bytes, threads: int = 1, fuse: bool = False):
    """An onnxruntime CPU session of ``model`` (a path or serialized bytes) with ``threads``
    intra-op threads, one inter-op thread and nothing logged. Basic graph optimizations
    only, so the graph runs as written: onnxruntime's extended ones (``fuse``, its default)
    turn Q/DQ pairs, and a weight's DequantizeLinear into a MatMul, into its own integer
    kernels, which quantize activations and round differently (0.4 % of the logits on a
    Linear over a 3-D input)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # fatal only: at ERROR onnxruntime prints its own coloured lines before our one-line
    # error (a run's logging follows the session's)
    so.log_severity_level = 4
    if not fuse:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # even at basic level onnxruntime 1.32 int8-quantizes a float Conv/Gemm weight between
    # a DequantizeLinear and a QuantizeLinear (a layer quantize_static left in float): not
    # the graph as written (0.05 off on one conv)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=["WeightBiasQuantization"])


def run_onnxruntime(model: str | Path | onnx.ModelProto | Graph,
                    inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs of onnxruntime, one sample at a time (models have batch 1)."""
    label = (str(model) if isinstance(model, (str, Path)) else
             model.name if isinstance(model, Graph) else model.graph.name)
    if isinstance(model, Graph):
        model = model.to_onnx()
    if isinstance(model, (str, Path)) and default_opset(
            onnx.load(str(model), load_external_data=False)) < MIN_OPSET:
        model = load_model(model)
    if isinstance(model, onnx.ModelProto):
        # as the compiler does: onnxruntime runs no ops older than MIN_OPSET
        model = upgrade_old_opset(model)
    if isinstance(model, onnx.ModelProto) and model.ir_version > 10:
        # onnx's helper stamps its newest IR version; onnxruntime may lag behind it.
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.ir_version = 10
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if not inputs:
        raise CompilerError(f"{label}: no inputs given; onnxruntime runs a batch of "
                            f"inputs, one array per graph input")
    batch = len(next(iter(inputs.values())))
    # The graph as written: onnxruntime 1.32's fused int8 kernels (QLinearConv, table
    # sigmoid) were 5 % (L2) off the QDQ graph's own semantics on a conv-conv-sigmoid model.
    try:
        sess = onnxruntime_session(data)
        if any(isinstance(i.shape[0], int) and i.shape[0] != 1 for i in sess.get_inputs()
               if i.shape):
            # exported at a static batch (the compiler sets it to 1): feed it one sample
            sess = onnxruntime_session(_any_batch(data).SerializeToString())
        names = list(dict.fromkeys(o.name for o in sess.get_outputs()))  # a name listed twice
        outs = {n: [] for n in names}
        for b in range(batch):
            res = sess.run(names, {k: np.asarray(v[b:b + 1], np.float32)
                                   for k, v in inputs.items()})
            for n, v in zip(names, res):
                outs[n].append(v)
    except Exception as e:   # onnxruntime's errors (bad attributes, shapes) span lines
        raise CompilerError(f"onnxruntime failed on model {label!r}: {first_line(e)}") from e
    return {n: np.concatenate(v) for n, v in outs.items()}


def _any_batch(model: bytes | str | Path) -> onnx.ModelProto:
    """The model with the first axis of its graph inputs and outputs symbolic, and no
    intermediate shapes (which repeat the static batch)."""
    m = (onnx.ModelProto.FromString(model) if isinstance(model, bytes)
         else onnx.load(str(model)))
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    del m.graph.value_info[:]
    return m


def run_integer_reference(lp: LayerProgram, inputs: dict[str, np.ndarray]
                          ) -> dict[str, np.ndarray]:
    """The lowered model's integer semantics in numpy: outputs as logical-layout integers
    (``name:int``) and real values (``name``), like the simulator's."""
    vals = {}
    for name in lp.inputs:
        t = lp.tensors[name]
        x = np.asarray(inputs[name])
        q = quantize_input(x.reshape(len(x), -1), t.scale, lp.input_bits).reshape(x.shape)
        vals[name] = t.from_logical(q).reshape(len(x), -1)
    vals = lp.run_reference(vals)
    out = {}
    for o in lp.outputs:
        t = lp.tensors[o]
        q = t.to_logical(vals[o])
        out[o + ":int"] = q
        out[o] = q.astype(np.float64) * t.scale
    return out
