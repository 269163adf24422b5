"""Spatial and layout ops (AveragePool, Concat, Pad, Transpose / channel shuffle, LRN,
MaxPool dilations, Squeeze/Unsqueeze): each a small ONNX graph compiled for the puma
machine with ideal ADCs and simulated; the simulator must match the integer reference bit
for bit and onnxruntime to 1e-2 relative L2."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.errors import UnsupportedOpError
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

CFG = load_config("puma", ["adc.bits=none"])
RNG = np.random.default_rng(7)


def const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def weight(name, shape, scale=0.3):
    return const(name, (RNG.standard_normal(shape) * scale).astype(np.float32))


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run_and_compare(model, inputs, batch=3, seed=0):
    """Compile, simulate, and check every graph output; returns (program, layer program)."""
    rng = np.random.default_rng(seed)
    feeds = {n: rng.standard_normal((batch,) + tuple(s[1:])).astype(np.float32)
             for n, s in inputs}
    prog, lp, _ = compile_model(model, CFG, calibration=feeds, return_ir=True)
    rep = simulate(prog, feeds)
    ref = run_integer_reference(lp, feeds)
    ort = run_onnxruntime(model, feeds)
    for o in lp.outputs:
        np.testing.assert_array_equal(rep.outputs[o + ":int"], ref[o + ":int"],
                                      err_msg=f"output {o}: simulator != integer reference")
        err = np.linalg.norm(rep.outputs[o] - ort[o]) / max(np.linalg.norm(ort[o]), 1e-30)
        assert err <= 1e-2, f"output {o}: relative L2 error {err:.3g} vs onnxruntime"
    return prog, lp


def layer_ops(lp):
    return [L.op for L in lp.layers]


# ---- AveragePool -----------------------------------------------------------------------

AVG_CASES = [  # H, W, kernel, strides, pads, ceil_mode, count_include_pad, dilations
    (12, 12, [3, 3], [2, 2], [1, 1, 1, 1], 0, 0, None),
    (12, 12, [3, 3], [2, 2], [1, 1, 1, 1], 0, 1, None),
    (11, 11, [3, 3], [2, 2], [0, 0, 0, 0], 1, 0, None),
    (11, 11, [3, 3], [2, 2], [0, 0, 0, 0], 1, 1, None),
    (10, 9, [3, 2], [1, 2], [1, 0, 1, 1], 1, 0, None),
    (8, 8, [2, 2], [2, 2], [0, 0, 0, 0], 0, 0, None),
    (9, 9, [3, 3], [1, 1], [2, 2, 2, 2], 0, 0, [2, 2]),
    (9, 9, [3, 3], [1, 1], [1, 1, 1, 1], 0, 1, [2, 2]),
    (6, 6, [7, 7], [1, 1], [0, 0, 1, 1], 0, 0, None),    # Inception v1's last pool
    (7, 7, [7, 7], [1, 1], [0, 0, 0, 0], 0, 0, None),    # ResNet-50's last pool
]


@pytest.mark.parametrize("H,W,k,s,p,ceil,cip,dil", AVG_CASES)
def test_average_pool_2d(H, W, k, s, p, ceil, cip, dil):
    attrs = {"kernel_shape": k, "strides": s, "pads": p, "ceil_mode": ceil,
             "count_include_pad": cip}
    if dil:
        attrs["dilations"] = dil
    m = make_model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)],
                   [("x", [1, 150, H, W])], ["y"], opset=19)
    run_and_compare(m, [("x", [1, 150, H, W])])


@pytest.mark.parametrize("cip", [0, 1])
def test_average_pool_1d(cip):
    m = make_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3],
                                     strides=[2], pads=[1, 1], count_include_pad=cip)],
                   [("x", [1, 20, 17])], ["y"])
    run_and_compare(m, [("x", [1, 20, 17])])


def test_average_pool_border_regions_not_a_table():
    """count_include_pad=0 with padding: one loop nest per constant-divisor rectangle, no
    per-pixel constants in memory, program size independent of the image size."""
    def build(n):
        m = make_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                         pads=[1, 1, 1, 1])], [("x", [1, 8, n, n])], ["y"])
        return compile_model(m, CFG, calibration={"x": np.ones((1, 8, n, n), np.float32)},
                             return_ir=True)
    (p1, lp, _), (p2, _, _) = build(8), build(40)
    L = lp.layers[0]
    assert len(L.rects) == 9 and L.constants({}) == {}
    assert p1.n_instructions == p2.n_instructions


def test_average_pool_after_conv_shares_zero_border():
    w = weight("w", (16, 4, 3, 3))
    m = make_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["r"]),
                    helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[3, 3],
                                     strides=[2, 2], pads=[1, 1, 1, 1]),
                    helper.make_node("MaxPool", ["r"], ["z"], kernel_shape=[2, 2],
                                     strides=[2, 2])],
                   [("x", [1, 4, 9, 9])], ["y", "z"], [w])
    run_and_compare(m, [("x", [1, 4, 9, 9])])


# ---- MaxPool dilations ---------------------------------------------------------------------

@pytest.mark.parametrize("pads,ceil", [([0, 0, 0, 0], 0), ([1, 1, 1, 1], 0), ([1, 0, 0, 1], 1)])
def test_max_pool_dilations(pads, ceil):
    m = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2],
                                     strides=[2, 1], dilations=[2, 3], pads=pads,
                                     ceil_mode=ceil)],
                   [("x", [1, 12, 11, 10])], ["y"])
    run_and_compare(m, [("x", [1, 12, 11, 10])])


# ---- Concat --------------------------------------------------------------------------------

def test_concat_channels_of_maps_with_different_scales():
    inits = [weight("w1", (150, 8, 3, 3), 0.2), weight("w2", (40, 8, 1, 1), 1.0),
             weight("w3", (5, 198, 3, 3), 0.1)]
    m = make_model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
                    helper.make_node("Conv", ["x", "w2"], ["b"]),
                    helper.make_node("Concat", ["a", "x", "b"], ["y"], axis=1),
                    helper.make_node("Conv", ["y", "w3"], ["z"], pads=[1, 1, 1, 1])],
                   [("x", [1, 8, 7, 6])], ["y", "z"], inits)
    _, lp = run_and_compare(m, [("x", [1, 8, 7, 6])])
    cat = next(L for L in lp.layers if L.op == "Concat")
    assert len({lp.tensors[i].scale for i in cat.inputs}) > 1   # rescaling was exercised


def test_concat_negative_axis_and_1d_maps():
    m = make_model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Concat", ["r", "x", "r"], ["y"], axis=-2)],
                   [("x", [1, 70, 9])], ["y"])
    run_and_compare(m, [("x", [1, 70, 9])])


def test_concat_vectors_keep_memory_orders():
    """A flattened map (memory order H, W, C) concatenated with a Gemm output: the
    output's perm records each word's logical index, the next MatMul permutes its rows."""
    inits = [weight("wa", (200, 30), 0.1), weight("wb", (230, 7), 0.1)]
    m = make_model([helper.make_node("Flatten", ["x"], ["f"]),
                    helper.make_node("MatMul", ["f", "wa"], ["a"]),
                    helper.make_node("Concat", ["a", "f"], ["y"], axis=1),
                    helper.make_node("MatMul", ["y", "wb"], ["z"])],
                   [("x", [1, 8, 5, 5])], ["y", "z"], inits)
    _, lp = run_and_compare(m, [("x", [1, 8, 5, 5])])
    assert lp.tensors["y"].perm is not None


def test_concat_of_maps_along_a_spatial_axis_is_refused():
    m = make_model([helper.make_node("Concat", ["x", "x"], ["y"], axis=2)],
                   [("x", [1, 4, 3, 3])], ["y"])
    with pytest.raises(UnsupportedOpError, match="Concat of feature maps along axis 2"):
        compile_model(m, CFG)


# ---- Pad -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pads,value", [([0, 0, 1, 2, 0, 0, 3, 0], 0.0),
                                        ([0, 0, -1, 2, 0, 0, 1, -2], 0.5),
                                        ([0, 0, 2, 2, 0, 0, 2, 2], 50.0)])
def test_pad_constant(pads, value):
    """Zero padding, cropping with a constant border, and a constant beyond the input's
    range (the copy then rescales)."""
    inits = [weight("w", (4, 20, 3, 3), 0.2), const("p", np.array(pads, np.int64)),
             const("v", np.array(value, np.float32))]
    m = make_model([helper.make_node("Pad", ["x", "p", "v"], ["y"]),
                    helper.make_node("Conv", ["y", "w"], ["z"], pads=[1, 1, 1, 1])],
                   [("x", [1, 20, 6, 7])], ["y", "z"], inits)
    run_and_compare(m, [("x", [1, 20, 6, 7])])


def test_pad_opset10_attributes_1d():
    m = make_model([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 0, 0, 2], value=0.0)],
                   [("x", [1, 130, 9])], ["y"], opset=10)
    run_and_compare(m, [("x", [1, 130, 9])])


def test_pad_with_axes_input():
    inits = [const("p", np.array([2, 1, 0, 3], np.int64)), const("ax", np.array([2, 3]))]
    m = make_model([helper.make_node("Pad", ["x", "p", "", "ax"], ["y"])],
                   [("x", [1, 5, 4, 4])], ["y"], inits, opset=18)
    run_and_compare(m, [("x", [1, 5, 4, 4])])


@pytest.mark.parametrize("mode,pads,H,W", [
    ("edge", [0, 0, 1, 2, 0, 0, 3, 1], 5, 6),
    ("edge", [0, 0, 0, 3, 0, 0, 0, 4], 1, 1),
    ("reflect", [0, 0, 2, 3, 0, 0, 1, 2], 5, 6),
    ("reflect", [0, 0, -1, 2, 0, 0, 2, -1], 5, 6),    # crop on one side, mirror on the other
    ("wrap", [0, 0, 2, 3, 0, 0, 4, 2], 5, 6),
    ("wrap", [0, 0, -2, 1, 0, 0, 1, -2], 5, 6),      # wraps the cropped input, as the spec
])
def test_pad_edge_reflect_wrap(mode, pads, H, W):
    """Border rows/columns copy input rows/columns: loop nests whose input pointer steps
    by 0 (edge), -1 (reflect) or jumps back (wrap)."""
    m = make_model([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)],
                   [("x", [1, 20, H, W])], ["y"], [const("p", np.array(pads, np.int64))],
                   opset=19)
    m.ir_version = 9
    prog, lp = run_and_compare(m, [("x", [1, 20, H, W])])
    assert all(L.op == "Pad" for L in lp.layers)


@pytest.mark.parametrize("mode,pads", [("constant", [0, 1, 0, 0, 0, 0, 0, 0]),
                                       ("constant", [1, 0, 0, 0, 0, 0, 0, 0])])
def test_pad_refuses_channel_and_batch_padding(mode, pads):
    m = make_model([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)],
                   [("x", [1, 3, 4, 4])], ["y"], [const("p", np.array(pads, np.int64))])
    with pytest.raises(UnsupportedOpError, match="Pad"):
        compile_model(m, CFG)


# ---- Transpose and the channel shuffle -------------------------------------------------

def shuffle(x, y, C, H, W, g):
    nodes = [helper.make_node("Reshape", [x, x + "_s5"], [x + "_r"]),
             helper.make_node("Transpose", [x + "_r"], [x + "_t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", [x + "_t", x + "_s4"], [y])]
    inits = [const(x + "_s5", np.array([1, g, C // g, H, W], np.int64)),
             const(x + "_s4", np.array([1, C, H, W], np.int64))]
    return nodes, inits


def test_channel_shuffle_into_convs_moves_no_data():
    """ShuffleNet's unit: the shuffle aliases its input with a channel permutation and the
    depthwise Conv after it permutes its weight rows; a second shuffle composes."""
    C, H, W, g = 24, 6, 5, 4
    s1, i1 = shuffle("a", "b", C, H, W, g)
    s2, i2 = shuffle("c", "d", C, H, W, 3)
    nodes = ([helper.make_node("Relu", ["x"], ["a"])] + s1
             + [helper.make_node("Conv", ["b", "wd"], ["c"], pads=[1, 1, 1, 1], group=C)] + s2
             + [helper.make_node("Conv", ["d", "wg"], ["e"], group=g)])
    inits = i1 + i2 + [weight("wd", (C, 1, 3, 3)), weight("wg", (C, C // g, 1, 1))]
    m = make_model(nodes, [("x", [1, C, H, W])], ["e"], inits)
    _, lp = run_and_compare(m, [("x", [1, C, H, W])])
    shuf = [L for L in lp.layers if L.op == "ChannelShuffle"]
    assert len(shuf) == 2 and all(L.kind == "alias" for L in shuf)
    assert lp.tensors["b"].cperm is not None
    assert "Transpose" not in layer_ops(lp)


def test_channel_shuffle_copies_when_a_consumer_is_not_a_conv():
    C, H, W, g = 136, 3, 4, 4
    s1, i1 = shuffle("a", "b", C, H, W, g)
    m = make_model([helper.make_node("Relu", ["x"], ["a"])] + s1
                   + [helper.make_node("Relu", ["b"], ["c"])],
                   [("x", [1, C, H, W])], ["b", "c"], i1)
    _, lp = run_and_compare(m, [("x", [1, C, H, W])])
    shuf = next(L for L in lp.layers if L.op == "ChannelShuffle")
    assert shuf.kind == "vfu" and lp.tensors["b"].cperm is None


def test_transpose_of_vectors_and_maps_is_a_view():
    inits = [weight("wa", (60, 7)), const("s3", np.array([1, 6, 10])),
             const("s2", np.array([1, 60]))]
    m = make_model([helper.make_node("Flatten", ["x"], ["f"]),
                    helper.make_node("Reshape", ["f", "s3"], ["r"]),
                    helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                    helper.make_node("Reshape", ["t", "s2"], ["u"]),
                    helper.make_node("MatMul", ["u", "wa"], ["z"]),
                    helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1])],
                   [("x", [1, 3, 4, 5])], ["z", "t", "nhwc"], inits)
    _, lp = run_and_compare(m, [("x", [1, 3, 4, 5])])
    assert all(L.kind == "alias" for L in lp.layers if L.op == "Transpose")


# ---- LRN -----------------------------------------------------------------------------------

@pytest.mark.parametrize("C,size,alpha,beta,bias,gain", [
    (96, 5, 1e-4, 0.75, 1.0, 1.0),      # AlexNet / GoogLeNet's
    (200, 5, 1e-4, 0.75, 1.0, 30.0),    # large activations: the denominator matters
    (7, 3, 0.5, 0.75, 2.0, 3.0),
    (9, 3, 1.0, 0.5, 0.1, 2.0),         # bias < 1: fewer fraction bits
    (5, 1, 2.0, 1.0, 1.0, 1.0),
])
def test_lrn(C, size, alpha, beta, bias, gain):
    w = const("w", (np.eye(C, dtype=np.float32) * gain).reshape(C, C, 1, 1))
    m = make_model([helper.make_node("Conv", ["x", "w"], ["xs"]),
                    helper.make_node("LRN", ["xs"], ["y"], size=size, alpha=alpha, beta=beta,
                                     bias=bias)],
                   [("x", [1, C, 4, 5])], ["y"], [w])
    run_and_compare(m, [("x", [1, C, 4, 5])])


# ---- Squeeze / Unsqueeze / Reshape between map geometries ------------------------------------

@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 0, 2, 0]])
def test_1d_pool_exported_as_2d(pads):
    """PyTorch's AvgPool1d export: Unsqueeze (1, C, L) -> (1, C, L, 1), a (k, 1) pool, Squeeze
    back. Each geometry keeps its own border, so the views are copies."""
    inits = [const("ax", np.array([3], np.int64))]
    m = make_model([helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
                    helper.make_node("AveragePool", ["u"], ["p"], kernel_shape=[3, 1],
                                     strides=[2, 1], pads=pads),
                    helper.make_node("Squeeze", ["p", "ax"], ["y"])],
                   [("x", [1, 20, 15])], ["y"], inits, opset=13)
    _, lp = run_and_compare(m, [("x", [1, 20, 15])])
    assert [L.kind for L in lp.layers] == ["vfu"] * 3


def test_reshape_map_rows_into_one_line_and_alias_of_same_geometry():
    inits = [const("s3", np.array([1, 6, 20])), const("s4", np.array([1, 6, 1, 20]))]
    m = make_model([helper.make_node("Reshape", ["x", "s3"], ["l"]),
                    helper.make_node("MaxPool", ["l"], ["p"], kernel_shape=[3], pads=[1, 1]),
                    helper.make_node("Reshape", ["p", "s4"], ["y"])],
                   [("x", [1, 6, 4, 5])], ["y"], inits)
    _, lp = run_and_compare(m, [("x", [1, 6, 4, 5])])
    assert [L.kind for L in lp.layers] == ["vfu", "vfu", "alias"]


def test_squeeze_unsqueeze_views():
    inits = [weight("w", (16, 8, 1, 1)), weight("wf", (16, 5)),
             const("ax", np.array([2, 3], np.int64)), const("ax2", np.array([2], np.int64))]
    m = make_model([helper.make_node("Conv", ["x", "w"], ["c"]),
                    helper.make_node("Squeeze", ["c", "ax"], ["s"]),
                    helper.make_node("MatMul", ["s", "wf"], ["f"]),
                    helper.make_node("Unsqueeze", ["f", "ax2"], ["u"])],
                   [("x", [1, 8, 1, 1])], ["u", "s"], inits, opset=13)
    run_and_compare(m, [("x", [1, 8, 1, 1])])


@pytest.mark.parametrize("op, attrs", [("MaxPool", {"kernel_shape": [2, 2, 2]}),
                                       ("AveragePool", {"kernel_shape": [2, 2, 2]}),
                                       ("GlobalAveragePool", {})])
def test_3d_pooling_is_refused_as_such(op, attrs):
    # a 5-D input is stored as a vector: it was blamed on "a Transpose, Reshape or Flatten"
    m = onnx.shape_inference.infer_shapes(make_model(
        [helper.make_node(op, ["x"], ["y"], name="p3", **attrs)], [("x", [1, 2, 3, 4, 4])],
        ["y"]))
    with pytest.raises(UnsupportedOpError, match=rf"^node 'p3' \({op}\): {op}: only 1-D and "
                                                 r"2-D pooling is supported \(input rank 5\)$"):
        compile_model(m, CFG)
