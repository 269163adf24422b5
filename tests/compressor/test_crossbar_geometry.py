"""CrossbarGeometry: validation, the shared transpose-view convention, level sets."""
from types import SimpleNamespace

import numpy as np
import pytest

from compressor.errors import CompressionError
from compressor.geometry import (
    CrossbarGeometry,
    from_crossbar,
    level_range,
    to_crossbar,
)


@pytest.mark.parametrize("field,value", [
    ("rows", 0), ("cols", -3), ("cell_bits", 0), ("weight_bits", 1), ("weight_bits", 33),
    ("mapping", "mirror"), ("g_min_us", -1.0), ("g_max_us", 0.5), ("rows", 2.5),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(CompressionError, match=f"geometry.{field}"):
        CrossbarGeometry(**{field: value})


def test_cell_bits_above_weight_bits_is_an_error():
    with pytest.raises(CompressionError, match="cell_bits=8.*weight_bits=4"):
        CrossbarGeometry(cell_bits=8, weight_bits=4)


def test_from_config_reads_machine_fields():
    cfg = SimpleNamespace(weight_bits=16, xbar=SimpleNamespace(
        rows=256, cols=64, cell_bits=2, mapping="offset", g_min_us=2.0, g_max_us=200.0))
    g = CrossbarGeometry.from_config(cfg)
    assert (g.rows, g.cols, g.cell_bits, g.weight_bits, g.mapping) == (256, 64, 2, 16, "offset")
    assert g.slices == 8 and g.g_min_us == 2.0
    with pytest.raises(CompressionError, match="geometry.colz"):
        CrossbarGeometry.from_dict({"colz": 3})


def test_levels():
    assert level_range(8, "differential") == (-127, 127)
    assert level_range(8, "offset") == (-128, 127)
    assert level_range(1, "offset") == (-1, 0)
    assert CrossbarGeometry(cell_bits=3, weight_bits=8).slices == 3
    with pytest.raises(CompressionError, match="bits=0"):
        level_range(0)


def test_conv_crossbar_matrix_is_channel_last_im2col_transpose():
    w = np.arange(5 * 3 * 2 * 2).reshape(5, 3, 2, 2)
    m = to_crossbar(w)
    assert m.shape == (12, 5)
    for o, c, ky, kx in np.ndindex(*w.shape):
        assert m[(ky * 2 + kx) * 3 + c, o] == w[o, c, ky, kx]   # rows (ky, kx, c_in)
    assert np.array_equal(from_crossbar(m, w.shape), w)
    w1 = np.arange(4 * 3 * 5).reshape(4, 3, 5)                  # Conv1d: rows (kx, c_in)
    assert to_crossbar(w1)[2 * 3 + 1, 0] == w1[0, 1, 2]
    assert np.array_equal(from_crossbar(to_crossbar(w1), w1.shape), w1)


def test_torch_and_numpy_agree():
    import torch
    w = np.random.default_rng(0).standard_normal((6, 4, 3, 3))
    t = torch.from_numpy(w)
    assert np.array_equal(to_crossbar(t).numpy(), to_crossbar(w))
    assert np.array_equal(from_crossbar(to_crossbar(t), t.shape).numpy(), w)


def test_conv_rows_are_the_compilers_rows():
    """The compiler's weight matrix of a Conv is exactly ``to_crossbar`` of its integers, so
    a crossbar block here is a crossbar there."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compiler import compile_model
    rng = np.random.default_rng(0)
    q = rng.integers(-100, 101, (5, 3, 3, 3)).astype(np.int8)
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
         helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1, 1, 1, 1])],
        "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, 6, 6])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.float32(0.01), "ws"),
         numpy_helper.from_array(np.int8(0), "wz")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    _, lp, _ = compile_model(model, "puma", calibration={"input": x}, return_ir=True)
    (layer,) = [L for L in lp.layers if L.kind == "mvm"]
    assert np.array_equal(layer.weight, to_crossbar(q.astype(np.int64)))


def test_blocks_pad_and_unblock():
    g = CrossbarGeometry(rows=4, cols=3)
    m = np.arange(1, 7 * 5 + 1).reshape(7, 5)
    b = g.blocks(m)
    assert b.shape == (2, 4, 2, 3) and g.grid((5, 7)) == (2, 2)
    assert b[1, 3, 1, 2] == 0 and b[1, 2, 1, 1] == m[6, 4]
    assert np.array_equal(g.unblock(b, 7, 5), m)


@pytest.mark.parametrize("preset", ["puma", "isaac", "small"])
def test_from_config_of_every_simulator_preset(preset):
    from simulator.config import load_config
    cfg = load_config(preset)
    g = CrossbarGeometry.from_config(cfg)
    assert (g.rows, g.cols, g.weight_bits, g.mapping) == (
        cfg.xbar.rows, cfg.xbar.cols, cfg.weight_bits, cfg.xbar.mapping)
    assert g.slices == cfg.slices
