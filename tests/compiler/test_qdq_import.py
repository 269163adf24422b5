"""QDQ models as other tools write them: a weight's integers reach the crossbars through
Transpose and Reshape, the fallbacks that lose them warn, torch's same-type Casts between
Q and DQ are the identity, and what is not supported (int4 activations, onnxruntime's
contrib Q/DQ) is refused in one line naming the node."""
import re
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.errors import UnsupportedOpError
from compiler.frontend import OTHER_WEIGHTS, frontend
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

Q_INT = np.random.default_rng(0).integers(-60, 61, (4, 8)).astype(np.int8)   # (out, in)


def _model(nodes, inits, x_shape, y_shape, opset=17, x="x", y="y"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT,
                                                                     x_shape)],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 21 else 10
    return m


def _dq_fc(via: str, scale: np.ndarray, axis: int = 0, w=Q_INT):
    """x (1, 8) -> y (1, 4) by DequantizeLinear(w) transposed by ``via``."""
    dq = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=axis)
    if via == "Transpose":
        fc = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
              helper.make_node("MatMul", ["x", "wt"], ["y"], name="fc")]
    else:
        fc = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")]
    return _model([dq] + fc, {"wq": w, "ws": scale}, [1, 8], [1, 4])


def _compile_quietly(model, x):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*" + re.escape(OTHER_WEIGHTS))
        return compile_model(model, load_config("puma", ["weight_bits=8", "adc.bits=none"]),
                             calibration={"x": x}, return_ir=True)


@pytest.mark.parametrize("scale", [np.float32(0.01),
                                   np.array([0.01, 0.02, 0.005, 0.03], np.float32)])
def test_transposed_qdq_weight_maps_the_files_integers(scale):
    """DQ -> Transpose -> MatMul (torch's Linear without bias) was folded in float and
    re-quantized per column without a word (4-bit: 8 % off); now it maps the file's
    integers, as DQ -> Gemm(transB) does, a per-row scale becoming per column."""
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    for via in ("Transpose", "Gemm"):
        model = _dq_fc(via, scale)
        prog, lp, _ = _compile_quietly(model, x)
        np.testing.assert_array_equal(lp.layers[0].weight, Q_INT.T.astype(np.int64))
        out = simulate(prog, {"x": x}).outputs["y"]
        ort = run_onnxruntime(model, {"x": x})["y"]
        assert np.abs(out - ort).max() < 1e-2 * np.abs(ort).max()


@pytest.mark.parametrize("alpha", [0.5, -2.0])
def test_gemm_alpha_folds_into_the_qdq_weights_scale(alpha):
    """Gemm(alpha != 1) re-quantized the float product, without the warning: other
    integers than the file's (8-bit: levels up to 60 re-gridded to 127)."""
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    model = _dq_fc("Gemm", np.array([0.01, 0.02, 0.005, 0.03], np.float32))
    model.graph.node[1].attribute.append(helper.make_attribute("alpha", alpha))
    prog, lp, _ = _compile_quietly(model, x)
    np.testing.assert_array_equal(lp.layers[0].weight,
                                  int(np.sign(alpha)) * Q_INT.T.astype(np.int64))
    out = simulate(prog, {"x": x}).outputs["y"]
    ort = run_onnxruntime(model, {"x": x})["y"]
    assert np.abs(out - ort).max() < 1e-2 * np.abs(ort).max()


def test_reshaped_per_channel_qdq_weight_keeps_its_integers_and_axis():
    q = np.random.default_rng(2).integers(-9, 10, (4, 27)).astype(np.int8)
    shape = np.array([4, 3, 3, 3], np.int64)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("Reshape", ["w", "shape"], ["w4"]),
             helper.make_node("Conv", ["x", "w4"], ["y"], name="conv")]
    g = frontend(_model(nodes, {"wq": q, "ws": np.full(4, 0.1, np.float32), "shape": shape},
                        [1, 3, 5, 5], [1, 4, 3, 3]))
    wq, _, axis = g.qweights["w4"]
    np.testing.assert_array_equal(wq, q.reshape(4, 3, 3, 3))
    assert axis == 0


@pytest.mark.parametrize("case,why", [
    ("scaled", "passes through node 'double' (Mul), whose integers"),
    ("per-row", "is scaled per index of axis 0, not per output column")])
