"""Activation-like ops (Sigmoid, Tanh, LeakyRelu, PRelu, Clip, Mul/Div/Neg by constants,
BatchNormalization, Softmax, LogSoftmax, QuantizeLinear/DequantizeLinear): each compiled
from a small ONNX graph, simulated, and checked (a) bit for bit against the integer
reference of the lowered layers and (b) against onnxruntime within 1 % relative L2."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import UnsupportedOpError, compile_model
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

CFG = load_config("puma", ["adc.bits=none"])
RNG = np.random.default_rng(1234)
CONV_W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
CONV_B = RNG.standard_normal(4).astype(np.float32) * 0.1


def _model(nodes, inits, in_shape, outputs, opset=17):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    # Typed outputs from shape inference (the checker wants them).
    known = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    m.graph.output.extend([known[o] for o in outputs])
    onnx.checker.check_model(m)
    return m


def _conv(out="c", cout=4):
    w = CONV_W if cout == 4 else RNG.standard_normal((cout, 3, 3, 3)).astype(np.float32) * .5
    b = CONV_B if cout == 4 else RNG.standard_normal(cout).astype(np.float32) * 0.1
    return ([helper.make_node("Conv", ["x", f"w{out}", f"b{out}"], [out], pads=[1, 1, 1, 1])],
            {f"w{out}": w, f"b{out}": b})


def check(model, x, tol=1e-2):
    """Compile, simulate, compare; returns the LayerProgram."""
    prog, lp, _ = compile_model(model, CFG, calibration={"x": x}, return_ir=True)
    rep = simulate(prog, {"x": x})
    ref = run_integer_reference(lp, {"x": x})
    ort = run_onnxruntime(model, {"x": x})
    for o in lp.outputs:
        np.testing.assert_array_equal(rep.outputs[o + ":int"], ref[o + ":int"],
                                      err_msg=f"{o}: simulator != integer reference")
        want = ort[o].astype(np.float64)
        err = np.linalg.norm(rep.outputs[o] - want) / max(np.linalg.norm(want), 1e-12)
        assert err <= tol, f"{o}: relative L2 error {err:.2e} vs onnxruntime"
    return lp


def _img(n=2, c=3, h=8, w=8):
    return RNG.standard_normal((n, c, h, w)).astype(np.float32)


# ---- elementwise activations ----------------------------------------------------------

@pytest.mark.parametrize("op,kw", [("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {}),
                                   ("LeakyRelu", {"alpha": 0.3}), ("Elu", {}),
                                   ("Elu", {"alpha": 0.5}), ("Selu", {}),
                                   ("Selu", {"alpha": 1.2, "gamma": 2.0}), ("Softplus", {})])
def test_unary_after_conv(op, kw):
    nodes, inits = _conv()
    nodes.append(helper.make_node(op, ["c"], ["y"], **kw))
    check(_model(nodes, inits, (1, 3, 8, 8), ["y"]), _img())


@pytest.mark.parametrize("op", ["Sigmoid", "Softplus", "Elu"])
def test_unary_on_vector_input(op):
    # wide range: Softplus must not overflow exp for large x, Elu saturates at -alpha
    x = RNG.standard_normal((3, 40)).astype(np.float32) * 6
    check(_model([helper.make_node(op, ["x"], ["y"])], {}, (1, 40), ["y"]), x)


@pytest.mark.parametrize("slope_shape", [(1,), (4, 1, 1)])
def test_prelu(slope_shape):
    nodes, inits = _conv()
    inits["slope"] = RNG.uniform(0.05, 0.6, slope_shape).astype(np.float32)
    nodes.append(helper.make_node("PRelu", ["c", "slope"], ["y"]))
    check(_model(nodes, inits, (1, 3, 8, 8), ["y"]), _img())


@pytest.mark.parametrize("sum_is_output", [False, True])
def test_relu_after_add_runs_in_the_add_layer(sum_is_output):
    # A residual block's Add -> Relu is one VFU layer (one pass, one core), as a Relu after
    # a Conv is; not when the sum is also a graph output (its value must stay).
    nodes, inits = _conv("c1")
    n2, i2 = _conv("c2")
    nodes += n2
    inits.update(i2)
    nodes += [helper.make_node("Add", ["c1", "c2"], ["s"]),
              helper.make_node("Relu", ["s"], ["y"]),
              helper.make_node("MaxPool", ["y"], ["p"], kernel_shape=[3, 3], pads=[1] * 4)]
    outputs = ["p", "s"] if sum_is_output else ["p"]
    lp = check(_model(nodes, inits, (1, 3, 8, 8), outputs), _img())
    ops = [L.op for L in lp.layers]
    assert ("Relu" in ops) == sum_is_output, ops
    add = next(L for L in lp.layers if L.op == "Add")
    assert add.relu != sum_is_output


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (0.0, None), (None, 0.2)])
def test_clip_standalone(lo, hi):
    # Add -> Clip: the Clip cannot fuse into an MVM layer.
    nodes, inits = _conv()
    nodes.append(helper.make_node("Add", ["c", "c"], ["s"]))
    ins = ["s", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    while ins[-1] == "":
        ins.pop()
    inits.update({k: np.float32(v) for k, v in (("lo", lo), ("hi", hi)) if v is not None})
    nodes.append(helper.make_node("Clip", ins, ["y"]))
    lp = check(_model(nodes, inits, (1, 3, 8, 8), ["y"]), _img())
    assert [L.op for L in lp.layers][-1] == "Clip"


def test_clip_attribute_bounds_opset6():
    m = _model([helper.make_node("Clip", ["x"], ["y"], min=-0.25, max=0.5)], {}, (1, 3, 4, 4),
               ["y"], opset=6)
    check(m, _img(h=4, w=4))


# ---- constants: Mul, Div, Neg, BatchNormalization -------------------------------------

@pytest.mark.parametrize("op,const", [("Mul", np.float32(-1.7)), ("Div", np.float32(0.4)),
                                      ("Mul", "per_channel"), ("Div", "per_channel")])
def test_mul_div_by_constant(op, const):
    nodes, inits = _conv()
    if isinstance(const, str):
        const = RNG.uniform(0.5, 2.0, (1, 4, 1, 1)).astype(np.float32)
    inits["k"] = const
    nodes.append(helper.make_node(op, ["k", "c"] if op == "Mul" else ["c", "k"], ["y"]))
    check(_model(nodes, inits, (1, 3, 8, 8), ["y"]), _img())


def test_neg_and_mul_on_vector():
    x = RNG.standard_normal((2, 12)).astype(np.float32)
    k = RNG.uniform(-2, 2, (1, 12)).astype(np.float32)
    nodes = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Mul", ["n", "k"], ["y"])]
    check(_model(nodes, {"k": k}, (1, 12), ["y"]), x)


def test_div_by_activation_is_refused():
    nodes = [helper.make_node("Div", ["k", "x"], ["y"])]
    m = _model(nodes, {"k": np.float32(2.0)}, (1, 4), ["y"])
    with pytest.raises(UnsupportedOpError, match="Div"):
        compile_model(m, CFG, calibration={"x": np.ones((1, 4), np.float32)})


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 5, 6), (1, 7)])
def test_batchnorm_unfolded(shape):
    C = shape[1]
    inits = {"g": RNG.uniform(0.5, 1.5, C), "b": RNG.standard_normal(C),
             "m": RNG.standard_normal(C) * 0.2, "v": RNG.uniform(0.5, 2.0, C)}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"],
                              epsilon=1e-3)]
    x = RNG.standard_normal((2,) + shape[1:]).astype(np.float32)
    lp = check(_model(nodes, inits, shape, ["y"]), x)
    assert lp.layers[-1].op == "BatchNormalization"


# ---- Softmax / LogSoftmax -------------------------------------------------------------

SOFTMAX_CASES = {
    # name: (input shape, op, axis, opset, convolve first)
    "channels_per_pixel": ((1, 3, 8, 8), "Softmax", 1, 17, True),
    "log_channels_per_pixel": ((1, 3, 8, 8), "LogSoftmax", 1, 17, True),
    "last_axis_rows": ((1, 3, 4, 5), "Softmax", 3, 17, False),
    "last_axis_rows_chunked": ((1, 40, 2, 10), "LogSoftmax", 3, 17, False),  # 3 groups/chunk
    "log_last_axis_rows": ((1, 3, 4, 5), "LogSoftmax", -1, 6, False),
    "whole_map_opset11": ((1, 3, 4, 4), "Softmax", 1, 11, False),
    "per_channel_over_pixels_opset11": ((1, 3, 4, 4), "LogSoftmax", 2, 11, False),
    "vector_300": ((1, 300), "Softmax", -1, 17, False),
    "log_vector_300": ((1, 300), "LogSoftmax", 1, 13, False),
    "vector_rows": ((1, 6, 10), "Softmax", -1, 17, False),
    "map_1d_channels": ((1, 5, 7), "Softmax", 1, 17, False),
}


@pytest.mark.parametrize("case", sorted(SOFTMAX_CASES))
def test_softmax(case):
    shape, op, axis, opset, conv = SOFTMAX_CASES[case]
    nodes, inits, src = [], {}, "x"
    if conv:
        nodes, inits = _conv()
        src = "c"
    nodes.append(helper.make_node(op, [src], ["y"], axis=axis))
    x = (RNG.standard_normal((2,) + shape[1:]) * 2).astype(np.float32)
    check(_model(nodes, inits, shape, ["y"], opset=opset), x)


def test_softmax_1000_classes_squeezenet_head():
    """squeezenet's (1, 1000, 1, 1) head: chunked max/sum over 1000 words per pixel."""
    m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, (1, 1000, 1, 1), ["y"])
    lp = check(m, (RNG.standard_normal((2, 1000, 1, 1)) * 3).astype(np.float32))
    L = lp.layers[-1]
    assert (L.N, L.blk) == (1000, 1)


