"""Fixed-point precision found wrong by review: a bias far beyond |x|max * |w|max was lost
in a wrapped int64 cast, and VFU rescales kept 15-bit multipliers at 24-bit words. Each
graph matches onnxruntime, and the simulator its integer reference bit for bit."""
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import CompilerError, compile_model
from compiler.ir import rescale_multiplier_bits
from compiler.ops._mvm import fit_bias
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

RNG = np.random.default_rng(7)


def _model(nodes, inits, in_shape, out_shape):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _cfg(bits):
    return load_config("small", [f"weight_bits={bits}", f"input_bits={bits}",
                                 "adc.bits=none", "node.tiles=16"])


def _rel_err(model, x, bits):
    """Relative L2 error vs onnxruntime of the simulated output (calibrated on ``x``), with
    no RuntimeWarning (the int64 cast that lost a bias warned only that way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        prog, lp, _ = compile_model(model, _cfg(bits), calibration={"x": x}, return_ir=True)
    rep = simulate(prog, {"x": x})
    np.testing.assert_array_equal(rep.outputs["y:int"],
                                  run_integer_reference(lp, {"x": x})["y:int"])
    want = run_onnxruntime(model, {"x": x})["y"].astype(np.float64)
    return np.linalg.norm(rep.outputs["y"] - want) / np.linalg.norm(want), lp


BIAS = np.array([1.0, -0.5, 0.25])


def test_a_bias_far_beyond_the_weights_products_is_kept_at_24_bits():
    # b / (x step * w step) ~ 2**65: the cast gave INT64_MIN; sim [0, -2e-7, -2e-7]
    m = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
               {"w": RNG.standard_normal((8, 3)) * 1e-3, "b": BIAS}, (1, 8), (1, 3))
    x = (RNG.standard_normal((4, 8)) * 1e-4).astype(np.float32)
    assert _rel_err(m, x, 24)[0] < 1e-5


def test_a_bias_after_a_dead_relu_is_kept_at_16_bits():
    # r is 0 on every sample, so its step is tiny: sim [-0.379, -0.227, 0.25]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    m = _model(nodes, {"w1": RNG.standard_normal((6, 8)) * 0.1, "b1": np.full(8, -10.0),
                       "w2": RNG.standard_normal((8, 3)) * 1e-3, "b2": BIAS}, (1, 6), (1, 3))
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "tensor 'r' is zero", UserWarning)
        err, lp = _rel_err(m, x, 16)
    assert err < 1e-2
    assert np.abs(lp.layers[-1].bias).max() < 2 ** 62


def test_a_recurrent_bias_far_beyond_its_weights_is_kept():
    H, I, T = 4, 3, 3
    arr = {"W": RNG.standard_normal((1, H, I)) * 1e-20,
           "R": RNG.standard_normal((1, H, H)) * 1e-20,
           "B": RNG.standard_normal((1, 2 * H)) * 0.5}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("RNN", ["xt", "W", "R", "B"], ["", "y"], hidden_size=H)]
    m = _model(nodes, arr, (1, T, I), (1, 1, H))
    assert _rel_err(m, RNG.standard_normal((2, T, I)).astype(np.float32), 16)[0] < 1e-3


def _vfu_model(op):
    """Two Gemms into an Add, a Concat, or a Mul by a per-feature constant."""
    last = {"Add": helper.make_node("Add", ["a", "b"], ["y"]),
            "Concat": helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
            "Mul": helper.make_node("Mul", ["a", "k"], ["y"])}[op]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["a"]),
             helper.make_node("Gemm", ["x", "w2"], ["b"]), last]
    inits = {"w1": RNG.standard_normal((12, 12)) * 0.4, "w2": RNG.standard_normal((12, 12)),
             "k": RNG.uniform(0.3, 2.0, 12)}
    return _model(nodes, inits, (1, 12), (1, 24 if op == "Concat" else 12))


def _vfu_mults(layer):
    return np.abs(np.concatenate([np.ravel(v) for v in (
        getattr(layer, "mults", []), getattr(layer, "M", []),
        [m for m, _ in getattr(layer, "rescale", [])])]))


@pytest.mark.parametrize("op", ["Add", "Concat", "Mul"])
def test_vfu_rescales_use_the_precision_of_24_bit_words(op):
    # 15-bit multipliers left them at 2.5e-5 to 3.7e-5 (an Identity reached 4e-7)
    m = _vfu_model(op)
    x = RNG.standard_normal((8, 12)).astype(np.float32)
    err, lp = _rel_err(m, x, 24)
    assert err < 2e-6
    assert _vfu_mults(lp.layers[-1]).max() >= 2 ** 21
    # 16-bit programs keep their 15-bit multipliers
    assert _vfu_mults(_rel_err(m, x, 16)[1].layers[-1]).max() < 2 ** 15


def test_rescale_bits_keep_a_summed_product_inside_int64():
    assert rescale_multiplier_bits(16) == rescale_multiplier_bits(16, 512 * 512) == 15
    assert rescale_multiplier_bits(24) == 23
    # a global average pool of 2**18 24-bit words: their sum * a 21-bit multiplier < 2**62
    assert rescale_multiplier_bits(24, 2 ** 18) == 21


def test_a_bias_that_is_no_finite_number_of_steps_is_refused():
    with pytest.raises(CompilerError, match=r"^its bias \(up to inf\) is no finite number of "
                                            r"accumulator steps"):
        fit_bias(np.ones((2, 1), np.int64), np.ones(1), np.array([np.inf]), 1e-3, 16)