def test_qdq_weight_falling_back_to_float_warns(case, why):
    """A weight the frontend cannot keep the integers of is quantized from its floats: that
    is said, naming the layer, not done silently."""
    if case == "scaled":
        nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
                 helper.make_node("Mul", ["w", "two"], ["w2"], name="double"),
                 helper.make_node("MatMul", ["x", "w2"], ["y"], name="fc")]
        inits = {"wq": Q_INT.T, "ws": np.float32(0.01), "two": np.float32(2)}
    else:   # MatMul's weight is (in, out): axis 0 scales its rows
        nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w2"], axis=0),
                 helper.make_node("MatMul", ["x", "w2"], ["y"], name="fc")]
        inits = {"wq": Q_INT.T, "ws": np.linspace(0.01, 0.02, 8).astype(np.float32)}
    with pytest.warns(UserWarning, match=re.escape(f"node 'fc' (MatMul): its QDQ weight "
                                                   f"'w2' {why}") + ".*" + OTHER_WEIGHTS):
        g = frontend(_model(nodes, inits, [1, 8], [1, 4]))
    assert "w2" not in g.qweights


def _q_cast_dq(to: int):
    """x -> MatMul -> QuantizeLinear (uint8 zero point) -> Cast(to UINT8) -> DQ, as torch's
    eager-mode quantized export writes it; to another type, the Cast is the output."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"])]
    if to == TensorProto.UINT8:
        nodes += [helper.make_node("Cast", ["q"], ["qc"], to=to, name="cast"),
                  helper.make_node("DequantizeLinear", ["qc", "s", "z"], ["y"])]
    else:
        nodes += [helper.make_node("Cast", ["q"], ["y"], to=to, name="cast")]
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    return _model(nodes, {"w": w, "s": np.float32(0.05), "z": np.uint8(128)}, [1, 8], [1, 4])


def test_cast_to_the_quantized_type_between_q_and_dq_is_the_identity():
    model = _q_cast_dq(TensorProto.UINT8)
    assert [n.op_type for n in frontend(model).nodes] == [
        "MatMul", "QuantizeLinear", "DequantizeLinear"]
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    prog = compile_model(model, "puma", calibration={"x": x})
    out = simulate(prog, {"x": x}).outputs["y"]
    ort = run_onnxruntime(model, {"x": x})["y"]
    assert np.abs(out - ort).max() <= 0.05 + 1e-6      # within one quantization step


def test_a_same_type_cast_that_is_also_a_graph_output_still_leaves_q_and_dq_a_pair():
    """The Cast's output as a graph output became an Identity, but its DQ kept reading the
    Identity's output rather than the Q's, so the pair was not one."""
    model = _q_cast_dq(TensorProto.UINT8)
    model.graph.output.append(helper.make_tensor_value_info("qc", TensorProto.UINT8, [1, 4]))
    nodes = {n.op_type: n for n in frontend(model).nodes}
    assert list(nodes["DequantizeLinear"].input[:1]) == ["q"]
    assert (list(nodes["Identity"].input), list(nodes["Identity"].output)) == (["q"], ["qc"])
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    out = simulate(compile_model(model, "puma", calibration={"x": x}), {"x": x}).outputs
    ort = run_onnxruntime(model, {"x": x})
    assert np.array_equal(out["qc"], ort["qc"]) and np.abs(out["y"] - ort["y"]).max() <= 0.05


def test_cast_that_changes_the_type_stays_refused():
    with pytest.raises(UnsupportedOpError, match="Cast"):
        compile_model(_q_cast_dq(TensorProto.FLOAT), "puma")


def _int4_model(activations: bool):
    if activations:   # x -> Q(int4) -> DQ -> y
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q4"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        inits = {"s": np.float32(0.1)}
        y_shape = [1, 8]
    else:             # x -> MatMul(DequantizeLinear(int4 weight)) -> y
        nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
                 helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = {"s": np.float32(0.1)}
        y_shape = [1, 4]
    m = _model(nodes, inits, [1, 8], y_shape, opset=21)
    m.graph.initializer.append(helper.make_tensor("z", TensorProto.INT4, [], [0]))
    if not activations:
        levels = np.random.default_rng(5).integers(-8, 8, (8, 4))
        m.graph.initializer.append(helper.make_tensor("wq", TensorProto.INT4, [8, 4],
                                                      levels.ravel().tolist()))
    return m, None if activations else levels


def test_int4_activations_are_refused_naming_the_node():
    """onnxruntime cannot hand int4 tensors to calibration ("No corresponding Numpy type
    for Tensor Type. Int4x2", naming no node)."""
    with pytest.raises(UnsupportedOpError, match=re.escape(
            "node 'q4' (QuantizeLinear): int4 activations are not supported; allowed: 8- "
            "and 16-bit integer types")):
        frontend(_int4_model(activations=True)[0])


def test_int4_weights_map_their_integers():
    model, levels = _int4_model(activations=False)
    x = np.random.default_rng(6).standard_normal((3, 8)).astype(np.float32)
    _, lp, _ = _compile_quietly(model, x)
    np.testing.assert_array_equal(lp.layers[0].weight, levels)


def test_contrib_qdq_is_refused_saying_what_is_allowed():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q",
                              domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], domain="com.microsoft")]
    m = _model(nodes, {"s": np.float32(0.1)}, [1, 8], [1, 8])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match=re.escape(
            "op com.microsoft.QuantizeLinear from a custom domain is not supported; allowed: "
            "the standard ai.onnx domain (its QuantizeLinear at opset 21 holds int4 and "
            "int16)")):
        frontend(m)