def test_softmax_program_size_independent_of_pixels():
    sizes = []
    for hw in (4, 16):
        nodes, inits = _conv()
        nodes.append(helper.make_node("Softmax", ["c"], ["y"], axis=1))
        prog = compile_model(_model(nodes, inits, (1, 3, hw, hw), ["y"]), CFG,
                             calibration={"x": _img(1, 3, hw, hw)})
        sizes.append(prog.n_instructions)
    assert sizes[0] == sizes[1]


def test_softmax_over_h_needs_an_unpadded_map():
    """Softmax over H (W, C kept): groups of W*C words, rows contiguous when unpadded."""
    m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=2)], {}, (1, 3, 4, 5), ["y"])
    lp = check(m, _img(2, 3, 4, 5))
    assert (lp.layers[-1].N, lp.layers[-1].blk) == (60, 15)
    nodes, inits = _conv()   # the conv reads a padded x: x cannot also be a flat segment
    nodes.append(helper.make_node("Softmax", ["x"], ["y"], axis=2))
    m = _model(nodes, inits, (1, 3, 8, 8), ["y", "c"])
    with pytest.raises(UnsupportedOpError, match="flattened"):
        compile_model(m, CFG, calibration={"x": _img()})


def test_softmax_groups_too_wide_are_refused():
    m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=2)], {}, (1, 4, 3, 200), ["y"])
    with pytest.raises(UnsupportedOpError, match="registers"):
        compile_model(m, CFG, calibration={"x": _img(1, 4, 3, 200)})


