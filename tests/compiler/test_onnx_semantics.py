"""ONNX semantics that were once computed wrong without an error (found by review): each
graph either compiles and matches onnxruntime (and the simulator its integer reference bit
for bit), or is refused with a one-line error that names what is allowed."""
import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import CompilerError, ModelFormatError, UnsupportedOpError, compile_model
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

CFG = load_config("puma", ["adc.bits=none"])
RNG = np.random.default_rng(99)


def _model(nodes, inits, in_shape, outputs, opset=17, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))]
    g = helper.make_graph(
        nodes, "t", inputs, [],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 21 else 10
    known = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    known.update({vi.name: vi for vi in inputs})   # outputs may be inputs or initializers
    known.update({k: helper.make_tensor_value_info(k, _elem(v), np.shape(v))
                  for k, v in inits.items()})
    m.graph.output.extend([known[o] for o in outputs])
    onnx.checker.check_model(m)
    return m


def _elem(v):
    return helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)


def _check(model, shape, tol=1e-2):
    x = RNG.standard_normal((2,) + tuple(shape[1:])).astype(np.float32)
    prog, lp, _ = compile_model(model, CFG, calibration={"x": x}, return_ir=True)
    rep = simulate(prog, {"x": x})
    ref = run_integer_reference(lp, {"x": x})
    ort = run_onnxruntime(model, {"x": x})
    for o in lp.outputs:
        np.testing.assert_array_equal(rep.outputs[o + ":int"], ref[o + ":int"])
        want = ort[o].astype(np.float64)
        err = np.linalg.norm(rep.outputs[o] - want) / max(np.linalg.norm(want), 1e-12)
        assert err <= tol, f"{o}: relative L2 error {err:.2e} vs onnxruntime"
    return lp


def _w(*shape, scale=0.4):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ---- auto_pad: derived as the spec defines, not ignored --------------------------------

@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("k,s", [(2, 1), (3, 2)])
def test_auto_pad(op, auto_pad, k, s):
    shape = [1, 3, 7, 8]
    if op == "Conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad,
                                strides=[s, s])
        inits = {"w": _w(4, 3, k, k)}
    else:
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                auto_pad=auto_pad)
        inits = {}
    _check(_model([node], inits, shape, ["y"]), shape)


# ---- Clip fused into the layer before it ----------------------------------------------

def test_clip_with_attribute_bounds_fused_into_conv_still_clips():
    """Before opset 11 Clip's bounds are attributes (ReLU6 in older exports)."""
    shape = [1, 3, 6, 6]
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Clip", ["c"], ["y"], min=0.0, max=0.5)],
               {"w": _w(4, 3, 3, 3)}, shape, ["y"], opset=10)
    lp = _check(m, shape)
    conv = lp.layers[0]
    assert conv.lo == 0 and conv.hi is not None


def test_clip_to_float_max_after_conv_is_no_upper_bound():
    shape = [1, 3, 6, 6]
    big = np.float32(np.finfo(np.float32).max)
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
               {"w": _w(4, 3, 3, 3), "lo": np.float32(0), "hi": big}, shape, ["y"])
    lp = _check(m, shape)
    assert lp.layers[0].hi is None


# ---- constants broadcast from the right --------------------------------------------------

def _conv_then(node, inits, shape=(1, 3, 4, 4)):
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node],
                  {"w": _w(4, 3, 3, 3), **inits}, list(shape), ["y"])


@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("cshape", [(4,), (1, 4), (4, 1)])
def test_constant_of_channel_size_along_a_spatial_axis_is_not_per_channel(op, cshape):
    """(4,) on a (1, 4, 4, 4) map runs along W (ONNX aligns from the right); (4, 1) along
    H. Refused, where it was once applied per channel."""
    m = _conv_then(helper.make_node(op, ["c", "k"], ["y"]),
                   {"k": (RNG.random(cshape) + 0.5).astype(np.float32)})
    with pytest.raises(UnsupportedOpError, match="is not per-channel"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


@pytest.mark.parametrize("cshape", [(4, 1, 1), (1, 4, 1, 1), (1,)])
def test_per_channel_constants_still_apply_per_channel(cshape):
    m = _conv_then(helper.make_node("Mul", ["c", "k"], ["y"]),
                   {"k": (RNG.random(cshape) + 0.5).astype(np.float32)})
    _check(m, (1, 3, 4, 4))


def test_prelu_slope_along_w_is_refused():
    m = _conv_then(helper.make_node("PRelu", ["c", "k"], ["y"]),
                   {"k": (RNG.random(4) * 0.3).astype(np.float32)})
    with pytest.raises(UnsupportedOpError, match="is not per-channel"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


# ---- memory orders ---------------------------------------------------------------------------

def test_flattened_map_reshaped_to_channels_is_refused():
    """Flatten stores a map's words (H, W, C); read as the channels of a 1x1 map they
    would be shuffled."""
    shape = [1, 3, 4, 4]
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
                helper.make_node("Flatten", ["c"], ["f"]),
                helper.make_node("Reshape", ["f", "s"], ["r"]),
                helper.make_node("Conv", ["r", "w2"], ["y"])],
               {"w": _w(2, 3, 1, 1), "s": np.array([1, 8, 1, 1], np.int64),
                "w2": _w(5, 8, 1, 1)}, shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="stored in another order"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


def test_gemm_output_reshaped_to_channels_then_convolved_is_refused_in_one_line():
    shape = [1, 6]
    m = _model([helper.make_node("Gemm", ["x", "w"], ["g"]),
                helper.make_node("Reshape", ["g", "s"], ["r"]),
                helper.make_node("Conv", ["r", "w2"], ["y"])],
               {"w": _w(6, 8), "s": np.array([1, 8, 1, 1], np.int64), "w2": _w(5, 8, 1, 1)},
               shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="a vector reshaped to a 1x1 map"):
        compile_model(m, CFG, calibration={"x": _w(1, 6)})


@pytest.mark.parametrize("map_first", [True, False])
def test_add_of_a_map_and_a_vector_is_refused(map_first):
    shape = [1, 4, 3]
    ops = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
           helper.make_node("Flatten", ["x"], ["f"]),
           helper.make_node("Gemm", ["f", "w2"], ["g"]),
           helper.make_node("Reshape", ["g", "s"], ["v"]),
           helper.make_node("Add", ["c", "v"] if map_first else ["v", "c"], ["y"])]
    m = _model(ops, {"w": _w(4, 4, 3), "w2": _w(12, 12), "s": np.array([1, 4, 3], np.int64)},
               shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="different memory orders"):
        compile_model(m, CFG, calibration={"x": _w(1, 4, 3)})


# ---- frontend -------------------------------------------------------------------------------

def test_batchnorm_is_not_folded_away_from_a_conv_output_the_graph_returns():
    shape = [1, 3, 5, 5]
    bn = {k: (RNG.random(4) + 0.5).astype(np.float32) for k in ("sc", "b", "mu", "var")}
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("BatchNormalization", ["c", "sc", "b", "mu", "var"], ["y"])],
               {"w": _w(4, 3, 3, 3), **bn}, shape, ["y", "c"])
    _check(m, shape)


def test_quantize_linear_output_dtype_int8_keeps_negative_values():
    """Opset 21: QuantizeLinear's ``output_dtype`` gives int8 without a zero point."""
    shape = [1, 3, 4, 4]
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("QuantizeLinear", ["c", "s"], ["q"],
                                 output_dtype=TensorProto.INT8),
                helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
               {"w": _w(4, 3, 3, 3), "s": np.float32(0.05)}, shape, ["y"], opset=21)
    x = _w(2, 3, 4, 4)
    prog = compile_model(m, CFG, calibration={"x": x})
    got = simulate(prog, {"x": x}).outputs["y"]
    want = run_onnxruntime(m, {"x": x})["y"]
    assert (want < 0).any()
    np.testing.assert_allclose(got, want, atol=0.05 + 1e-6)


