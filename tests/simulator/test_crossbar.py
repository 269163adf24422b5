"""Bit-exactness of one MVM against numpy, and the ADC's clip/scale behaviour against an
independent, deliberately naive model."""
import itertools

import numpy as np
import pytest

from simulator import load_config, simulate
from simulator import examples as ex
from simulator.crossbar import decode_levels, encode_levels, lossless_adc_bits, weight_range


def naive_mvm(x, w, *, weight_bits, input_bits, cell_bits, dac_bits, mapping, adc_bits, mode,
              active_rows=None):
    """Independent reference: explicit loops over arrays, slices, input steps, reads of
    ``active_rows`` rows (default all) and columns."""
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
            level_all = (mag // (2 ** (k * cell_bits))) % (2 ** cell_bits)
            n = active_rows or len(level_all)
            for r0 in range(0, len(level_all), n):
                level = level_all[r0:r0 + n]
                colmax = (2 ** dac_bits - 1) * level.sum(0)
                for shift, width, weight in steps:
                    digit = (u[:, r0:r0 + n] // (2 ** shift)) % (2 ** width)
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


def _machine(bits, mapping="differential", dac=1, adc="none", mode="clip", rows=128,
             active="none"):
    return load_config("puma", [f"weight_bits={bits}", f"input_bits={bits}",
                                f"xbar.mapping={mapping}", f"dac.bits={dac}",
                                f"adc.bits={adc}", f"adc.mode={mode}",
                                f"xbar.rows={rows}", f"xbar.cols={rows}",
                                f"xbar.active_rows={active}"])


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


@pytest.mark.parametrize("mapping,cell_bits,wbits", [
    (m, c, w) for m, c, w in itertools.product(("differential", "offset"), range(1, 9),
                                              (4, 8, 16)) if c <= w])
def test_levels_round_trip(mapping, cell_bits, wbits):
    """Every cell width the config accepts (1..8) round-trips: levels are one byte each."""
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


# -- partial parallel read (xbar.active_rows) ------------------------------------------

@pytest.mark.parametrize("bits,mapping,adc_bits,mode,active", list(itertools.product(
    (8, 16), ("differential", "offset"), (4, 6), ("clip", "scale"), (16, 48))))
def test_partial_reads_match_independent_model(bits, mapping, adc_bits, mode, active):
    """Each read of ``active`` rows is converted on its own and the reads are added after
    the ADC; 48 does not divide 128, so the last read is shorter."""
    x, w = _operands(bits, seed=adc_bits + active)
    cfg = _machine(bits, mapping, 1, adc_bits, mode, active=active)
    got = simulate(ex.single_mvm(cfg, w), {"x": x}).outputs["y:int"]
    want = naive_mvm(x, w, weight_bits=bits, input_bits=bits, cell_bits=2, dac_bits=1,
                     mapping=mapping, adc_bits=adc_bits, mode=mode, active_rows=active)
    np.testing.assert_array_equal(got, want)
    whole = naive_mvm(x, w, weight_bits=bits, input_bits=bits, cell_bits=2, dac_bits=1,
                      mapping=mapping, adc_bits=adc_bits, mode=mode)
    assert not np.array_equal(want, whole), "reading fewer rows should change what clips"


@pytest.mark.parametrize("active,need", [(None, 9), (64, 8), (32, 7), (16, 6), (1, 2)])
def test_fewer_active_rows_need_fewer_lossless_bits(active, need):
    """Every cell at level 3 (2-bit cells), 1-bit DAC: a read of r rows sums to 3r, so
    ceil(log2(3r + 1)) bits; the config's worst case says the same."""
    from simulator.costs import worst_case_adc_bits
    levels = np.full((2, 128, 8), 3, np.uint8)
    assert lossless_adc_bits(levels, 1, active) == need
    cfg = load_config("puma", ["xbar.mapping=differential",
                               f"xbar.active_rows={active or 'none'}"])
    assert worst_case_adc_bits(cfg) == need


@pytest.mark.parametrize("mapping,active", list(itertools.product(
    ("differential", "offset"), (16, 40))))
def test_partial_reads_at_their_lossless_bits_are_exact(mapping, active):
    """The bits lossless per read convert every read exactly (the bit-serial path, not the
    shortcut), while those bits are too few for a whole-array read of the same weights."""
    from simulator.crossbar import MVMUModel
    x, w = _operands(8, seed=active)
    levels = encode_levels(w, 8, 2, mapping)
    bits = lossless_adc_bits(levels, 1, active)
    assert bits < lossless_adc_bits(levels, 1)
    kw = dict(weight_bits=8, input_bits=8, cell_bits=2, dac_bits=1, mapping=mapping,
              adc_mode="clip")
    m = MVMUModel(levels, adc_bits=bits, active_rows=active, exact_shortcut=False, **kw)
    np.testing.assert_array_equal(m.mvm(x), x @ w)
    assert MVMUModel(levels, adc_bits=bits, active_rows=active, **kw).lossless
    whole = MVMUModel(levels, adc_bits=bits, exact_shortcut=False, **kw)
    assert not whole.lossless and not np.array_equal(whole.mvm(x), x @ w)


def test_partial_reads_on_the_analog_path_without_noise_are_the_digital_ones():
    """Conductances equal to the levels (no variation) take the analog path, read by read;
    its codes must be the digital path's."""
    from simulator.crossbar import MVMUModel
    x, w = _operands(8, seed=5)
    levels = encode_levels(w, 8, 2, "differential")
    kw = dict(weight_bits=8, input_bits=8, cell_bits=2, dac_bits=1, mapping="differential",
              adc_bits=5, adc_mode="clip", active_rows=32, exact_shortcut=False)
    analog = MVMUModel(levels, conductance=levels.astype(np.float64), **kw)
    assert analog.analog
    np.testing.assert_array_equal(analog.mvm(x), MVMUModel(levels, **kw).mvm(x))


def test_read_noise_is_drawn_per_read():
    """Output-referred read noise has std sigma * ||digits|| * top level per read; with reads
    of 32 of 64 rows each read draws with its own digits' norm, so the summed noise has the
    variance of one whole-array read (drawing each read with the whole input's norm would
    double it)."""
    from simulator.crossbar import MVMUModel
    rng = np.random.default_rng(3)
    w = rng.integers(-20, 21, (64, 8))
    levels = encode_levels(w, 6, 2, "differential")
    x = rng.integers(-32, 32, (4000, 64))
    kw = dict(weight_bits=6, input_bits=6, cell_bits=2, dac_bits=1, mapping="differential",
              adc_bits=None, adc_mode="clip", read_sigma=0.2)
    var = {}
    for active in (None, 32):
        m = MVMUModel(levels, active_rows=active, read_rng=np.random.default_rng(0), **kw)
        var[active] = float(np.var(m.mvm(x) - x @ w))
    assert 0.85 < var[32] / var[None] < 1.15, var


def test_scale_mode_adc_saturates_at_the_top_of_its_span():
    """Only an analog sum (noise, stuck cells) can pass a column's largest ideal sum; the
    ADC then saturates, as ``clip`` does, instead of passing any value through."""
    from simulator.crossbar import adc_convert
    v = np.array([[100.0, 300.0, 200.0, 7.0]])
    col_max = np.array([15, 255, 0, 255])
    got = adc_convert(v, 4, "scale", col_max)
    # 4 of need 4 bits: top 15; of 8 bits: 4 LSBs dropped, top 240; an all-zero column
    # spans at least what 4 bits hold at one level per code: top 15
    np.testing.assert_array_equal(got, [[15, 240, 15, 0]])
    np.testing.assert_array_equal(adc_convert(v, 4, "clip"), [[15, 15, 15, 7]])
    # past 2**63 too: it cast before it saturated, and the sum wrapped to a negative code
    huge = np.array([[1e30, 3e19, 1e300, 7.0]])
    np.testing.assert_array_equal(adc_convert(huge, 4, "scale", col_max), [[15, 240, 15, 0]])


def test_scale_mode_codes_stay_in_range_with_stuck_on_cells():
    from simulator.crossbar import MVMUModel, column_max_sums
    x, w = _operands(8, seed=2)
    w[:, :4] = 0                                         # columns with no weight at all
    levels = encode_levels(w, 8, 2, "differential")
    g = np.where(np.random.default_rng(0).random(levels.shape) < 0.3, 3.0, levels)
    m = MVMUModel(levels, conductance=g, weight_bits=8, input_bits=8, cell_bits=2,
                  dac_bits=1, mapping="differential", adc_bits=5, adc_mode="scale")
    codes = m.column_sums(x)
    from simulator.crossbar import adc_convert
    out = adc_convert(codes.reshape(codes.shape[0], codes.shape[1], -1), 5, "scale",
                      m.col_max)
    need = np.maximum(np.ceil(np.log2(column_max_sums(levels, 1).reshape(-1) + 1)), 5)
    top = (1 << need.astype(int)) - 1
    assert (codes.reshape(out.shape) > top).any()      # the stuck cells overflow the span
    assert (out <= top).all()
    # a column with no weight still converts at one level per code: its stuck cells show
    no_weight = out.reshape(*out.shape[:2], -1, m.cols)[..., :4]
    assert no_weight.min() > 0 and no_weight.max() == 31


def test_lossless_bits_count_the_widest_step_not_the_dac():
    """The sign bit takes a 1-bit step of its own, so with dac.bits = input_bits no step is
    wider than input_bits - 1 bits (``step_bits``): the lossless width is one bit less than
    the DAC's width would say, and an ADC that wide is exact on every input."""
    cfg = load_config("small", ["input_bits=4", "dac.bits=4", "weight_bits=4"])
    assert cfg.step_bits == 3
    w = np.full((8, 1), 7, np.int64)
    levels = encode_levels(w, 4, 2, "differential")
    bits = lossless_adc_bits(levels, cfg.step_bits)
    assert bits == lossless_adc_bits(levels, cfg.dac.bits) - 1
    from simulator.crossbar import MVMUModel
    x = np.repeat(np.arange(-8, 8)[:, None], 8, 1)          # every 4-bit input
    m = MVMUModel(levels, weight_bits=4, input_bits=4, cell_bits=2, dac_bits=4,
                  mapping="differential", adc_bits=bits, adc_mode="clip", exact_shortcut=False)
    np.testing.assert_array_equal(m.mvm(x), x @ w)
    assert m.lossless is False and MVMUModel(
        levels, weight_bits=4, input_bits=4, cell_bits=2, dac_bits=4, mapping="differential",
        adc_bits=bits, adc_mode="clip").lossless           # the shortcut is taken at that width


@pytest.mark.parametrize("shortcut", [True, False])
def test_inputs_outside_the_register_width_wrap_on_every_path(shortcut):
    """An input register holds input_bits: 200 in 8 bits is -56, whichever path computes."""
    from simulator.crossbar import MVMUModel
    w = np.array([[1], [2]], np.int64)
    m = MVMUModel(encode_levels(w, 4, 2, "differential"), weight_bits=4, input_bits=8,
                  cell_bits=2, dac_bits=1, mapping="differential", adc_bits=None,
                  adc_mode="clip", exact_shortcut=shortcut)
    np.testing.assert_array_equal(m.mvm(np.array([[200, 1]])), [[-56 + 2]])


@pytest.mark.parametrize("mode", ["clip", "scale"])
def test_adaptive_bits_hold_nominal_currents_with_a_finite_on_off_ratio(mode):
    """G_off makes the nominal column maximum fractional (five 3s and a 0 at ratio 10:
    15.3); the ADC input is rounded to a code first (15), so 4 bits are lossless in both
    modes. The scale ADC sized its span on 15.3 (5 bits) and dropped a bit: 12, not 13."""
    from simulator.crossbar import adaptive_adc_bits
    cfg = load_config("small", ["noise.on_off_ratio=10", f"adc.mode={mode}"])
    w = np.zeros((6, 1), np.int64)
    w[:5, 0] = 3
    bits = adaptive_adc_bits(ex.single_mvm(cfg, w).mvmu_levels[0][:, :6, :1], cfg)
    assert bits == 4
    x = np.ones((1, 6))
    got = simulate(ex.single_mvm(cfg, w, adc_bits=bits), {"x": x}).outputs["y:int"]
    ideal = simulate(ex.single_mvm(cfg, w, adc_bits=0), {"x": x}).outputs["y:int"]
    np.testing.assert_array_equal(got, ideal)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_the_shortcut_is_decided_on_the_levels_with_or_without_a_nominal_span(mapping):
    """A nominal span sizes the scale ADC only: whether the exact shortcut is taken depends
    on the levels either way, and its matrix decodes them."""
    from simulator.crossbar import MVMUModel
    w = np.random.default_rng(4).integers(-127, 128, (16, 6))
    levels = encode_levels(w, 8, 2, mapping)
    bits = lossless_adc_bits(levels, 1)
    kw = dict(weight_bits=8, input_bits=8, cell_bits=2, dac_bits=1, mapping=mapping,
              adc_mode="scale")
    for nominal in (None, levels * 4.0):
        m = MVMUModel(levels, adc_bits=bits, nominal=nominal, **kw)
        assert m.lossless
        np.testing.assert_array_equal(m.wmat, decode_levels(levels, 8, 2, mapping))
        assert not MVMUModel(levels, adc_bits=bits - 1, nominal=nominal, **kw).lossless