# ---- QuantizeLinear / DequantizeLinear ------------------------------------------------

def _q(name_in, name_out, scale, zp, dtype):
    return helper.make_node("QuantizeLinear", [name_in, f"s_{name_out}", f"z_{name_out}"],
                            [name_out]), {f"s_{name_out}": np.float32(scale),
                                          f"z_{name_out}": np.array(zp, dtype)}


def _dq(name_in, name_out, qname):
    return helper.make_node("DequantizeLinear", [name_in, f"s_{qname}", f"z_{qname}"],
                            [name_out])


@pytest.mark.parametrize("dtype,zp", [(np.int8, 0), (np.uint8, 128), (np.uint8, 0)])
def test_qdq_pair_on_activation(dtype, zp):
    """x -> Conv -> Q -> DQ -> Relu: the pair is one saturating layer at the Q's scale."""
    nodes, inits = _conv()
    q, qi = _q("c", "q", 0.02, zp, dtype)
    nodes += [q, _dq("q", "d", "q"), helper.make_node("Relu", ["d"], ["y"])]
    inits.update(qi)
    lp = check(_model(nodes, inits, (1, 3, 8, 8), ["y"]), _img())
    assert [L.op for L in lp.layers] == ["Conv", "QuantizeLinear", "Relu"]
    assert lp.tensors["c"].scale == np.float32(0.02)


