import numpy as np
import pytest

from simulator import load_config, simulate
from simulator import examples as ex
from simulator.noise import conductances


def _run(overrides, x, w):
    cfg = load_config("small", ["adc.bits=none"] + overrides)
    return simulate(ex.single_mvm(cfg, w), {"x": x}).outputs["y:int"]


@pytest.fixture
def operands():
    cfg = load_config("small")
    return (np.random.default_rng(0).integers(-128, 128, (8, 16)),
            ex.random_weights(cfg, 16, 16, seed=1))


def test_off_by_default_and_exact(operands):
    x, w = operands
    np.testing.assert_array_equal(_run([], x, w), x @ w)


@pytest.mark.parametrize("knob", ["noise.program_sigma=0.1", "noise.read_sigma=0.05",
                                  "noise.stuck_off=0.1", "noise.stuck_on=0.1",
                                  "noise.program_dist=lognormal"])
def test_each_effect_perturbs_and_is_seeded(operands, knob):
    x, w = operands
    extra = [] if "dist" not in knob else ["noise.program_sigma=0.1"]
    a = _run([knob, "noise.seed=1"] + extra, x, w)
    b = _run([knob, "noise.seed=1"] + extra, x, w)
    c = _run([knob, "noise.seed=2"] + extra, x, w)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x @ w)
    assert not np.array_equal(a, c)


def test_noise_past_any_integer_word_is_an_error_not_garbage(operands):
    """Lognormal variation of 300 gave inf conductances and every output INT64_MIN; its
    sigma is now at most 10, and an ideal ADC (which never saturates) fed sums past int64
    stops with a message instead of wrapping."""
    from simulator.errors import ConfigError, SimulationError
    x, w = operands
    with pytest.raises(ConfigError, match=r"must be <= 10.0 with program_dist lognormal"):
        load_config("small", ["noise.program_dist=lognormal", "noise.program_sigma=300"])
    load_config("small", ["noise.program_sigma=300"])      # normal: no overflow
    with pytest.raises(SimulationError, match="past what int64 holds"):
        _run(["noise.read_sigma=1e30"], x, w)
    from simulator.crossbar import MVMUModel, encode_levels
    levels = encode_levels(w, 8, 2, "differential")
    g = levels.astype(np.float64)
    g[0, 0, 0] = 1e30                                   # one cell far past any level
    kw = dict(conductance=g, weight_bits=8, input_bits=8, cell_bits=2, dac_bits=1,
              mapping="differential")
    with pytest.raises(SimulationError, match="past what int64 holds"):
        MVMUModel(levels, adc_bits=None, adc_mode="clip", **kw).mvm(x)
    y = MVMUModel(levels, adc_bits=8, adc_mode="scale", **kw).mvm(x)
    assert np.abs(y).max() < 1 << 40                    # an 8-bit ADC saturates


def test_error_grows_with_variation(operands):
    x, w = operands
    exact = x @ w
    errs = [np.abs(_run([f"noise.program_sigma={s}"], x, w) - exact).mean()
            for s in (0.01, 0.05, 0.2)]
    assert errs[0] < errs[1] < errs[2]


def test_streams_are_independent():
    # Turning stuck-at faults on must not change the variation draws of untouched cells.
    cfg_v = load_config("small", ["noise.program_sigma=0.1"])
    cfg_vs = load_config("small", ["noise.program_sigma=0.1", "noise.stuck_off=0.05"])
    levels = np.full((8, 16, 16), 2, np.uint8)
    g_v, g_vs = conductances(levels, cfg_v, 0), conductances(levels, cfg_vs, 0)
    same = g_vs != 0
    np.testing.assert_allclose(g_v[same], g_vs[same])
    assert (~same).any()