def test_non_finite_pad_value_is_refused_naming_it():
    shape = [1, 3, 4, 4]
    m = _model([helper.make_node("Pad", ["x", "p", "v"], ["y"], mode="constant")],
               {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                "v": np.float32(-np.inf)}, shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="Pad value -inf is not supported"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_constant_left_operand_is_refused_naming_it(op):
    m = _model([helper.make_node(op, ["w", "x"], ["y"])], {"w": _w(5, 1)}, [1, 6], ["y"])
    with pytest.raises(UnsupportedOpError, match="constant left operand 'w'"):
        compile_model(m, CFG, calibration={"x": _w(1, 6)})


def test_a_vanishing_rescaling_factor_shifts_at_most_62_bits():
    """A degenerate scale gave shifts of 64+, which 64-bit shifts wrap (x86: mod 64): the
    simulator returned -1 for 1000 * 2**-50. Capped at 62, the product rounds to 0."""
    from compiler.ir import multiplier
    from simulator.functional import alu
    from simulator.isa import Fn
    m, shift = multiplier(2.0 ** -50)
    assert shift <= 62
    x = np.array([1000, -1000, 5], np.int64)
    y = alu(Fn.SHR, alu(Fn.MUL, x, int(m[0]), 0), shift, shift) if shift else x * m[0]
    np.testing.assert_array_equal(y, [0, 0, 0])


@pytest.mark.parametrize("node, shape", [
    (helper.make_node("Transpose", ["x"], ["y"]), [1, 2, 3]),        # (3, 2, 1)
    (helper.make_node("Squeeze", ["x"], ["y"]), [1, 1, 4, 1])])      # (4,): batch gone
def test_graph_output_without_its_batch_axis_first_is_refused(node, shape):
    m = _model([node], {}, shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="its first axis must be the batch of 1"):
        compile_model(m, CFG, calibration={"x": _w(*shape)})


# ---- Softmax / LogSoftmax edges ---------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((1, 3, 1, 5), 2), ((1, 3, 4, 1), 3),
                                        ((1, 1, 1, 6), 2)])
def test_softmax_over_an_axis_of_size_one(op, shape, axis):
    """One element per softmax (1 or 0 everywhere): the program used to deadlock or leave
    its output unwritten when the map had several channels."""
    _check(_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {}, shape, ["y"],
                  opset=13), shape)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(13, -1), (11, 1)])
def test_softmax_over_rows_a_reshape_made(op, opset, axis):
    """(1, 12) reshaped to (3, 4): three softmaxes of 4. Axis 0 was taken for the batch, so
    the program computed one row and left the others unwritten."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["g"]),
                helper.make_node("Reshape", ["g", "s1"], ["r"]),
                helper.make_node(op, ["r"], ["sm"], axis=axis),
                helper.make_node("Reshape", ["sm", "s2"], ["y"])],
               {"w": _w(8, 12), "s1": np.array([3, 4], np.int64),
                "s2": np.array([1, 12], np.int64)}, (1, 8), ["y"], opset=opset)
    _check(m, (1, 8))


def test_softmax_over_rows_of_a_flattened_map_is_refused():
    """Flatten(axis=2) of a map: (C, H*W) rows whose words are stored (H, W, C)."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Flatten", ["c"], ["f"], axis=2),
                helper.make_node("LogSoftmax", ["f"], ["y"], axis=-1)],
               {"w": _w(4, 3, 3, 3)}, (1, 3, 4, 5), ["y"])
    with pytest.raises(UnsupportedOpError, match="part of a flattened feature map"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 5)})


def test_softmax_over_axis_zero_names_the_tensor():
    m = _model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], {}, (1, 8), ["y"],
               opset=13)
    with pytest.raises(UnsupportedOpError, match=r"axis 0 of 'x'.*allowed: axes 1"):
        compile_model(m, CFG, calibration={"x": _w(2, 8)})


def test_flattened_one_channel_map_keeps_the_logical_order():
    """A one-channel map flattened is in logical order already: it adds to a Gemm output
    and takes a softmax over its reshaped rows (both were refused as another order)."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Flatten", ["c"], ["f"]),
                helper.make_node("Gemm", ["f", "w2"], ["g"]),
                helper.make_node("Add", ["f", "g"], ["a"]),
                helper.make_node("Reshape", ["a", "s"], ["r"]),
                helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
               {"w": _w(1, 2, 3, 3), "w2": _w(20, 20, scale=0.2),
                "s": np.array([1, 4, 5], np.int64)}, (1, 2, 4, 5), ["y"], opset=13)
    _check(m, (1, 2, 4, 5))


def test_log_softmax_refuses_an_input_step_it_cannot_scale():
    """Logits of ~1e12 (step ~1e8): Softmax caps its fixed-point factor harmlessly, but
    LogSoftmax returns the differences themselves, which the cap scaled wrong."""
    m = _model([helper.make_node("LogSoftmax", ["x"], ["y"], axis=1)], {}, (1, 8), ["y"])
    x = (RNG.standard_normal((2, 8)) * 1e12).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="LogSoftmax input 'x' has the step"):
        compile_model(m, CFG, calibration={"x": x})


def test_affine_with_a_tiny_factor_and_a_large_constant_keeps_the_constant():
    """y = x * 1e-9 + 1000: the factor's rescaling shift pushed the constant past int64
    (every output read -500 with only a numpy cast warning)."""
    m = _model([helper.make_node("Mul", ["x", "k"], ["t"]),
                helper.make_node("Add", ["t", "c"], ["y"])],
               {"k": np.float32(1e-9), "c": np.float32(1000.0)}, (1, 8), ["y"])
    _check(m, (1, 8), tol=1e-4)


# ---- found by the review of the remaining ops (stop 28) ---------------------------------

@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (1, 3, 5, 5)),
    ({"kernel_shape": [1, 1], "strides": [3, 3]}, (1, 3, 5, 5)),
])
def test_ceil_mode_window_starting_in_the_padding_is_refused(op, attrs, shape):
    """onnx's shape inference keeps a last ceil-mode window that starts in the padding,
    the operator (onnxruntime, torch) drops it: the graph's shapes would be wrong."""
    m = _model([helper.make_node(op, ["x"], ["y"], ceil_mode=1, **attrs)], {}, shape, ["y"],
               opset=19)
    with pytest.raises(UnsupportedOpError, match="ceil_mode=1 with a last window"):
        compile_model(m, CFG)


def test_ceil_mode_where_every_window_starts_inside_still_compiles():
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                 ceil_mode=1)], {}, (1, 3, 5, 5), ["y"], opset=19)
    _check(m, (1, 3, 5, 5))


@pytest.mark.parametrize("shape,k", [((1, 4, 5), (1, 1, 1, 1)), ((1, 3, 2, 4), (1,) * 5)])
def test_constant_of_higher_rank_is_refused(shape, k):
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])],
               {"k": np.full(k, 2.0, np.float32)}, shape, ["y"])
    with pytest.raises(UnsupportedOpError, match="more axes than"):
        compile_model(m, CFG, calibration={"x": RNG.standard_normal((2,) + shape[1:])
                                           .astype(np.float32)})