def test_quantize_output_and_standalone_dequantize():
    """Q's output is a graph output too, so Q and DQ are lowered apart."""
    nodes, inits = _conv()
    q, qi = _q("c", "q", 0.03, 10, np.uint8)
    nodes += [q, _dq("q", "y", "q")]
    inits.update(qi)
    lp = check(_model(nodes, inits, (1, 3, 8, 8), ["q", "y"]), _img())
    assert [L.op for L in lp.layers] == ["Conv", "QuantizeLinear", "DequantizeLinear"]


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_weight_keeps_its_integers(per_channel):
    """Conv weight = DequantizeLinear(int8 constant): the frontend records the integers and
    scales and the compiler maps exactly those integers."""
    w_int = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    scale = (RNG.uniform(0.001, 0.01, 4) if per_channel else np.array(0.004)).astype(
        np.float32)
    inits = {"wq": w_int, "ws": scale, "wz": np.zeros(scale.shape, np.int8), "b": CONV_B}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    m = _model(nodes, inits, (1, 3, 8, 8), ["y"])
    _, lp, g = compile_model(m, CFG, calibration={"x": _img()}, return_ir=True)
    q, s, axis = g.qweights["w"]
    np.testing.assert_array_equal(q, w_int)
    assert axis == (0 if per_channel else None) and np.allclose(s, scale)
    conv = lp.layers[0]
    np.testing.assert_array_equal(conv.weight, np.transpose(w_int, (2, 3, 1, 0)).reshape(-1, 4))
    check(m, _img())


def test_onnxruntime_static_qdq_model(tmp_path):
    """A model quantized by onnxruntime (QDQ format, per-channel int8 weights, int32 biases,
    Q/DQ pairs around every activation) compiles with the model's own scales."""
    quant = pytest.importorskip("onnxruntime.quantization")
    nodes, inits = _conv()
    inits["w2"] = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3
    inits["b2"] = RNG.standard_normal(6).astype(np.float32) * 0.1
    nodes += [helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["c2"], ["y"])]
    onnx.save(_model(nodes, inits, (1, 3, 8, 8), ["y"]), tmp_path / "f.onnx")
    x = _img(4)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    quant.quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", Reader(),
                          quant_format=quant.QuantFormat.QDQ, per_channel=True,
                          activation_type=quant.QuantType.QInt8,
                          weight_type=quant.QuantType.QInt8)
    m = onnx.load(str(tmp_path / "q.onnx"))
    lp = check(m, x)
    convs = [L for L in lp.layers if L.op == "Conv"]
    assert len(convs) == 2 and all(np.abs(L.weight).max() <= 127 for L in convs)


def test_softplus_of_large_negative_inputs_keeps_its_precision():
    # outputs ~1e-3 of the inputs' range: the exp branch needs its own multiplier precision
    x = (-np.abs(RNG.standard_normal((2, 64))) * 30 - 5).astype(np.float32)
    check(_model([helper.make_node("Softplus", ["x"], ["y"])], {}, (1, 64), ["y"]), x)
