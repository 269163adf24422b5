"""Frontend folding: batch norm and per-channel Mul/Add after a Conv disappear into the
conv's weights (QDQ weights keep their integers), ConstantOfShape weights fold, and results
still match onnxruntime."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.frontend import frontend
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate


def _conv_affine_model(with_bn: bool):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(rng.uniform(0.5, 2, (6, 1, 1)).astype(np.float32), "k")
    b = numpy_helper.from_array(rng.standard_normal((1, 6, 1, 1)).astype(np.float32), "b")
    inits = [w, k, b]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1])]
    src = "c"
    if with_bn:
        for name, v in (("s", rng.uniform(0.5, 1.5, 6)), ("o", rng.standard_normal(6)),
                        ("mu", rng.standard_normal(6)), ("var", rng.uniform(0.5, 2, 6))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "o", "mu", "var"],
                                      ["bn"]))
        src = "bn"
    nodes += [helper.make_node("Mul", [src, "k"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["a"]),
              helper.make_node("Relu", ["a"], ["logits"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_conv_bn_mul_add_fold_into_one_conv():
    for with_bn in (False, True):
        model = _conv_affine_model(with_bn)
        ops = [n.op_type for n in frontend(model).nodes]
        assert ops == ["Conv", "Relu"], ops
        x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
        prog, lp, _ = compile_model(model, load_config("puma", ["adc.bits=none"]),
                                    calibration={"input": x}, return_ir=True)
        assert [L.kind for L in lp.layers] == ["mvm"]          # relu fused too
        out = simulate(prog, {"input": x}).outputs
        np.testing.assert_array_equal(out["logits:int"],
                                      run_integer_reference(lp, {"input": x})["logits:int"])
        ort = run_onnxruntime(model, {"input": x})["logits"]
        assert np.linalg.norm(out["logits"] - ort) / np.linalg.norm(ort) < 1e-3


def _qdq_conv_bn_model(per_channel: bool, zp: int, affine: bool):
    """x -> Conv(DequantizeLinear(int8 w)) -> BatchNormalization (one gamma negative, one
    zero) [-> Mul -> Add] -> y."""
    rng = np.random.default_rng(3)
    w_int = rng.integers(-100, 101, (4, 3, 3, 3)).astype(np.int8)
    scale = (rng.uniform(0.002, 0.01, 4) if per_channel else np.array(0.005)).astype(
        np.float32)
    gamma = np.array([1.3, -0.7, 0.0, 0.4], np.float32)
    inits = {"wq": w_int, "ws": scale, "wz": np.full(scale.shape, zp, np.int8),
             "gamma": gamma, "beta": rng.standard_normal(4).astype(np.float32),
             "mu": rng.standard_normal(4).astype(np.float32) * 0.1,
             "var": rng.uniform(0.5, 2, 4).astype(np.float32),
             "k": rng.uniform(-2, 2, (4, 1, 1)).astype(np.float32),
             "b": rng.standard_normal((1, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mu", "var"],
                              ["bn" if affine else "y"])]
    if affine:
        nodes += [helper.make_node("Mul", ["bn", "k"], ["m"]),
                  helper.make_node("Add", ["m", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    k = gamma / np.sqrt(inits["var"].astype(np.float64) + 1e-5)
    if affine:
        k = k * inits["k"].reshape(-1)
    return m, w_int.astype(np.int64) - zp, np.broadcast_to(scale, (4,)) * np.abs(k), k


@pytest.mark.parametrize("per_channel,zp,affine", [(False, 0, False), (True, 0, False),
                                                   (False, 3, False), (True, 0, True)])
def test_batchnorm_folds_into_qdq_conv_keeping_integers(per_channel, zp, affine):
    """BN (and a Mul/Add) after a QDQ conv goes into the weight's per-channel scale: the
    integers stay the model's, negated where the factor is negative, zero where it is 0."""
    model, q0, want_s, k = _qdq_conv_bn_model(per_channel, zp, affine)
    g = frontend(model)
    assert [n.op_type for n in g.nodes] == ["Conv"]
    q, s, axis = g.qweights[g.nodes[0].input[1]]
    np.testing.assert_array_equal(q, q0 * np.sign(k).astype(np.int64).reshape(-1, 1, 1, 1))
    assert axis == 0
    nz = k != 0
    np.testing.assert_allclose(s[nz], want_s[nz], rtol=1e-6)
    assert (s > 0).all()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    prog, lp, _ = compile_model(model, load_config("puma", ["adc.bits=none"]),
                                calibration={"x": x}, return_ir=True)
    assert [L.kind for L in lp.layers] == ["mvm"]
    np.testing.assert_array_equal(lp.layers[0].weight,
                                  np.transpose(q, (2, 3, 1, 0)).reshape(-1, 4))
    out = simulate(prog, {"x": x}).outputs
    np.testing.assert_array_equal(out["y:int"], run_integer_reference(lp, {"x": x})["y:int"])
    ort = run_onnxruntime(model, {"x": x})["y"]
    assert np.linalg.norm(out["y"] - ort) / np.linalg.norm(ort) < 1e-2