def test_conv1d_times_a_rank3_constant_is_not_folded_as_per_channel():
    """(C, 1, 1) against a 1-D conv's (1, C, L) broadcasts to (C, C, L): not per channel, so
    the frontend must not fold it into the conv (it did, giving (1, C, L))."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]),
                helper.make_node("Mul", ["c", "k"], ["y"])],
               {"w": _w(4, 4, 3), "k": (RNG.random((4, 1, 1)) + 0.5).astype(np.float32)},
               (1, 4, 9), ["y"])
    with pytest.raises(UnsupportedOpError, match="not per-channel"):
        compile_model(m, CFG, calibration={"x": RNG.standard_normal((1, 4, 9))
                                           .astype(np.float32)})


@pytest.mark.parametrize("then", [None, "Mul", "BatchNormalization"])
def test_conv_bias_computed_in_the_graph_is_refused(then):
    """The bias used to be dropped (relative error 0.32), or crash a fold with KeyError."""
    nodes = [helper.make_node("Relu", ["x"], ["x2"]),
             helper.make_node("GlobalAveragePool", ["x2"], ["g"]),
             helper.make_node("Reshape", ["g", "s"], ["b"]),
             helper.make_node("Conv", ["x2", "w", "b"], ["c" if then else "y"])]
    inits = {"w": _w(3, 3, 1, 1), "s": np.array([3], np.int64)}
    if then == "Mul":
        nodes.append(helper.make_node("Mul", ["c", "k"], ["y"]))
        inits["k"] = _w(3, 1, 1)
    elif then:
        nodes.append(helper.make_node("BatchNormalization", ["c", "bs", "bb", "bm", "bv"],
                                      ["y"]))
        inits.update(bs=_w(3) + 1, bb=_w(3), bm=_w(3), bv=np.abs(_w(3)) + 0.5)
    m = _model(nodes, inits, (1, 3, 5, 5), ["y"])
    with pytest.raises(UnsupportedOpError, match="Conv bias 'b' must be constant"):
        compile_model(m, CFG, calibration={"x": RNG.standard_normal((1, 3, 5, 5))
                                           .astype(np.float32)})


def test_graph_input_read_by_a_vfu_op_before_its_crossbar_consumer():
    """Relu(x) listed before Conv(x): placement looked up the conv's tile before placing it
    (TypeError)."""
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])],
               {"w": _w(3, 3, 3, 3)}, (1, 3, 5, 5), ["r", "c"])
    _check(m, (1, 3, 5, 5))


def test_clip_to_a_negative_ceiling_is_not_taken_as_non_negative():
    """Relu -> Clip(max=-0.1): every output is -0.1, so a MaxPool after it pads with the
    lowest value, not 0 (its border read 0)."""
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Clip", ["r", "", "hi"], ["c"]),
                helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3],
                                 pads=[1, 1, 1, 1])],
               {"hi": np.float32(-0.1)}, (1, 3, 5, 5), ["y"])
    _check(m, (1, 3, 5, 5))


@pytest.mark.parametrize("lo, hi", [(20.0, 30.0), (None, -40.0), (25.0, None)])
def test_clip_bound_past_the_input_words_takes_the_output_scale(lo, hi):
    """Clip(x, 20, 30) on |x| < 4: at the input's scale the bound 20 is a word past 16 bits,
    which the MatMul after it read as other values (silently wrong)."""
    ins = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    inits = {k: np.float32(v) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    m = _model([helper.make_node("Clip", ins, ["c"]),
                helper.make_node("MatMul", ["c", "w"], ["y"])],
               {**inits, "w": _w(6, 3)}, (1, 6), ["y"])
    lp = _check(m, (1, 6))
    lim = 1 << 15
    clamp = lp.layers[0]
    assert all(b is None or -lim <= b < lim for b in (clamp.lo, clamp.hi))


def test_clip_window_a_few_input_steps_wide_takes_the_output_scale():
    """Clip(x, 0, 1) on |x| ~ 1e4 (a step of ~0.6): at the input's scale the bound 1 rounded
    to 1 step and the output to 0 or 0.6; the output's own scale resolves [0, 1]."""
    m = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
               {"lo": np.float32(0.0), "hi": np.float32(1.0)}, (1, 8), ["y"])
    x = {"x": (RNG.standard_normal((4, 8)) * 1e4).astype(np.float32)}
    prog, lp, _ = compile_model(m, CFG, calibration=x, return_ir=True)
    got = simulate(prog, x).outputs["y"]
    np.testing.assert_allclose(got, run_onnxruntime(m, x)["y"], atol=1e-3)
    assert lp.tensors["y"].scale < 1e-3


@pytest.mark.parametrize("op, inits, message", [
    ("Add", {"c": np.float32(np.nan)}, "node 'n' \\(Add\\): constant 'c' holds 1 NaN values"),
    ("BatchNormalization", {"g": np.ones(3, np.float32), "b": np.array([0, np.nan, 0], np.float32),
                            "m": np.zeros(3, np.float32), "v": np.ones(3, np.float32)},
     "constant 'b' holds 1 NaN values")])
def test_nan_in_a_constant_that_is_not_a_weight_is_refused(op, inits, message):
    """Only Conv/Gemm/MatMul weights were checked: an Add's NaN calibrated as 0 and the
    simulator printed finite numbers where onnxruntime gives NaN."""
    m = _model([helper.make_node(op, ["x"] + list(inits), ["y"], name="n")], inits,
               (1, 3, 4, 4), ["y"])
    with pytest.raises(ModelFormatError, match=message):
        compile_model(m, CFG)


def test_a_tensor_that_calibrates_to_nan_is_named():
    """0 / 0: max(0.0, nan) is 0.0, so it calibrated as all zeros, unsaid."""
    m = _model([helper.make_node("Mul", ["x", "z"], ["p"]),
                helper.make_node("Div", ["p", "z"], ["y"], name="div")],
               {"z": np.float32(0.0)}, (1, 3, 4, 4), ["y"])
    with pytest.raises(CompilerError, match="calibration: tensor 'y' \\(node 'div', Div\\) "
                                            "is NaN on sample 0"):
        compile_model(m, CFG)


def test_a_tensor_that_overflows_float32_in_calibration_is_named_as_such():
    """It said "no calibration range for tensor 'y'", naming no overflow."""
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               {"w": np.full((4, 2), 3.0, np.float32)}, (1, 4), ["y"])
    with pytest.raises(CompilerError, match="tensor 'y' is infinite on the calibration inputs "
                                            "\\(a float32 overflow"):
        compile_model(m, CFG, calibration={"x": np.full((2, 4), 3e38, np.float32)})


@pytest.mark.parametrize("target, message", [
    ((1, 1, 12), "a vector becomes one only as a one-pixel map"),
    ((1, 1, 2, 6), "allowed: a map to a vector or to a map of the same channels")])
def test_vector_reshaped_to_a_wide_map_is_refused_saying_what_is_allowed(target, message):
    """The messages said only order-keeping reshapes pass, which this one is."""
    k = (4, 1, 3) if len(target) == 3 else (4, 1, 1, 3)
    m = _model([helper.make_node("Gemm", ["x", "g"], ["v"]),
                helper.make_node("Reshape", ["v", "s"], ["r"]),
                helper.make_node("Conv", ["r", "w"], ["y"])],
               {"g": _w(6, 12), "s": np.array(target, np.int64), "w": _w(*k)}, (1, 6), ["y"])
    with pytest.raises(UnsupportedOpError, match=message):
        compile_model(m, CFG)


def test_dropout_in_training_mode_is_refused():
    m = _model([helper.make_node("Dropout", ["x", "r", "t"], ["y"])],
               {"r": np.float32(0.5), "t": np.array(True)}, (1, 3, 4, 4), ["y"], opset=13)
    with pytest.raises(UnsupportedOpError, match="training_mode true"):
        compile_model(m, CFG)


def test_constant_concat_operand_is_named_as_such():
    m = _model([helper.make_node("Concat", ["x", "k"], ["y"], axis=1)],
               {"k": _w(1, 2, 3, 5)}, (1, 4, 3, 5), ["y"])
    with pytest.raises(UnsupportedOpError, match="a constant operand \\('k'\\)"):
        compile_model(m, CFG)


# ---- found by the review of the ONNX import and quantization path -------------------------

def test_batchnorm_in_training_mode_is_not_folded_into_the_conv():
    """Training-mode BN normalises with the batch's statistics: folding it with the running
    ones was silently wrong (relative error 1.3)."""
    shape = [1, 3, 6, 6]
    bn = {k: (RNG.random(4) + 0.5).astype(np.float32) for k in ("sc", "b", "mu", "var")}
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("BatchNormalization", ["c", "sc", "b", "mu", "var"],
                                 ["y", "rm", "rv"], training_mode=1)],
               {"w": _w(4, 3, 3, 3), **bn}, shape, ["y"], opset=15)
    with pytest.raises(UnsupportedOpError, match="BatchNormalization in training mode"):
        compile_model(m, CFG, calibration={"x": _w(2, 3, 6, 6)})


