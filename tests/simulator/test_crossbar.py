"""Bit-exactness of one MVM against numpy, and the ADC's clip/scale behaviour against an
independent, deliberately naive model."""
import itertools

import numpy as np
import pytest

from simulator import load_config, simulate
from simulator import examples as ex
from simulator.crossbar import decode_levels, encode_levels, lossless_adc_bits, weight_range


def naive_mvm(x, w, *, weight_bits, input_bits, cell_bits, dac_bits, mapping, adc_bits, mode):
    """Independent reference: explicit loops over arrays, slices, input steps and columns."""
    x = np.asarray(x, np.int64)
    w = np.asarray(w, np.int64)
    # each array holds a magnitude (differential: weight_bits - 1 bits) or w + bias (offset)
    stored = weight_bits - 1 if mapping == "differential" else weight_bits
    slices = -(-stored // cell_bits)
    if mapping == "differential":
        arrays = [(+1, np.maximum(w, 0)), (-1, np.maximum(-w, 0))]
    else:
        arrays = [(+1, w + 2 ** (weight_bits - 1))]
    u = np.where(x < 0, x + 2 ** input_bits, x)          # two's complement, unsigned
    steps = [(input_bits - 1, 1, -(2 ** (input_bits - 1)))]  # the sign bit, subtracted
    s = 0
    while s < input_bits - 1:
        width = min(dac_bits, input_bits - 1 - s)
        steps.append((s, width, 2 ** s))
        s += width
    out = np.zeros((x.shape[0], w.shape[1]), np.int64)
    for sign, mag in arrays:
        for k in range(slices):
            level = (mag // (2 ** (k * cell_bits))) % (2 ** cell_bits)
            colmax = (2 ** dac_bits - 1) * level.sum(0)
            for shift, width, weight in steps:
                digit = (u // (2 ** shift)) % (2 ** width)
                v = digit @ level                          # analog column sums
                if adc_bits is not None and mode == "clip":
                    v = np.minimum(v, 2 ** adc_bits - 1)
                elif adc_bits is not None and mode == "scale":
                    for c in range(v.shape[1]):
                        need = int(np.ceil(np.log2(colmax[c] + 1)))
                        drop = max(need - adc_bits, 0)
                        v[:, c] = (v[:, c] // 2 ** drop) * 2 ** drop
                out += sign * weight * (2 ** (k * cell_bits)) * v
    if mapping == "offset":
        out -= 2 ** (weight_bits - 1) * x.sum(1, keepdims=True)
    return out


def _machine(bits, mapping="differential", dac=1, adc="none", mode="clip", rows=128):
    return load_config("puma", [f"weight_bits={bits}", f"input_bits={bits}",
                                f"xbar.mapping={mapping}", f"dac.bits={dac}",
                                f"adc.bits={adc}", f"adc.mode={mode}",
                                f"xbar.rows={rows}", f"xbar.cols={rows}"])


def _operands(bits, n=6, rows=128, seed=0):
    rng = np.random.default_rng(seed)
    lim = 2 ** (bits - 1)
    # weights symmetric, as differential mapping stores them (offset would take -lim too)
    return rng.integers(-lim, lim, (n, rows)), rng.integers(-lim + 1, lim, (rows, rows))


@pytest.mark.parametrize("bits,mapping,dac", list(itertools.product(
    (8, 16), ("differential", "offset"), (1, 2, 4))))
def test_ideal_adc_equals_integer_matmul(bits, mapping, dac):
    x, w = _operands(bits)
    cfg = _machine(bits, mapping, dac)
    rep = simulate(ex.single_mvm(cfg, w), {"x": x})
    np.testing.assert_array_equal(rep.outputs["y:int"], x @ w)


@pytest.mark.parametrize("bits,mapping,adc_bits,mode", list(itertools.product(
    (8, 16), ("differential", "offset"), (3, 4, 6), ("clip", "scale"))))
def test_low_adc_bits_match_independent_model(bits, mapping, adc_bits, mode):
    x, w = _operands(bits, seed=adc_bits)
    cfg = _machine(bits, mapping, 1, adc_bits, mode)
    got = simulate(ex.single_mvm(cfg, w), {"x": x}).outputs["y:int"]
    want = naive_mvm(x, w, weight_bits=bits, input_bits=bits, cell_bits=2, dac_bits=1,
                     mapping=mapping, adc_bits=adc_bits, mode=mode)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, x @ w), "low ADC bits should lose information here"


def test_multibit_dac_clip_matches_independent_model():
    x, w = _operands(16, seed=3)
    cfg = _machine(16, "offset", 3, 6, "clip")
    got = simulate(ex.single_mvm(cfg, w), {"x": x}).outputs["y:int"]
    want = naive_mvm(x, w, weight_bits=16, input_bits=16, cell_bits=2, dac_bits=3,
                     mapping="offset", adc_bits=6, mode="clip")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["clip", "scale"])
def test_lossless_bits_are_lossless_and_one_fewer_is_not(mode):
    # TinyADC-style sparsity: at most 8 nonzeros per column, so 2**cell_bits-1 = 3 per cell
    # gives column sums <= 24 per slice: 5 bits suffice, 4 do not (for all-ones inputs).
    rng = np.random.default_rng(7)
    w = np.zeros((128, 32), np.int64)
    for c in range(32):
        rows = rng.choice(128, 8, replace=False)
        w[rows, c] = rng.integers(-127, 128, 8)
    w[:, 0] = 0
    w[:8, 0] = -127   # |w| = 0b1111111: the negative array's slices 0-2 at level 3, 8 rows
    x = np.vstack([np.full(128, -1), rng.integers(-128, 128, (5, 128))])
    cfg = _machine(8, "differential", 1, "none", mode)
    levels = encode_levels(w, 8, 2, "differential")
    bits = lossless_adc_bits(levels, 1)
    assert bits == 5
    exact = x @ w
    ok = simulate(ex.single_mvm(cfg, w, adc_bits=bits), {"x": x}).outputs["y:int"]
    np.testing.assert_array_equal(ok, exact)
    lossy = simulate(ex.single_mvm(cfg, w, adc_bits=bits - 1), {"x": x}).outputs["y:int"]
    assert not np.array_equal(lossy, exact)


@pytest.mark.parametrize("mapping,cell_bits,wbits", list(itertools.product(
    ("differential", "offset"), (1, 2, 3, 4), (4, 8, 16))))
def test_levels_round_trip(mapping, cell_bits, wbits):
    rng = np.random.default_rng(cell_bits)
    lo, hi = weight_range(wbits, mapping)
    w = rng.integers(lo, hi + 1, (9, 7))
    w[0, :2] = lo, hi                                   # both ends of the range
    lv = encode_levels(w, wbits, cell_bits, mapping)
    assert lv.max() < 2 ** cell_bits
    np.testing.assert_array_equal(decode_levels(lv, wbits, cell_bits, mapping), w)


@pytest.mark.parametrize("wbits,cell_bits,mapping,slices", [
    (4, 2, "differential", 2), (5, 2, "differential", 2), (5, 2, "offset", 3),
    (4, 1, "differential", 3), (4, 1, "offset", 4), (2, 2, "differential", 1),
    (16, 2, "differential", 8), (16, 2, "offset", 8)])
def test_a_differential_array_holds_the_magnitude_only(wbits, cell_bits, mapping, slices):
    """Differential weights are symmetric, so each array stores weight_bits - 1 magnitude
    bits: 5-bit weights on 2-bit cells take the 2 slices 4-bit ones do, not 3."""
    from simulator.crossbar import n_slices
    assert n_slices(wbits, cell_bits, mapping) == slices
    cfg = load_config("puma", [f"weight_bits={wbits}", f"xbar.cell_bits={cell_bits}",
                               f"xbar.mapping={mapping}"])
    assert cfg.slices == slices
    lo, hi = weight_range(wbits, mapping)
    lv = encode_levels(np.array([[lo, hi, 0]]), wbits, cell_bits, mapping)
    assert lv.shape[0] == cfg.arrays * slices
    if mapping == "differential":
        assert lo == -hi
        with pytest.raises(ValueError, match=rf"differential {wbits}-bit range \[{lo}, {hi}\]"):
            encode_levels(np.array([[lo - 1]]), wbits, cell_bits, mapping)


@pytest.mark.parametrize("bits,mapping,dac", list(itertools.product(
    (8, 16), ("differential", "offset"), (1, 3))))
def test_bit_serial_path_with_ideal_adc_equals_matmul(bits, mapping, dac):
    # The simulator short-cuts provably lossless MVMs to x @ W; the bit-serial path it
    # replaces must give the same integers.
    from simulator.crossbar import MVMUModel
    x, w = _operands(bits, seed=dac)
    levels = encode_levels(w, bits, 2, mapping)
    for adc_bits in (None, lossless_adc_bits(levels, dac)):
        m = MVMUModel(levels, weight_bits=bits, input_bits=bits, cell_bits=2, dac_bits=dac,
                      mapping=mapping, adc_bits=adc_bits, adc_mode="clip",
                      exact_shortcut=False)
        assert not m.lossless
        np.testing.assert_array_equal(m.mvm(x), x @ w)