def test_the_onnxruntime_reference_keeps_a_float_weight_between_q_and_dq_in_float():
    """onnxruntime at its basic level int8-quantized a float Conv weight read between Q/DQ
    pairs (a layer quantize_static left in float): the reference was another model than the
    file's, 0.05 off, and `xbarsim run` blamed the chip for it."""
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    inits = {"W": (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32),
             "b": (rng.standard_normal(4) * 0.3).astype(np.float32),
             "s": np.float32(0.02), "s2": np.float32(0.05), "z": np.uint8(128)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "W", "b"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["y"])]
    m = _model(nodes, inits, [1, 3, 6, 6], [1, 4, 4, 4])
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    as_written = np.concatenate([plain.run(["y"], {"x": x[i:i + 1]})[0] for i in range(4)])
    np.testing.assert_array_equal(run_onnxruntime(m, {"x": x})["y"], as_written)
    prog, _, _ = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x},
                               return_ir=True)
    assert np.abs(simulate(prog, {"x": x}).outputs["y"] - as_written).max() < 1e-5


def test_qdq_weights_of_a_recurrent_op_warn_that_they_are_requantized():
    """LSTM's W and R are quantized jointly over [x; h] rows, so a QDQ file's integers cannot
    reach the crossbars; unlike Conv/Gemm/MatMul nothing said so."""
    rng = np.random.default_rng(0)
    T, I, H = 4, 6, 5
    inits = {"Wq": rng.integers(-127, 128, (1, 4 * H, I)).astype(np.int8),
             "Rq": rng.integers(-127, 128, (1, 4 * H, H)).astype(np.int8),
             "sw": np.float32(0.01), "sr": np.float32(0.01)}
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "sw"], ["W"]),
             helper.make_node("DequantizeLinear", ["Rq", "sr"], ["R"]),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R"], ["Y", "Yh"], hidden_size=H,
                              name="lstm"),
             helper.make_node("Transpose", ["Yh"], ["y"], perm=[1, 0, 2])]
    m = _model(nodes, inits, [1, T, I], [1, 1, H])
    x = rng.standard_normal((3, T, I)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"node 'lstm' \(LSTM\): its QDQ weights 'W', 'R' .*"
                                         + re.escape(OTHER_WEIGHTS)):
        compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x})