@pytest.mark.parametrize("dtype,zp", [(np.uint8, 0), (np.int8, -128), (np.int8, 0)])
def test_qdq_pair_wider_than_the_input_word_is_refused(dtype, zp):
    """uint8 (or int8 with zero point -128) levels 0..255 on 8-bit words were clipped at 127
    without a word (relative error 0.38); a lone QuantizeLinear was refused. int8 fits."""
    cfg8 = load_config("puma", ["adc.bits=none", "input_bits=8"])
    m = _model([helper.make_node("Gemm", ["x", "w"], ["g"]),
                helper.make_node("Relu", ["g"], ["r"]),
                helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
               {"w": _w(16, 8), "s": np.float32(0.01), "zp": np.array(zp, dtype)},
               (1, 16), ["y"])
    x = _w(4, 16)
    if zp == 0 and dtype == np.int8:
        out = simulate(compile_model(m, cfg8, calibration={"x": x}), {"x": x}).outputs["y"]
        want = run_onnxruntime(m, {"x": x})["y"]
        assert np.linalg.norm(out - want) / np.linalg.norm(want) < 0.05
        return
    with pytest.raises(UnsupportedOpError, match=r"DequantizeLinear 'DequantizeLinear_y': "
                                                 r"q - zero_point in \[0, 255\] does not fit "
                                                 r"8-bit words \[-128, 127\]"):
        compile_model(m, cfg8, calibration={"x": x})


def test_qdq_weight_column_with_scale_zero_outputs_its_bias():
    """A per-channel scale of exactly 0 made that column's bias integer INT64_MIN."""
    q = RNG.integers(-100, 100, (8, 5)).astype(np.int8)
    s = (RNG.random(5) * 0.02 + 0.005).astype(np.float32)
    s[2] = 0.0
    m = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=1),
                helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
               {"q": q, "s": s, "b": _w(5)}, (1, 8), ["y"])
    lp = _check(m, (1, 8), tol=1e-3)
    assert (lp.layers[0].weight[:, 2] == 0).all() and (lp.layers[0].w_scale > 0).all()


@pytest.mark.parametrize("dt", [TensorProto.INT4, TensorProto.UINT4])
def test_int4_qdq_weights_keep_their_integers(dt):
    """ml_dtypes' int4/uint4 are no np.integer: they were requantized to 16 bits."""
    vals = RNG.integers(-8, 8, (8, 5)) if dt == TensorProto.INT4 else RNG.integers(0, 16, (8, 5))
    zp = RNG.integers(-2, 2, 5) + (0 if dt == TensorProto.INT4 else 8)
    int4 = helper.tensor_dtype_to_np_dtype(dt)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["w"], axis=1),
                helper.make_node("MatMul", ["x", "w"], ["y"])],
               {"q": vals.astype(int4), "zp": zp.astype(int4),
                "s": (RNG.random(5) * 0.05 + 0.01).astype(np.float32)}, (1, 8), ["y"],
               opset=21)
    lp = _check(m, (1, 8), tol=1e-3)
    np.testing.assert_array_equal(lp.layers[0].weight, vals - zp)


def test_qdq_weight_shared_by_two_convs_keeps_its_integers_for_both():
    """conv1 absorbing a Mul dropped the shared weight's integers: conv2 requantized its
    float weight to 16 bits."""
    q = RNG.integers(-50, 50, (3, 3, 3, 3)).astype(np.int8)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"]),
                helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
                helper.make_node("Mul", ["c1", "k"], ["m1"]),
                helper.make_node("Conv", ["m1", "w"], ["y"], pads=[1, 1, 1, 1], name="conv2")],
               {"q": q, "s": np.float32(0.02), "k": (RNG.random((1, 3, 1, 1)) + 0.5)
                .astype(np.float32)}, (1, 3, 5, 5), ["y"])
    lp = _check(m, (1, 3, 5, 5))
    np.testing.assert_array_equal(lp.layers[-1].weight,
                                  np.transpose(q, (2, 3, 1, 0)).reshape(-1, 3))


def test_identity_of_a_weight_is_that_weight():
    """W2 = Identity(W) -> MatMul was refused ("a constant operand"); a QDQ weight keeps its
    integers through it."""
    q = RNG.integers(-100, 100, (8, 4)).astype(np.int8)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"]),
                helper.make_node("Identity", ["w"], ["w2"]),
                helper.make_node("Dropout", ["w2"], ["w3"]),
                helper.make_node("MatMul", ["x", "w3"], ["y"])],
               {"q": q, "s": np.float32(0.01)}, (1, 8), ["y"], opset=13)
    lp = _check(m, (1, 8))
    np.testing.assert_array_equal(lp.layers[0].weight, q)


def test_non_float_intermediate_tensors_calibrate():
    """Calibration declared every tensor float: a Dropout mask (bool) failed onnxruntime."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["a"]),
                helper.make_node("Dropout", ["a"], ["y", "mask"])],
               {"w": _w(8, 4)}, (1, 8), ["y"], opset=13)
    _check(m, (1, 8))


@pytest.mark.parametrize("node,message", [
    (helper.make_node("ArgMax", ["x"], ["y"], axis=1), "op ArgMax is not supported"),
    (helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2]),
     "MaxPool's Indices output is not supported")])
def test_unsupported_int64_outputs_get_the_compilers_message(node, message):
    """... not onnxruntime's type error from calibration."""
    m = _model([node], {}, (1, 2, 4, 4), ["y"])
    with pytest.raises(UnsupportedOpError, match=message):
        compile_model(m, CFG, calibration={"x": _w(2, 2, 4, 4)})


def test_graph_output_that_is_the_graph_input_and_one_listed_twice():
    """Declared UNDEFINED for shape inference, an input among the outputs broke it (blaming
    'y'); onnxruntime's reference appended a twice-listed output twice per sample."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])], {"w": _w(8, 4)}, (1, 8),
               ["y", "x", "y"])
    lp = _check(m, (1, 8))
    assert lp.outputs == ["y", "x"]


@pytest.mark.parametrize("const_node", [True, False])
def test_graph_output_that_is_a_constant_is_refused_naming_it(const_node):
    """A Constant node's output got onnxruntime's error during calibration."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"])]
    inits = {"w": _w(8, 4)}
    if const_node:
        nodes.append(helper.make_node("Constant", [], ["k"],
                                      value=numpy_helper.from_array(_w(1, 4))))
    else:
        inits["k"] = _w(1, 4)
    m = _model(nodes, inits, (1, 8), ["y", "k"])
    with pytest.raises(CompilerError, match="graph output 'k' is a constant"):
        compile_model(m, CFG, calibration={"x": _w(2, 8)})


@pytest.mark.parametrize("dtype", [TensorProto.INT64, TensorProto.INT8])
def test_integer_graph_input_is_refused_naming_it(dtype):
    m = _model([helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
                helper.make_node("Gemm", ["c", "w"], ["y"])], {"w": _w(8, 4)}, None, ["y"],
               inputs=[helper.make_tensor_value_info("x", dtype, [1, 8])])
    with pytest.raises(UnsupportedOpError, match="graph input 'x' holds INT"):
        compile_model(m, CFG)


def test_graph_input_without_a_batch_axis_is_refused():
    """Its only axis was overwritten with 1."""
    m = _model([helper.make_node("Relu", ["x"], ["y"])], {}, (8,), ["y"])
    with pytest.raises(UnsupportedOpError, match="graph input 'x' has one axis"):
        compile_model(m, CFG)
    m = _model([helper.make_node("Relu", ["x"], ["y"])], {}, (1, 3, 0, 5), ["y"])
    with pytest.raises(UnsupportedOpError, match="dimension 2 has size 0"):   # not 'static'
        compile_model(m, CFG)


