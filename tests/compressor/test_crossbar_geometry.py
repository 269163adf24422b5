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


def test_conv_crossbar_matrix_is_im2col_transpose():
    w = np.arange(5 * 3 * 2 * 2).reshape(5, 3, 2, 2)
    m = to_crossbar(w)
    assert m.shape == (12, 5)
    for o, c, ky, kx in np.ndindex(*w.shape):
        assert m[c * 4 + ky * 2 + kx, o] == w[o, c, ky, kx]
    assert np.array_equal(from_crossbar(m, w.shape), w)


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