def test_constant_of_shape_weights_fold():
    shape = numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])),
             helper.make_node("MatMul", ["input", "w"], ["logits"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 4])], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    gr = frontend(m)
    assert [n.op_type for n in gr.nodes] == ["MatMul"]
    np.testing.assert_array_equal(gr.consts["w"], np.full((3, 4), 0.25, np.float32))


def test_calibration_data_of_the_wrong_shape_or_name_is_one_line():
    from compiler.errors import CompilerError
    model, cfg = _conv_affine_model(False), load_config("puma")
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(CompilerError, match=r"shape \(2, 8, 8\); expected \(N, 3, 8, 8\)"):
        compile_model(model, cfg, calibration={"input": x[:, 0]})
    with pytest.raises(CompilerError, match="lacks input 'input'"):
        compile_model(model, cfg, calibration={"x": x})
    with pytest.raises(CompilerError, match="unknown input 'x'; the model's inputs are input"):
        compile_model(model, cfg, calibration={"input": x, "x": x})   # was ignored


def _two_input_model():
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["a"]), helper.make_node("Add", ["a", "z"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("x,z,message", [
    (np.full((2, 8), np.nan), np.ones((2, 4)), "input 'x' holds 16 NaN/inf values"),
    (np.ones((2, 8)), np.full((2, 4), -np.inf), "input 'z' holds 8 NaN/inf values"),
    (np.zeros((0, 8)), np.zeros((0, 4)), r"input 'x' holds no samples \(shape \(0, 8\)\)"),
    (np.ones((2, 8)), np.zeros((2, 4)), "input 'z' is all zeros"),
    (np.ones((3, 8)), np.ones((2, 4)), "different numbers of samples \\('x': 3, 'z': 2\\)")])
def test_calibration_data_that_sets_no_range_is_one_line(x, z, message):
    """NaN/inf read as "no calibration range for tensor 'x'", an empty batch raised numpy's
    ValueError, unequal batches calibrated on the first input's length, and all-zero data
    gave an input scale of 6e-13."""
    from compiler.errors import CompilerError
    with pytest.raises(CompilerError, match=message):
        compile_model(_two_input_model(), load_config("puma"),
                      calibration={"x": x.astype(np.float32), "z": z.astype(np.float32)})


def _conv_prelu_opset6(path):
    """x -> Conv -> PRelu with a per-channel slope at opset 6, which onnxruntime cannot run
    ("Could not find an implementation for PRelu(6)")."""
    rng = np.random.default_rng(7)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c", "slope"], ["y"])], "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([0.1, 0.5, -0.3], np.float32), "slope")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_run_on_a_model_older_than_opset_7_compares_with_onnxruntime(tmp_path):
    """The compiler upgraded it; `xbarsim run` gave onnxruntime the original file."""
    from simulator.cli import main
    model = _conv_prelu_opset6(tmp_path / "old.onnx")
    assert main(["run", str(model), "--random", "3", "--json", str(tmp_path / "r.json"),
                 "-q"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"]["rel_err"] < 1e-2


def _old_per_channel_affine(k_const: bool = True):
    """opset 6: Conv -> Mul(k) -> Add(b), k and b (C,) with broadcast=1, axis=1 (batch norm
    as Caffe2-era exports wrote it); the version converter padded k to (C,1,1,1)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)
    k = (rng.random(4) + 0.5).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])]
    if k_const:
        inits.append(numpy_helper.from_array(k, "k"))
    else:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, [4]))
    # IR 3, as those files are: every initializer is also a graph input
    inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims))
               for i in inits]
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c", "k"], ["m"], broadcast=1, axis=1),
         helper.make_node("Add", ["m", "b"], ["y"], broadcast=1, axis=1)], "old", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    m.ir_version = 3
    return m, w, k, b


def test_opset6_broadcast_along_axis_1_is_per_channel():
    """It was refused ("constant of shape (4, 1, 1, 1) is not per-channel"), a shape the file
    does not hold."""
    from numpy.lib.stride_tricks import sliding_window_view
    m, w, k, b = _old_per_channel_affine()
    before = m.SerializeToString()
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 5)).astype(np.float32)
    prog = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x})
    got = simulate(prog, {"x": x}).outputs["y"]
    win = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    want = (np.einsum("bchwij,ocij->bohw", win, w) * k.reshape(1, 4, 1, 1)
            + b.reshape(1, 4, 1, 1))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2
    assert m.SerializeToString() == before     # the caller's model is not changed


def test_opset6_broadcast_along_an_axis_of_a_graph_input_is_refused_by_name():
    from compiler.errors import ModelFormatError
    m, *_ = _old_per_channel_affine(k_const=False)
    with pytest.raises(ModelFormatError, match="'k' along axis 1 needs it constant"):
        compile_model(m, load_config("puma"))


def test_opset6_one_constant_broadcast_onto_inputs_of_two_ranks():
    """One reshaped copy per axis served both Mul nodes: the 3-D one got the 4-D one's
    (4,1,1) and the model was refused."""
    k = np.array([1., 2., 3., 4.], np.float32)
    g = helper.make_graph(
        [helper.make_node("Mul", ["a", "K"], ["y1"], broadcast=1, axis=1),
         helper.make_node("Mul", ["b", "K"], ["y2"], broadcast=1, axis=1)], "t",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 5]),
         helper.make_tensor_value_info("K", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 5])],
        [numpy_helper.from_array(k, "K")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)])
    m.ir_version = 3
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((2, 4, 5, 5)).astype(np.float32),
         "b": rng.standard_normal((2, 4, 5)).astype(np.float32)}
    out = simulate(compile_model(m, load_config("puma", ["adc.bits=none"]), calibration=x),
                   x).outputs
    np.testing.assert_allclose(out["y1"], x["a"] * k[:, None, None], atol=2e-3)
    np.testing.assert_allclose(out["y2"], x["b"] * k[:, None], atol=2e-3)


@pytest.mark.parametrize("coordinates", [False, True])
def test_weight_in_a_sparse_initializer_compiles(coordinates):
    """graph.sparse_initializer (valid ONNX, a way to store a pruned weight) was not read:
    calibration failed, blaming onnxruntime for an input it said was missing."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((8, 4)) * 0.4).astype(np.float32)
    w[w < 0.2] = 0
    idx = np.flatnonzero(w)
    ind = np.stack(np.unravel_index(idx, w.shape), 1) if coordinates else idx
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "sparse",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    g.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(w.reshape(-1)[idx], "W"),
        numpy_helper.from_array(ind.astype(np.int64), "W_idx"), list(w.shape)))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    prog = compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x})
    got = simulate(prog, {"x": x}).outputs["y"]
    np.testing.assert_allclose(got, x @ w, atol=2e-2 * np.abs(x @ w).max())
    assert len(m.graph.sparse_initializer) == 1   # the caller's model is not changed