def test_a_static_batch_other_than_one_is_named_when_reset():
    """An export at batch 4 compiles to a one-sample program; it used to say nothing."""
    m = _model([helper.make_node("Relu", ["x"], ["y"])], {}, (4, 8), ["y"])
    with pytest.warns(UserWarning, match="graph input 'x' has a static batch of 4"):
        prog = compile_model(m, CFG, calibration={"x": _w(4, 8)})
    assert prog.inputs[0].shape == (8,)      # one sample: the batch axis is the run's
    # the reference runs it a sample at a time too (onnxruntime refused a batch of 1)
    x = _w(3, 8)
    np.testing.assert_array_equal(run_onnxruntime(m, {"x": x})["y"], np.maximum(x, 0))


def test_duplicate_node_names_are_refused():
    """Batch-norm folding and fusion key nodes by name: two nodes named 'c' mangled the
    graph."""
    bn = {k: (RNG.random(4) + 0.5).astype(np.float32) for k in ("sc", "b", "mu", "var")}
    m = _model([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="c"),
                helper.make_node("BatchNormalization", ["a", "sc", "b", "mu", "var"], ["n"]),
                helper.make_node("Conv", ["n", "w2"], ["y"], pads=[1, 1, 1, 1], name="c")],
               {"w": _w(4, 3, 3, 3), "w2": _w(2, 4, 3, 3), **bn}, (1, 3, 6, 6), ["y"])
    with pytest.raises(ModelFormatError, match="node name 'c' is given to 2 nodes"):
        compile_model(m, CFG)


def test_unnamed_node_is_not_named_like_a_named_one():
    m = _model([helper.make_node("Relu", ["x"], ["r"], name="Gemm_y"),
                helper.make_node("Gemm", ["r", "w"], ["y"])], {"w": _w(8, 4)}, (1, 8), ["y"])
    _check(m, (1, 8))


@pytest.mark.parametrize("gamma", [1e-3, 1e-5])
def test_a_channel_scaled_far_below_the_rest_keeps_its_bias(gamma):
    """A batch-norm channel with a tiny gamma folds into tiny weights and a bias of beta.
    The columns share one requantization shift, so that column's multiplier was 5 or 0 and
    the chip gave 0.456 or 0.000 for onnxruntime's 0.5."""
    c = 3
    bn = {"g": np.array([1.0, gamma, 0.8], np.float32),
          "b": np.array([0.1, 0.5, -0.2], np.float32),
          "m": np.zeros(c, np.float32), "v": np.ones(c, np.float32)}
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])],
               {"w": _w(c, 2, 3, 3), **bn}, (1, 2, 4, 4), ["y"])
    x = RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)
    rep = simulate(compile_model(m, CFG, calibration={"x": x}), {"x": x})
    np.testing.assert_allclose(rep.outputs["y"][:, 1], run_onnxruntime(m, {"x": x})["y"][:, 1],
                               rtol=5e-3)
    _check(m, (1, 2, 4, 4), tol=2e-3)


@pytest.mark.parametrize("qdq", [True, False])
def test_a_column_scaled_far_below_the_rest_is_requantized_coarser(qdq):
    """That column's integers move to the floored scale (fewer levels, the same values to
    within its step), each nonzero staying nonzero: the compiler packs the rows that hold
    one, so an emptied row would move later rows into other crossbars (past a TinyADC
    bound). The other columns keep theirs."""
    from compiler.quantize import SCALE_RANGE, quantize_weight
    q = RNG.integers(-127, 128, (64, 3))
    q[::4, 1] = RNG.choice([-3, -1, 1, 2], 16)          # small enough to round to 0
    q[::7, 1] = 0
    s = np.array([1e-2, 1e-5, 5e-3])
    qi, si = quantize_weight(q * s, 8, (q, s) if qdq else None)
    if qdq:
        np.testing.assert_array_equal(qi[:, [0, 2]], q[:, [0, 2]])
        assert (si[[0, 2]] == s[[0, 2]]).all()
    assert si[1] == si.max() / SCALE_RANGE
    np.testing.assert_array_equal(np.sign(qi[:, 1]), np.sign(q[:, 1]))
    big = np.abs(q[:, 1] * s[1]) >= si[1] / 2
    assert big.sum() > 30 and (~big & (q[:, 1] != 0)).sum() >= 10
    assert np.abs(qi[big, 1] * si[1] - q[big, 1] * s[1]).max() <= si[1] / 2 + 1e-12


def test_a_pruned_channel_with_a_huge_folded_scale_leaves_the_others_alone():
    """A channel pruned to zero, then batch-norm: its running variance decays to ~0 and the
    fold gives it a scale ~300x the others'. The floor used to be taken from that scale,
    re-rounding every live column's QDQ integers to a third of their levels."""
    from compiler.quantize import quantize_weight
    q = RNG.integers(-127, 128, (27, 4))
    q[:, 2] = 0
    s = np.array([1e-2, 8e-3, 3.0, 1.2e-2])              # column 2: all zero, 300x the rest
    qi, si = quantize_weight(q * s, 8, (q, s))
    np.testing.assert_array_equal(qi, q)
    np.testing.assert_array_equal(si[[0, 1, 3]], s[[0, 1, 3]])
    assert si[2] == s[[0, 1, 3]].max()                  # only scales its bias


def test_an_unstorable_qdq_column_goes_back_to_floats_alone():
    """Offset mapping stores -128..127 at 8 bits; a negative batch-norm factor folded into a
    channel turns its -128 into +128. That column is re-quantized from its floats; the
    others keep their QDQ integers (the whole layer used to fall back)."""
    from compiler.quantize import quantize_weight
    q = RNG.integers(-128, 128, (27, 3))
    q[5, 1] = 128
    s = np.array([1e-2, 8e-3, 1.2e-2])
    qi, si = quantize_weight(q * s, 8, (q, s), mapping="offset")
    np.testing.assert_array_equal(qi[:, [0, 2]], q[:, [0, 2]])
    np.testing.assert_array_equal(si[[0, 2]], s[[0, 2]])
    assert np.abs(qi[:, 1]).max() == 127
    np.testing.assert_allclose(qi[:, 1] * si[1], q[:, 1] * s[1], atol=si[1] / 2 + 1e-12)


@pytest.mark.parametrize("mid", ["Identity", "Dropout"])
def test_an_identity_after_relu_keeps_it_non_negative(mid):
    """MaxPool (border -inf, or 0 for a ReLU output) and a padded Conv (border 0) read the
    same tensor; through an Identity the ReLU's sign was forgotten and the graph refused."""
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node(mid, ["r"], ["i"]),
                helper.make_node("MaxPool", ["i"], ["p"], kernel_shape=[3, 3],
                                 pads=[1, 1, 1, 1]),
                helper.make_node("Conv", ["i", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Add", ["p", "c"], ["y"])], {"w": _w(2, 2, 3, 3)},
               (1, 2, 5, 5), ["y"])
    _check(m, (1, 2, 5, 5), tol=1e-3)


def test_wide_crossbars_reload_bias_and_multipliers_through_tmp():
    """200 -> 1536 on 256 x 256 crossbars: six 256-wide strips' accumulators, tmp and a
    shared 512-word window for re-loaded constants needed 2304 of puma's 2048 registers."""
    cfg = load_config("puma", ["adc.bits=none", "xbar.rows=256", "xbar.cols=256"])
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])], {"w": _w(200, 1536)}, (1, 200),
               ["y"])
    x = RNG.standard_normal((2, 200)).astype(np.float32)
    prog, lp, _ = compile_model(m, cfg, calibration={"x": x}, return_ir=True)
    rep = simulate(prog, {"x": x})
    np.testing.assert_array_equal(rep.outputs["y:int"],
                                  run_integer_reference(lp, {"x": x})["y:int"])
    want = run_onnxruntime(m, {"x": x})["y"]
    assert np.linalg.norm(rep.outputs["y"] - want) / np.linalg.norm(want) < 1e-3