def test_stuck_sets_are_nested_in_their_own_rate():
    # Turning stuck-off cells on (or raising them) must leave the stuck-on set alone, and the
    # reverse: each fault map grows only with its own rate.
    levels = np.zeros((2, 64, 64), np.uint8)          # small: 2-bit cells, top level 3

    def stuck(on, off):
        g = conductances(levels + 1, load_config(
            "small", [f"noise.stuck_on={on}", f"noise.stuck_off={off}"]), (1, 0))
        return g == 3, g == 0

    on_alone, _ = stuck(0.02, 0.0)
    on_with_off, off_with_on = stuck(0.02, 0.02)
    _, off_alone = stuck(0.0, 0.02)
    assert on_alone.sum() > 0 and off_alone.sum() > 0
    np.testing.assert_array_equal(on_alone, on_with_off)
    np.testing.assert_array_equal(off_alone, off_with_on)
    more_on, _ = stuck(0.05, 0.02)
    assert (more_on >= on_alone).all() and more_on.sum() > on_alone.sum()
    full_on, full_off = stuck(0.5, 0.5)               # rates summing to 1 cover every cell
    assert (full_on ^ full_off).all()


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_finite_on_off_ratio(mapping):
    # Level l conducts l*(1 - 1/R) + top/R (G_off = top/R). The ADC rounds the analog
    # column sums, so a deviation below half a level is absorbed and a large R is exact;
    # the error grows as R falls.
    base = ["weight_bits=8", "input_bits=8", "adc.bits=none", f"xbar.mapping={mapping}"]
    cfg = load_config("puma", base)
    x = np.random.default_rng(0).integers(-128, 128, (8, 128))
    w = ex.random_weights(cfg, 128, 128, seed=1)
    prog = ex.single_mvm(cfg, w)

    def err(r):
        c = load_config("puma", base + [f"noise.on_off_ratio={r}"])
        y = simulate(ex.single_mvm(c, w), {"x": x}).outputs["y:int"]
        return _rel(y, (x @ w).astype(np.float64))

    assert err(1e7) == 0.0
    assert 0.0 < err(30) < err(10)
    c0, c1 = (load_config("puma", base + ["noise.on_off_ratio=10", f"noise.seed={k}"])
              for k in (0, 1))
    assert (simulate(ex.single_mvm(c0, w), {"x": x}).outputs["y:int"]   # no randomness
            == simulate(ex.single_mvm(c1, w), {"x": x}).outputs["y:int"]).all()
    np.testing.assert_array_equal(simulate(prog, {"x": x}).outputs["y:int"], x @ w)
    levels = np.arange(4, dtype=np.uint8).reshape(1, 1, 4)          # 2-bit cells, top 3
    g = conductances(levels, load_config("small", ["noise.on_off_ratio=4"]), 0)
    np.testing.assert_allclose(g.ravel(), [0.75, 1.5, 2.25, 3.0])   # G_off = G_on / 4


@pytest.mark.parametrize("adc", ["adc.bits=16", "adc.bits=8"])
def test_scale_adc_spans_g_off_so_differential_pairs_cancel(adc):
    """With a finite on/off ratio every cell conducts at least G_off, also in an array whose
    levels are all 0. A scale-mode ADC's span is set for those nominal currents, so the
    negative array of an all-positive column reads its offset too and the pair cancels it:
    the same integers as an ideal ADC (to the LSBs an 8-bit span drops), and +w gives -(-w)."""
    R = 16
    w = np.zeros((R, 4), np.int64)
    w[:, 0], w[:, 1] = 5, -5                             # one array of each pair all 0
    w[:, 2] = np.where(np.arange(R) % 2, 5, -5)
    x = np.full((1, R), 3, np.int64)
    base = ["weight_bits=8", "input_bits=8", "xbar.rows=16", "xbar.cols=4",
            "xbar.cell_bits=2", "noise.on_off_ratio=10", "adc.mode=scale"]
    ideal = simulate(ex.single_mvm(load_config("small", base + ["adc.bits=none"]), w),
                     {"x": x}).outputs["y:int"]
    got = simulate(ex.single_mvm(load_config("small", base + [adc]), w),
                   {"x": x}).outputs["y:int"]
    assert got[0, 0] == -got[0, 1] > 0 and got[0, 3] == 0
    tol = 0 if adc == "adc.bits=16" else 0.05 * abs(ideal[0, 0])
    np.testing.assert_allclose(got, ideal, atol=tol)
    assert abs(ideal[0, 0] - 0.9 * 15 * R / 16 * 16) < 0.1 * 240   # the gain 1 - 1/R only


def test_huge_normal_sigma_leaves_empty_cells_empty():
    # 1 + sigma*z overflows to inf at sigma ~1e308; a level-0 cell must stay 0, not NaN
    # (NaN made the simulator blame int64 for what was a 0 * inf).
    levels = np.zeros((1, 8, 8), np.uint8)
    levels[0, 0, 0] = 1
    with np.errstate(over="ignore"):
        g = conductances(levels, load_config("small", ["noise.program_sigma=1e308"]), 0)
    assert not np.isnan(g).any() and (g[levels == 0] == 0).all()