def test_if_reading_activations_is_refused_as_unsupported_not_as_a_failed_fold():
    """Its only listed input, the condition, is constant, but its branches read y."""
    from compiler.errors import UnsupportedOpError
    then_g = helper.make_graph([helper.make_node("Relu", ["y"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["y"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]),
         helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g,
                          else_branch=else_g)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w"),
         numpy_helper.from_array(np.array(True), "cond")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert [n.op_type for n in frontend(m).nodes] == ["MatMul", "If"]
    with pytest.raises(UnsupportedOpError, match="If"):
        compile_model(m, "puma")


def test_a_node_writing_an_initializers_name_is_refused_as_such():
    """A model in memory skips the checker: a node writing an initializer's name was
    explained as "graph output 'z' is a constant or was never produced"."""
    from compiler.errors import ModelFormatError
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["w2"]), helper.make_node("Relu", ["w2"], ["z"])],
        "twice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), n) for n in ("w", "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelFormatError, match=r"node 'MatMul' \(MatMul\) writes 'w2', which an initializer"):
        compile_model(m, "puma")


@pytest.mark.parametrize("op", ["RandomNormalLike", "RandomUniformLike", "Bernoulli",
                                "RandomNormal"])
def test_random_draws_are_refused_not_folded(op):
    """Folded by onnx's unseeded evaluator, a draw on a constant gave each compile other
    biases; the chip computes a fixed function."""
    from compiler.errors import UnsupportedOpError
    draw = (helper.make_node(op, [], ["r"], shape=[4]) if op == "RandomNormal" else
            helper.make_node(op, ["b"], ["r"]))
    g = helper.make_graph(
        [draw, helper.make_node("Gemm", ["x", "w", "r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w"),
         numpy_helper.from_array(np.full(4, 0.5, np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(UnsupportedOpError, match=rf"node 'r': op {op} draws random "
                                                 r"numbers; .*export in eval mode") as e:
        frontend(m)
    assert "\n" not in str(e.value)