@pytest.mark.parametrize("shape", [(1, 2, 3, 3), (1, 5)])
def test_a_concat_of_more_inputs_than_integer_registers(shape):
    """A DenseNet block concatenates every earlier map in one node: 25 inputs need 25
    pointers, and the core has 16 integer registers (12 maps were refused). Each input is
    scaled differently, so every group rescales on the way."""
    k = 25
    nodes = [helper.make_node("Mul", ["x", f"k{i}"], [f"r{i}"]) for i in range(k)]
    inits = {f"k{i}": np.array(0.5 + i, np.float32) for i in range(k)}
    nodes.append(helper.make_node("Concat", [f"r{i}" for i in range(k)] + ["r3"], ["y"],
                                  axis=1))
    _check(_model(nodes, inits, shape, ["y"]), shape, tol=1e-3)


def test_running_out_of_registers_names_the_layer():
    """A Sum reads all its inputs in one loop nest: 12 maps need more than 16 integer
    registers; the error said only which core."""
    nodes = [helper.make_node("Mul", ["x", f"k{i}"], [f"r{i}"]) for i in range(12)]
    nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(12)], ["y"], name="many"))
    m = _model(nodes, {f"k{i}": np.array(0.5 + i, np.float32) for i in range(12)},
               (1, 2, 3, 3), ["y"])
    with pytest.raises(CompilerError, match=r"layer 'many' \(Sum\): tile \d+ core \d+: needs "
                                            r"(\d+) integer registers, the core has 16 \(raise "
                                            r"core.int_registers to at least \1\)") as e:
        compile_model(m, CFG)
    # the number said is what the model needs: it was the first overflow's, one at a time
    need = int(re.search(r"needs (\d+)", str(e.value)).group(1))
    compile_model(m, load_config("puma", ["adc.bits=none", f"core.int_registers={need}"]))


def test_running_out_of_general_registers_says_what_the_model_needs():
    # 16 registers: the first overflow said 32, then at 32 the same layer said 48
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"]),
             helper.make_node("MatMul", ["h", "w1"], ["y"])]
    m = _model(nodes, {"w0": _w(70, 60), "w1": _w(60, 5)}, (1, 70), ["y"])
    base = ["core.mvmus=6", "node.tiles=64"]
    with pytest.raises(CompilerError, match=r"needs (\d+) general registers, the core has 16 "
                                            r"\(raise core.registers to at least \1\)$") as e:
        compile_model(m, load_config("small", base + ["core.registers=16"]))
    need = int(re.search(r"needs (\d+)", str(e.value)).group(1))
    compile_model(m, load_config("small", base + [f"core.registers={need}"]))


def test_wide_words_saturate_instead_of_wrapping():
    """At 24-bit words (acc + bias) * mult passed 2**63 for an output 4x past its calibrated
    range, and the chip gave -24.6 for +168.6. The sum is now shifted first where needed."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((256, 4)) * 0.4).astype(np.float32)
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])], {"w": w}, (1, 256), ["y"])
    cfg = load_config("small", ["adc.bits=none", "input_bits=24", "weight_bits=24",
                                "xbar.rows=64", "xbar.cell_bits=8", "node.tiles=64"])
    cal = rng.standard_normal((4, 256)).astype(np.float32)
    x = np.stack([np.sign(w[:, 0]) * 2, -np.sign(w[:, 1]) * 2, cal[0]]).astype(np.float32)
    prog, lp, _ = compile_model(m, cfg, calibration={"x": cal}, return_ir=True)
    assert lp.layers[0].pre_shift > 0
    rep = simulate(prog, {"x": x})
    np.testing.assert_array_equal(rep.outputs["y:int"],
                                  run_integer_reference(lp, {"x": x})["y:int"])
    want = run_onnxruntime(m, {"x": x})["y"]
    top = lp.tensors["y"].scale * (2 ** 23 - 1)
    np.testing.assert_allclose(rep.outputs["y"], np.clip(want, -top, top), atol=top * 1e-5)


def test_a_transpose_to_the_stored_order_records_no_permutation():
    """NCHW -> NHWC of a map is its channel-last memory as stored; an identity order was
    recorded anyway, and a Softmax over the last axis after it was refused."""
    m = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                helper.make_node("Softmax", ["t"], ["y"], axis=-1)], {}, (1, 3, 4, 5), ["y"],
               opset=13)
    lp = _check(m, (1, 3, 4, 5), tol=1e-3)
    assert lp.tensors["t"].perm is None


def test_a_1d_convolution_says_replicate_does_not_copy_it():
    """Copies split a layer's output rows; a 1-D convolution has one, so replicate left it
    alone without a word (latency unchanged at replicate=4)."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1], name="c1d")],
               {"w": _w(8, 4, 3)}, (1, 4, 32), ["y"])
    with pytest.warns(UserWarning, match=r"replicate = 4: c1d not copied \(a convolution "
                                         r"with one output row"):
        compile_model(m, CFG, replicate=4)


def _three_convs():
    return _model([helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1] * 4),
                   helper.make_node("Conv", ["a", "wb"], ["b"], strides=[2, 2]),
                   helper.make_node("Conv", ["b", "wc"], ["y"], strides=[2, 2])],
                  {"wa": _w(4, 1, 3, 3), "wb": _w(4, 4, 1, 1), "wc": _w(4, 4, 1, 1)},
                  (1, 1, 8, 8), ["y"])


def test_copies_that_do_not_fit_are_given_up_one_at_a_time_and_said():
    """Halving took replicate=3 straight to 1 copy where 2 fit (replicate=4 got them), so a
    sweep over replicate dipped at 3, silently."""
    cfg = load_config("small", ["node.tiles=1", "tile.cores=4", "core.mvmus=1"])
    x = RNG.standard_normal((2, 1, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"replicate = 3: up to 2 copies fit the node's 1 "):
        prog = compile_model(_three_convs(), cfg, calibration={"x": x}, replicate=3)
    assert [L["copies"] for L in prog.mapping["layers"] if L["op"] == "Conv"] == [2, 1, 1]
    for rep in (np.int64(2), 2):      # a numpy integer was "not an integer >= 1"
        compile_model(_three_convs(), cfg, calibration={"x": x}, replicate=rep)


def test_too_big_under_own_cores_says_what_own_cores_need():
    """The suggested node.tiles was the shared placement's: it compiled only by dropping
    vfu_cores = own (with a warning); the own-core need is said too, and fits unwarned."""
    m = _model([helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1] * 4),
                helper.make_node("Relu", ["c0"], ["r0"]),
                helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2],
                                 strides=[2, 2]),
                helper.make_node("Conv", ["p0", "w1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
                helper.make_node("Conv", ["p0", "ws"], ["s1"], strides=[2, 2]),
                helper.make_node("Add", ["c1", "s1"], ["a1"]),
                helper.make_node("Flatten", ["a1"], ["f"]),
                helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)],
               {"w0": _w(8, 3, 3, 3), "w1": _w(12, 8, 3, 3), "ws": _w(12, 8, 1, 1),
                "w2": _w(10, 108)}, (1, 3, 12, 12), ["y"])
    base = ["tile.cores=3", "core.mvmus=1"]
    with pytest.raises(CompilerError, match=r"node.tiles=(\d+) or more, .*\((\d+) for VFU "
                                            r"layers on cores of their own") as e:
        compile_model(m, load_config("small", base + ["node.tiles=2"]))
    own = int(re.search(r"\((\d+) for VFU", str(e.value)).group(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_model(m, load_config("small", base + [f"node.tiles={own}"]))


def test_a_classifier_conv_with_one_output_pixel_is_not_warned_about():
    # its kernel spans the input: the policy gives it 1 copy anyway, rows or not
    m = _model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4),
                helper.make_node("Conv", ["a", "w2"], ["y"], name="head")],
               {"w1": _w(4, 1, 3, 3), "w2": _w(10, 4, 8, 8)}, (1, 1, 8, 8), ["y"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_model(m, CFG, replicate=2)


# ---- found by the frontend review (stop 33) ------------------------------------------------

@pytest.mark.parametrize("scale", [np.float32(-0.01), np.float32([-0.01, 0.02, -0.005, 0.01])])
def test_a_negative_weight_scale_moves_its_sign_into_the_levels(scale):
    """A DequantizeLinear weight scale may be negative: the chip gave zeros (per tensor) or
    flipped signs (per channel)."""
    q = RNG.integers(-127, 127, (4, 3, 3, 3)).astype(np.int8)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0),
                helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
               {"q": q, "s": scale}, (1, 3, 4, 4), ["y"])
    _check(m, (1, 3, 4, 4))


