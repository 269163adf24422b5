"""Frontend folding: batch norm and per-channel Mul/Add after a Conv disappear into the
conv's weights, ConstantOfShape weights fold, and results still match onnxruntime."""
import numpy as np
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