def test_a_layer_landing_on_a_quantizelinear_grid_rounds_half_to_even():
    """QuantizeLinear rounds half to even; the pool before a Q/DQ pair at its scale (as
    quantize_static writes it) rounded exact ties up: 1 output in 6 one step off."""
    s = 0.05
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
             helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"])]
    m = _model(nodes, {"s": np.float32(s), "z": np.uint8(128)}, [1, 2, 8, 8], [1, 2, 4, 4])
    x = np.random.default_rng(0).standard_normal((8, 2, 8, 8)).astype(np.float32)
    prog, lp, _ = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x},
                                return_ir=True)
    assert next(L for L in lp.layers if L.op == "AveragePool").round_even
    y = simulate(prog, {"x": x}).outputs["y:int"]
    q = np.clip(np.round(x / s) + 128, 0, 255) - 128           # the input Q, exactly
    mean = q.reshape(8, 2, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(8, -1)
    assert (mean % 1 == 0.5).mean() > 0.1                         # ties are common here
    np.testing.assert_array_equal(y.reshape(8, -1), np.round(mean))   # numpy: half to even


@pytest.mark.parametrize("zero_point", [3, 4])
def test_a_lone_quantizelinear_adds_its_zero_point_after_rounding(zero_point):
    """q = round_half_even(x / s) + zp: with the zero point added before the shift, an odd
    one sent every exact tie to the odd neighbour."""
    s1 = 0.05
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s1", "z1"], ["xd"]),
             helper.make_node("QuantizeLinear", ["xd", "s2", "z2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8])],
                          [numpy_helper.from_array(np.float32(s1), "s1"),
                           numpy_helper.from_array(np.int8(0), "z1"),
                           numpy_helper.from_array(np.float32(2 * s1), "s2"),
                           numpy_helper.from_array(np.uint8(zero_point), "z2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    k = np.arange(-8, 8)                            # x / s1: every odd k is a tie at 2 s1
    x = {"x": (k * s1).astype(np.float32).reshape(2, 8)}
    prog = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration=x)
    y = simulate(prog, x).outputs["y"].astype(int).ravel()
    np.testing.assert_array_equal(y, np.clip(np.round(k / 2).astype(int) + zero_point, 0, 255))


def test_a_clip_bound_on_a_float32_grid_keeps_its_step():
    """1 / float32(0.1) is 9.99999985: floored, Clip(0, 1) stopped at 0.9 on a 0.1 grid, two
    output steps below onnxruntime's 1.0 on the 0.05 grid after it."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"]),
             helper.make_node("Clip", ["xd", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["y"])]
    m = _model(nodes, {"s": np.float32(0.1), "s2": np.float32(0.05), "z": np.int8(0),
                       "lo": np.float32(0.0), "hi": np.float32(1.0)}, [1, 64], [1, 64])
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32) * 2
    prog, lp, _ = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x},
                                return_ir=True)
    assert next(L for L in lp.layers if L.op == "Clip").hi == 20      # on the Q's 0.05 grid
    y = simulate(prog, {"x": x}).outputs["y"]
    np.testing.assert_allclose(y, run_onnxruntime(m, {"x": x})["y"], atol=1e-6)


def test_a_clip_before_a_quantizelinear_bounds_at_the_qs_rounding():
    """onnxruntime rounds min(y, 1) / s, so the top code is round(1 / s) = 11 for s = 1/10.6;
    the fused clip floored it to 10 and half the outputs were one step low."""
    s2 = np.float32(1 / 10.6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["y"])]
    m = _model(nodes, {"w": np.eye(8, dtype=np.float32), "s2": s2, "z": np.uint8(0),
                       "lo": np.float32(0), "hi": np.float32(1)}, [1, 8], [1, 8])
    x = np.linspace(-1, 3, 32, dtype=np.float32).reshape(4, 8)
    prog, lp, _ = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x},
                                return_ir=True)
    assert lp.layers[0].hi == 11
    y = simulate(prog, {"x": x}).outputs["y"]
    np.testing.assert_allclose(y, run_onnxruntime(m, {"x": x})["y"], atol=1e-6)


def _qdq_matmul(sx, wq, sw, sy):
    """x -> Q/DQ(sx) -> MatMul by DQ(wq, sw) -> Q/DQ(sy), int8 with zero points of 0."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
             helper.make_node("QuantizeLinear", ["mm", "sy", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "z"], ["y"])]
    return _model(nodes, {"sx": sx, "z": np.int8(0), "wq": wq, "sw": sw, "sy": sy},
                  [1, wq.shape[0]], [1, wq.shape[1]], opset=13)


def test_a_matmul_onto_a_quantizelinear_grid_rounds_its_exact_value():
    """y / s_y = 39 * 89 * 0.05 * 0.01 / s_y = 125.503 rounds to 126 (onnxruntime too); the
    15-bit requantization multiplier's 3e-5 gain error gave 125."""
    sx, sw, sy = np.float32(0.05), np.float32(0.01), np.float32(0.013828348368406296)
    m = _qdq_matmul(sx, np.array([[89]], np.int8), sw, sy)
    x = {"x": np.array([[39 * 0.05]], np.float32)}
    prog = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration=x)
    assert round(float(simulate(prog, x).outputs["y"][0, 0] / sy)) == 126
    assert round(float(run_onnxruntime(m, x)["y"][0, 0] / sy)) == 126


@pytest.mark.parametrize("bits", [16, 24])
def test_qdq_requantization_takes_precision_without_a_pre_shift(bits):
    """30-bit multipliers at 24-bit words needed a pre-shift of the sum, which rounded it
    before the Q did (7 outputs in 3072 off onnxruntime): the multiplier takes the bits that
    fit beside the accumulator, at least the word's."""
    rng = np.random.default_rng(0)
    m = _qdq_matmul(np.float32(0.02), rng.integers(-127, 128, (128, 8)).astype(np.int8),
                    np.float32(0.003), np.float32(0.37))
    x = {"x": rng.standard_normal((4, 128)).astype(np.float32)}
    cfg = load_config("puma", ["adc.bits=none", f"input_bits={bits}"])
    prog, lp, _ = compile_model(m, cfg, calibration=x, return_ir=True)
    L = next(L for L in lp.layers if L.op == "MatMul")
    assert L.pre_shift == 0 and int(np.abs(L.mult).max()).bit_length() > 15
    np.testing.assert_array_equal(simulate(prog, x).outputs["y:int"],
                                  run_integer_reference(lp, x)["y:int"])