def test_a_lone_quantize_with_a_zero_point_reaches_its_top_level():
    """Conv -> QuantizeLinear(int8, zero point -100) on 8-bit words: the Conv output was
    held at Q's scale, where (127 + 100)·s does not fit, so q stopped at 27 of 127."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"])],
               {"w": _w(4, 3, 3, 3), "s": np.float32(0.02), "z": np.int8(-100)},
               (1, 3, 4, 4), ["y"])
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none"])
    got = simulate(compile_model(m, cfg, calibration={"x": x}), {"x": x}).outputs["y"]
    want = run_onnxruntime(m, {"x": x})["y"].astype(np.float64)
    assert want.max() > 60 and abs(got.max() - want.max()) <= 2   # it stopped at 27
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.03


def test_an_in_memory_model_with_a_duplicate_initializer_is_refused():
    """Two initializers named 'w': refused from a file, but a ModelProto compiled with the
    last one while onnxruntime took the first."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
               {"w": _w(4, 3, 3, 3)}, (1, 3, 4, 4), ["y"])
    m.graph.initializer.append(numpy_helper.from_array(_w(4, 3, 3, 3), "w"))
    with pytest.raises(ModelFormatError, match="initializer name 'w' is given to 2 "
                                               "initializers"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


def test_batchnorm_with_statistics_per_element_is_refused_by_name():
    """Opset 7 spatial=0: the message named a (48, 1, 1) constant the model does not have."""
    p = {k: (RNG.random((3, 4, 4)) + 0.5).astype(np.float32) for k in "gbmv"}
    m = _model([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"],
                                 spatial=0)], p, (1, 3, 4, 4), ["y"], opset=7)
    with pytest.raises(UnsupportedOpError, match="48 statistics for 3 channels .*spatial=0"):
        compile_model(m, CFG, calibration={"x": _w(1, 3, 4, 4)})


def test_an_omitted_optional_output_of_a_folded_node_is_no_tensor():
    """Dropout(w) -> (w, '') folded, and a Clip with an omitted min: the '' output became an
    initializer named '' and calibration failed in onnxruntime."""
    m = _model([helper.make_node("Dropout", ["w0"], ["w", ""]),
                helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Clip", ["c", "", "hi"], ["y"])],
               {"w0": _w(4, 3, 3, 3), "hi": np.float32(0.5)}, (1, 3, 4, 4), ["y"])
    _check(m, (1, 3, 4, 4))


@pytest.mark.parametrize("scale", [-0.05, 0.0])
def test_an_activation_quantize_scale_must_be_positive(scale):
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("QuantizeLinear", ["r", "s"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
               {"s": np.float32(scale)}, (1, 8), ["y"])
    with pytest.raises(UnsupportedOpError, match=r"\(QuantizeLinear\): scale .* allowed: "
                                                 r"finite and positive"):
        compile_model(m, CFG, calibration={"x": _w(2, 8)})


def test_a_tensor_zero_on_every_calibration_sample_is_warned_about():
    """Relu of all-negative calibration samples: its range was a silent 1e-8 floor, and
    real inputs saturated to ~2e-8 everywhere."""
    m = _model([helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1])],
               {"w": _w(4, 3, 3, 3)}, (1, 3, 4, 4), ["y"])
    cal = -np.abs(RNG.standard_normal((4, 3, 4, 4))).astype(np.float32)
    with pytest.warns(UserWarning, match="zero on every calibration sample"):
        compile_model(m, CFG, calibration={"x": cal})


def test_output_of_one_value_per_sample():
    """Linear(k, 1) then view(-1) (a regressor, a binary score): the output is the batch axis
    alone. Its port shape () failed the program's validation with an internal error."""
    m = _model([helper.make_node("MatMul", ["x", "w"], ["a"]),
                helper.make_node("Reshape", ["a", "s"], ["y"])],
               {"w": _w(8, 1), "s": np.array([-1], np.int64)}, (1, 8), ["y"])
    _check(m, (1, 8))
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    assert simulate(compile_model(m, CFG, calibration={"x": x}), {"x": x}).outputs["y"].shape \
        == (3,)


def test_a_layer_with_no_live_weight_keeps_its_bias_at_the_output_step():
    """All weights zero (a fully pruned layer): the bias was rounded to the input's step,
    so with inputs near 3e4 the 0.5 and -1 biases came out 0."""
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"])],
               {"w": np.zeros((3, 2, 1, 1), np.float32),
                "b": np.array([0.5, -1, 2], np.float32)}, (1, 2, 3, 3), ["y"])
    x = (RNG.standard_normal((1, 2, 3, 3)) * 1e4).astype(np.float32)
    y = simulate(compile_model(m, CFG, calibration={"x": x}), {"x": x}).outputs["y"]
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5, -1, 2], atol=1e-3)


@pytest.mark.parametrize("op", ["MaxPool", "Conv"])
def test_a_map_turned_vector_is_refused_saying_how(op):
    # was "MaxPool input is not a feature map": no tensor, no reason, nothing allowed
    attrs = {"kernel_shape": [2, 2]} if op == "MaxPool" else {}
    ins, inits = (["t"], {}) if op == "MaxPool" else (["t", "w"], {"w": _w(2, 2, 1, 1)})
    m = _model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
                helper.make_node(op, ins, ["y"], **attrs)], inits, (1, 2, 3, 4), ["y"])
    with pytest.raises(UnsupportedOpError, match=rf"{op} input 't' \(1, 2, 4, 3\) is a vector "
                                                 rf"here \(a Transpose, .*{op} takes"):
        compile_model(m, CFG, calibration={"x": RNG.standard_normal((1, 2, 3, 4))
                                           .astype(np.float32)})


@pytest.mark.parametrize("headroom", [0, -2.0, float("nan"), float("inf"), True])
def test_headroom_is_checked_by_name(headroom):
    # 0 and NaN were blamed on "the calibration inputs", -2 on a negative tensor scale
    m = _model([helper.make_node("Relu", ["x"], ["y"])], {}, (1, 8), ["y"])
    with pytest.raises(CompilerError, match=r"^headroom = .*: must be a finite number > 0"):
        compile_model(m, CFG, headroom=headroom)


def test_wide_words_buy_precision_in_mvm_layers():
    """15-bit requantization multipliers capped every layer near a 3e-5 gain error, so
    24-bit words came out no closer to float than 16-bit ones; the multiplier now widens
    with the word (and stays 15 bits up to 16-bit words)."""
    w0, w1 = _w(20, 30), _w(30, 5)
    m = _model([helper.make_node("MatMul", ["x", "w0"], ["h"]),
                helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("MatMul", ["r", "w1"], ["y"])], {"w0": w0, "w1": w1},
               (1, 20), ["y"])
    x = RNG.standard_normal((8, 20)).astype(np.float32)
    want = np.maximum(x.astype(np.float64) @ w0, 0) @ w1

    def err(bits):
        cfg = load_config("puma", ["adc.bits=none", "xbar.rows=32", f"weight_bits={bits}",
                                   f"input_bits={bits}"])
        prog, lp, _ = compile_model(m, cfg, calibration={"x": x}, return_ir=True)
        rep = simulate(prog, {"x": x})
        np.testing.assert_array_equal(rep.outputs["y:int"],
                                      run_integer_reference(lp, {"x": x})["y:int"])
        return np.linalg.norm(rep.outputs["y"] - want) / np.linalg.norm(want)

    assert err(24) < 2e-6 < err(16)


def test_a_static_batch_of_zero_is_refused_and_its_reference_runs():
    """A (0, 8) input compiled, and onnxruntime's reference then failed with a 21-line
    traceback (a batch of 0 was never re-batched to feed one sample)."""
    m = _model([helper.make_node("Relu", ["x"], ["y"])], {}, (0, 8), ["y"])
    with pytest.raises(UnsupportedOpError, match="graph input 'x' has a static batch of 0"):
        compile_model(m, CFG)
    x = _w(2, 8)
    np.testing.assert_array_equal(run_onnxruntime(m, {"x": x})["y"], np.maximum(x, 0))


def test_onnxruntime_failing_on_a_model_is_one_line_without_its_log(capfd):
    """An 11x11 kernel on an 8x8 input: the reference raised onnxruntime's own exception, and
    calibration's one-line error came after onnxruntime's coloured ERROR log line."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": _w(2, 1, 11, 11)},
               (1, 1, 8, 8), [])
    m.graph.output.append(helper.make_empty_tensor_value_info("y"))
    with pytest.raises(CompilerError, match=r"^onnxruntime failed on model 't': .*Conv"):
        run_onnxruntime(m, {"x": _w(1, 1, 8, 8)})
    with pytest.raises(CompilerError, match="onnxruntime failed on the model during calib"):
        compile_model(m, CFG)
    assert "onnxruntime" not in capfd.readouterr().err


@pytest.mark.parametrize("var", [-5.0, float("nan")])
@pytest.mark.parametrize("after", ["Conv", "Relu"])      # folded into the conv, or lowered
def test_a_batchnorm_variance_that_is_not_positive_is_refused_by_name(var, after):
    """var = -5 gave numpy warnings and then an error blaming the conv's rescaling factor
    and the calibration inputs."""
    bn = {"g": np.ones(3, np.float32), "b": np.zeros(3, np.float32),
          "m": np.zeros(3, np.float32), "v": np.array([1, var, 1], np.float32)}
    first = (helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]) if after == "Conv"
             else helper.make_node("Relu", ["x"], ["a"]))
    m = _model([first, helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["y"],
                                        name="bn")],
               {"w": _w(3, 3, 3, 3), **bn}, (1, 3, 4, 4), ["y"])
    with pytest.raises(ModelFormatError, match=rf"^node 'bn' \(BatchNormalization\): variance "
                                               rf"{var:g} at index 1 .*allowed: variance \+ "
                                               rf"epsilon finite and > 0$"):
        compile_model(m, CFG, calibration={"x": _w(2, 3, 4, 4)})


def test_a_checker_error_keeps_the_node_it_names(tmp_path):
    """The checker names the node on its second line, which the one-line error cut off."""
    from compiler.frontend import load_model
    g = helper.make_graph([helper.make_node("MatMul", ["x", "fc1.weight"], ["y"], name="fc1")],
                          "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(ModelFormatError, match=r"input 'fc1.weight' of node: name: fc1 "
                                               r"OpType: MatMul is not output") as e:
        load_model(tmp_path / "m.onnx")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["1", "a"])
def test_a_short_node_name_still_prefixes_the_error(name):
    # "1" is in "transA=1", "a" in "Concat of feature maps along axis 2": the prefix was left off
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, name=name)],
               {"w": _w(1, 3)}, (1, 1), ["y"])
    with pytest.raises(UnsupportedOpError, match=rf"^node '{name}' \(Gemm\): Gemm with transA"):
        compile_model(m, CFG)
    m = _model([helper.make_node("Concat", ["x", "x"], ["y"], axis=2, name=name)], {},
               (1, 4, 3, 3), ["y"])
    with pytest.raises(UnsupportedOpError, match=rf"^node '{name}' \(Concat\): Concat of"):
        compile_model(m, CFG)


def test_a_map_read_flat_and_padded_names_its_readers():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              name="pool")]
    m = _model(nodes, {}, (1, 2, 4, 4), ["y", "f"])
    with pytest.raises(UnsupportedOpError, match=r"^tensor 'r' is flattened \(read as a vector\) "
                                                 r"by Flatten 'flat' and read with a padded "
                                                 r"border by MaxPool 'pool'; .*: pad the input "
                                                 r"of MaxPool 'pool' with an explicit Pad node"):
        compile_model(m, CFG)


def test_two_border_values_name_their_readers_and_real_values():
    # said "(-32768 and 0)": the integer codes, and no reader
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              name="pool"),
             helper.make_node("Conv", ["c", "w2"], ["z"], pads=[1, 1, 1, 1], name="conv1")]
    m = _model(nodes, {"w": _w(2, 2, 1, 1), "w2": _w(2, 2, 3, 3)}, (1, 2, 4, 4), ["y", "z"])
    with pytest.raises(UnsupportedOpError, match=r"tensor 'c' is read with a border of -inf by "
                                                 r"MaxPool 'pool' and of 0 by Conv 'conv1'; one "
                                                 r"border per tensor is supported: pad one "
                                                 r"reader's input with an explicit Pad node"):
        compile_model(m, CFG)


@pytest.mark.parametrize("shape", [(3, 4), (4, 1)])
def test_a_constant_that_would_enlarge_a_vector_is_refused(shape):
    # numpy's "operands could not be broadcast" came out as "lowering failed"
    for op in ("Add", "Mul"):
        m = _model([helper.make_node(op, ["x", "k"], ["y"], name="ew")],
                   {"k": np.ones(shape, np.float32)}, (1, 4), ["y"])
        with pytest.raises(UnsupportedOpError, match=rf"^node 'ew' \({op}\): constant of shape "
                                                     rf"\({shape[0]}, .*does not broadcast to "
                                                     r"\(1, 4\), the tensor it meets"):
            compile_model(m, CFG)


def test_an_output_zero_on_calibration_saturates_rather_than_wrapping():
    """y = 1e4 (x0 + x1) is 0 on every calibration sample: its requantization multiplier
    (3e11, no shift left) times the sum left int64 and the output wrapped to the other sign;
    it now saturates, as the warning says."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])],
               {"w": np.array([[1e4], [1e4]], np.float32)}, (1, 2), ["y"])
    calib = {"x": np.array([[1e4, -1e4], [-5e3, 5e3]], np.float32)}
    x = {"x": np.array([[1e4, 1e4], [1.0, 1.0], [-1e4, -1e4], [3e3, 0]], np.float32)}
    with pytest.warns(UserWarning, match="zero on every calibration sample"):
        prog, lp, _ = compile_model(m, CFG, calibration=calib, return_ir=True)
    y = simulate(prog, x).outputs["y:int"].ravel()
    np.testing.assert_array_equal(y, [32767, 32767, -32768, 32767])
    np.testing.assert_array_equal(y, run_integer_reference(lp, x)["y:int"].ravel())


@pytest.mark.parametrize("bits", [8, 16])
def test_a_tensor_range_below_1e8_keeps_its_precision(bits):
    """Every range was floored at 1e-8: inputs ~1e-11 came out all zeros at 8 bits."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])], {"w": _w(6, 3)}, (1, 6), ["y"])
    x = {"x": (RNG.standard_normal((4, 6)) * 1e-11).astype(np.float32)}
    cfg = load_config("puma", ["adc.bits=none", f"input_bits={bits}", f"weight_bits={bits}"])
    y = simulate(compile_model(m, cfg, calibration=x), x).outputs["y"]
    want = run_onnxruntime(m, x)["y"]
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < 0.05


def test_integer_calibration_data_counts_its_most_negative_value():
    """abs(int8(-128)) is -128 in int8: the range came out 40, and -128 read as -80."""
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"])],
               {"w": np.eye(4, dtype=np.float32)}, (1, 4), ["y"])
    calib = {"x": np.array([[-128, 40, 0, 1], [-128, 20, 3, 2]], np.int8)}
    prog = compile_model(m, CFG, calibration=calib)
    x = {"x": calib["x"].astype(np.float32)}
    np.testing.assert_allclose(simulate(prog, x).outputs["y"], x["x"], rtol=1e-3)
