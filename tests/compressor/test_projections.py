"""Projections: feasible, idempotent, and nearest (brute force on tiny cases).

The feasibility checker and the brute-force searches below are written independently of
the implementation (plain loops over entries), so they test the definitions, not the code.
"""
import itertools
import math
import zlib

import numpy as np
import pytest

from compressor import projections as P
from compressor.errors import CompressionError
from compressor.geometry import CrossbarGeometry, level_range, to_crossbar

SHAPES = [(3, 5), (7, 4), (6, 2, 3, 3), (10, 4, 1, 1)]
XBARS = [(1, 1), (2, 3), (4, 4), (5, 2), (128, 128)]
PER_SEG = ("tinyadc", "tinyadc_signed")
AMOUNTS = {s: (2 if s in PER_SEG else 0.4) for s in P.STRUCTURES}


def group_of(structure, i, j, g):
    """Group id of crossbar-matrix entry (i, j); for tinyadc, its column segment: the
    column within one read (``g.active_rows`` rows of a crossbar, all of them by default)."""
    rb, cb = i // g.rows, j // g.cols
    seg = (rb, (i % g.rows) // (g.active_rows or g.rows), j)
    return {"rows": (i, cb), "columns": (rb, j), "blocks": (rb, cb), "aligned_rows": rb,
            "aligned_cols": cb, "tinyadc": seg, "tinyadc_signed": seg}[structure]


def feasible(m, g, structure, amount):
    k_rows, n_cols = m.shape
    groups = {group_of(structure, i, j, g) for i in range(k_rows) for j in range(n_cols)}
    nz = [(i, j) for i in range(k_rows) for j in range(n_cols) if m[i, j] != 0]
    if structure in PER_SEG:   # signed: each sign (each differential array) counts apart
        counts = {}
        for i, j in nz:
            key = (group_of(structure, i, j, g),
                   m[i, j] > 0 if structure == "tinyadc_signed" else None)
            counts[key] = counts.get(key, 0) + 1
        return max(counts.values(), default=0) <= amount
    k = max(1, min(len(groups), math.floor(amount * len(groups) + 0.5)))
    return len({group_of(structure, i, j, g) for i, j in nz}) <= k


def on_levels(m, scale, bits, mapping="differential"):
    qmin, qmax = level_range(bits, mapping)
    q = m / scale
    return np.allclose(q, np.rint(q), atol=1e-4) and q.min() >= qmin - 1e-4 and q.max() <= qmax + 1e-4


def _stable_seed(*key):
    """A seed from a case's parameters that is the same in every process (``hash`` of a str
    is not: PYTHONHASHSEED)."""
    return zlib.crc32(repr(key).encode())


def dist(a, b):
    return float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


@pytest.mark.parametrize("shape,xbar,structure",
                         list(itertools.product(SHAPES, XBARS, P.STRUCTURES)))
def test_sparsity_feasible_idempotent_and_no_random_feasible_point_closer(shape, xbar, structure):
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = min(AMOUNTS[structure], g.rows) if structure in PER_SEG else AMOUNTS[structure]
    check_projection(shape, g, structure, amount, seed=_stable_seed(shape, xbar, structure))


def check_projection(shape, g, structure, amount, seed):
    """The projection of a random weight is feasible, idempotent, keeps what it keeps
    unchanged, and no random feasible point is closer. Returns (weight, projection)."""
    rng = np.random.default_rng(seed % 2**32)
    w = rng.normal(size=shape).astype(np.float32)
    p = P.project_structured(w, g, structure, amount)
    assert p.dtype == w.dtype and p.shape == w.shape
    assert feasible(to_crossbar(p), g, structure, amount)
    assert np.array_equal(P.project_structured(p, g, structure, amount), p)
    kept = p != 0
    assert np.array_equal(p[kept], w[kept]), "kept weights must be unchanged"
    # Any feasible point is at least as far: zeroing random entries of p keeps it feasible,
    # and random masks drawn from the structure's groups give other feasible supports.
    d = dist(p, w)
    for _ in range(20):
        other = P.project_structured(w * rng.random(shape), g, structure, amount)
        other_w = np.where(other != 0, w, 0)
        assert feasible(to_crossbar(other_w), g, structure, amount)
        assert dist(other_w, w) >= d - 1e-9
    return w, p


TINY = [((2, 4), (2, 2)), ((3, 4), (1, 2)), ((2, 2, 1, 3), (4, 1)), ((3, 3), (3, 3))]


@pytest.mark.parametrize("case,structure", list(itertools.product(TINY, P.STRUCTURES)))
def test_sparsity_is_nearest_by_brute_force_over_all_supports(case, structure):
    shape, xbar = case
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = 1 if structure in PER_SEG else 0.5
    w = np.random.default_rng(7).normal(size=shape)
    m = to_crossbar(w)
    best = min(dist(m * mask, m)
               for bits in itertools.product((0, 1), repeat=m.size)
               for mask in [np.array(bits).reshape(m.shape)]
               if feasible(m * mask, g, structure, amount))
    assert dist(P.project_structured(w, g, structure, amount), w) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("bits,mapping", list(itertools.product((2, 3, 4), ("differential", "offset"))))
def test_levels_fixed_scale_nearest_by_brute_force(bits, mapping):
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(2, 5)) * 2
    scale = 0.37
    p = P.project_levels(w, bits, mapping, scale=np.float32(scale).item())
    assert on_levels(p, np.float32(scale), bits, mapping)
    qmin, qmax = level_range(bits, mapping)
    lo = np.clip(np.floor(w / scale), qmin, qmax)
    hi = np.clip(np.ceil(w / scale), qmin, qmax)
    best = min(dist(np.where(np.array(c).reshape(w.shape), hi, lo) * np.float32(scale), w)
               for c in itertools.product((0, 1), repeat=w.size))
    assert dist(p, w) == pytest.approx(best, rel=1e-9)
    assert np.array_equal(P.project_levels(p, bits, mapping, scale=np.float32(scale).item()), p)


@pytest.mark.parametrize("bits,seed", list(itertools.product((2, 4, 8), range(4))))
def test_pow2_scale_is_exact_minimiser_over_powers_of_two(bits, seed):
    w = np.random.default_rng(seed).standard_t(3, size=200) * 10.0 ** (seed - 2)
    p = P.project_levels(w, bits, pow2=True)
    qmin, qmax = level_range(bits)
    s = P.best_scale(w, qmin, qmax, pow2=True)
    assert math.log2(s).is_integer() and on_levels(p, s, bits)
    best = min(dist(np.clip(np.rint(w / 2.0**k), qmin, qmax) * 2.0**k, w) for k in range(-60, 40))
    assert dist(p, w) == pytest.approx(best, rel=1e-12)
    assert np.array_equal(P.project_levels(p, bits, pow2=True), p)


@pytest.mark.parametrize("bits,mapping,seed",
                         list(itertools.product((2, 3, 8, 12), ("differential", "offset"), range(3))))
def test_free_scale_beats_naive_and_dense_grid_and_is_idempotent(bits, mapping, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(64, 30)).astype(np.float32)
    qmin, qmax = level_range(bits, mapping)
    p = P.project_levels(w, bits, mapping)
    s = P.best_scale(w.astype(np.float64), qmin, qmax)
    assert s == float(np.float32(s)) and on_levels(p, s, bits, mapping)
    naive = np.abs(w).max() / qmax
    assert dist(p, w) <= dist(P.project_levels(w, bits, mapping, scale=float(naive)), w) + 1e-9
    if bits <= 8:  # wider lattices: the landscape is rugged at 1e-4 relative steps of s
        grid = [dist(np.clip(np.rint(w / t), qmin, qmax) * t, w)
                for t in np.geomspace(naive / 8, naive * 2, 4000)]
        assert dist(p, w) <= min(grid) * 1.01
    assert np.array_equal(P.project_levels(p, bits, mapping), p)


def test_free_scale_recovers_lattice_of_any_scale():
    rng = np.random.default_rng(3)
    for bits, mapping in itertools.product((3, 5, 8), ("differential", "offset")):
        qmin, qmax = level_range(bits, mapping)
        q = rng.integers(qmin, qmax + 1, size=300)
        s = float(np.float32(rng.uniform(1e-3, 10)))
        w = q * s
        assert dist(P.project_levels(w, bits, mapping), w) == pytest.approx(0, abs=1e-20)



def test_free_scale_keeps_a_point_whose_levels_share_a_factor():
    # Levels that are all multiples of k also fit the lattice of s/k to within rounding;
    # the screen must not keep only that finest fit (it moved the point by ~1e-7).
    s = float(np.float32(0.266864150762558))
    w = np.array([37.0, 1.0, -5.0]) * s
    assert np.array_equal(P.project_levels(w, 10), w)
    rng = np.random.default_rng(8)
    for bits in (8, 10, 12):
        qmin, qmax = level_range(bits, "differential")
        for _ in range(40):
            m = int(rng.integers(2, min(qmax, 256) + 1))   # largest level (documented: 256)
            q = rng.integers(-m, m + 1, size=int(rng.integers(2, 40)))
            q[0] = m
            w = q * float(np.float32(rng.uniform(1e-3, 10)))
            assert np.array_equal(P.project_levels(w, bits), w), (bits, m)


@pytest.mark.parametrize("scale", [1e-50, 1e39])
def test_fixed_scale_outside_float32_is_refused(scale):
    # float32 (the stored scale) would make it 0 or inf, and the weights NaN
    with pytest.raises(CompressionError, match="float32"):
        P.project_levels(np.array([1.0, -2.0, 0.0]), 8, scale=scale)
    from compressor.constraints import Constraint, QuantSpec
    with pytest.raises(CompressionError, match="quant.scale.*float32"):
        Constraint(quant=QuantSpec(8, scale=scale)).check(CrossbarGeometry())

JOINT = [((2, 4), (2, 2)), ((2, 4), (1, 4)), ((4, 2), (2, 1)), ((2, 2, 1, 2), (2, 2))]


def nearest_by_brute_force(m, g, structure, amount, bits, scale):
    """Distance from crossbar matrix ``m`` to the nearest feasible point on the levels at
    ``scale`` (one, or one per column): every entry 0, rounded down or rounded up."""
    qmin, qmax = level_range(bits)
    lo = np.clip(np.floor(m / scale), qmin, qmax).ravel()
    hi = np.clip(np.ceil(m / scale), qmin, qmax).ravel()
    best = math.inf
    for choice in itertools.product((0, 1, 2), repeat=m.size):
        q = np.choose(np.array(choice), [np.zeros(m.size), lo, hi]).reshape(m.shape)
        if feasible(q, g, structure, amount):
            best = min(best, dist(q * scale, m))
    return best


@pytest.mark.parametrize("case,structure,bits",
                         list(itertools.product(JOINT, P.STRUCTURES, (2, 3))))
def test_joint_fixed_scale_is_nearest_by_brute_force_over_levels_and_supports(case, structure, bits):
    shape, xbar = case
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = 1 if structure in PER_SEG else 0.5
    scale = 0.5
    w = np.random.default_rng(bits).normal(size=shape)
    best = nearest_by_brute_force(to_crossbar(w), g, structure, amount, bits, scale)
    p = P.project_sparse_quantized(w, g, structure, amount, bits, scale=scale)
    assert feasible(to_crossbar(p), g, structure, amount) and on_levels(p, scale, bits)
    assert dist(p, w) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("shape,xbar,structure",
                         list(itertools.product(SHAPES[1:3], XBARS[1:4], P.STRUCTURES)))
def test_joint_free_scale_feasible_idempotent(shape, xbar, structure):
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = 2 if structure in PER_SEG else 0.4
    w = np.random.default_rng(1).normal(size=shape)
    for pow2 in (False, True):
        p = P.project_sparse_quantized(w, g, structure, amount, 4, pow2=pow2)
        assert feasible(to_crossbar(p), g, structure, amount)
        assert np.array_equal(P.project_sparse_quantized(p, g, structure, amount, 4, pow2=pow2), p)
        # No worse than pruning by magnitude first and quantizing the survivors.
        two_step = P.project_levels(P.project_structured(w, g, structure, amount), 4, pow2=pow2)
        if feasible(to_crossbar(two_step), g, structure, amount):
            assert dist(p, w) <= dist(two_step, w) + 1e-9


def test_joint_support_ranks_by_gain_not_magnitude():
    # Column segment 0 holds four 0.45s (norm² 0.81, all round to 0); segment 1 one 0.8.
    m = np.array([[0.45, 0.8], [0.45, 0], [0.45, 0], [0.45, 0]])
    g = CrossbarGeometry(rows=4, cols=1)
    assert np.array_equal(P.project_columns(m.T, g, 0.5).T[:, 0], m[:, 0])
    p = P.project_sparse_quantized(m.T, g, "columns", 0.5, bits=4, scale=1.0).T
    assert np.array_equal(p, [[0, 1], [0, 0], [0, 0], [0, 0]])


def test_torch_tensors_round_trip():
    torch = pytest.importorskip("torch")
    w = torch.randn(6, 3, 3, 3, dtype=torch.float32)
    p = P.project_blocks(w, CrossbarGeometry(rows=8, cols=2), 0.5)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float32
    assert np.array_equal(p.numpy(), P.project_blocks(w.numpy(), CrossbarGeometry(rows=8, cols=2), 0.5))


@pytest.mark.parametrize("call,match", [
    (lambda g: P.project_blocks(np.ones((2, 2)), g, 0.0), "keep=0.0"),
    (lambda g: P.project_blocks(np.ones((2, 2)), g, 1.5), "keep=1.5"),
    (lambda g: P.project_tinyadc(np.ones((2, 2)), g, 5), r"n=5: .* 1\.\.4 \(geometry\.rows, the crossbar rows\)"),
    (lambda g: P.project_levels(np.ones((2, 2)), 0), "bits=0"),
    (lambda g: P.project_levels(np.ones((2, 2)), 4, scale=-1.0), "scale=-1.0"),
    (lambda g: P.project_levels(np.ones((2, 2)), 4, scale=0.3, pow2=True), "power of two"),
    (lambda g: P.project_structured(np.ones((2, 2)), g, "diagonal", 0.5), "structure='diagonal'"),
])
def test_impossible_targets_raise(call, match):
    with pytest.raises(CompressionError, match=match):
        call(CrossbarGeometry(rows=4, cols=4))


def packed_feasible(m, g, n, signed=False):
    """Every crossbar the compiler packs from ``m`` holds <= n nonzeros per bit line (of each
    array, i.e. of each sign, if ``signed``) in each read: per column strip, the rows with a
    nonzero, in order, in runs of ``g.rows``, each read ``g.active_rows`` at a time (plain
    loops)."""
    k_rows, n_cols = m.shape
    kinds = [lambda v: v > 0, lambda v: v < 0] if signed else [lambda v: v != 0]
    read = g.active_rows or g.rows
    for c0 in range(0, n_cols, g.cols):
        cols = range(c0, min(c0 + g.cols, n_cols))
        rows = [i for i in range(k_rows) if any(m[i, j] != 0 for j in cols)]
        for r0 in range(0, len(rows), g.rows):
            xbar = rows[r0:r0 + g.rows]
            for q0 in range(0, len(xbar), read):
                for j in cols:
                    for kind in kinds:
                        if sum(bool(kind(m[i, j])) for i in xbar[q0:q0 + read]) > n:
                            return False
    return True


@pytest.mark.parametrize("shape,xbar,n,structure", list(itertools.product(
    [(3, 40), (12, 64), (5, 8, 3, 3), (2, 300)], [(4, 4), (8, 2), (16, 16), (128, 128)],
    [1, 3], P.PACKED)))
def test_tinyadc_packed_is_feasible_on_packed_crossbars_and_idempotent(shape, xbar, n,
                                                                       structure):
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    rng = np.random.default_rng(_stable_seed(shape, xbar, n))
    w = rng.normal(size=shape) * (rng.random(shape) < 0.7)   # some zeros: rows get packed
    p = P.project_structured(w, g, structure, n)
    assert packed_feasible(to_crossbar(p), g, n, signed=structure in P.SIGNED)
    assert np.array_equal(P.project_structured(p, g, structure, n), p)
    kept = p != 0
    assert np.array_equal(p[kept], w[kept])
    # The fixed-segment projection need not be feasible once packed; this one is never
    # denser than it needs to be per packed run (sanity: <= n per column per run).
    assert np.count_nonzero(p) <= np.count_nonzero(w)


def test_tinyadc_packed_joint_with_levels_is_feasible_after_rounding():
    g = CrossbarGeometry(rows=8, cols=4)
    w = np.random.default_rng(3).normal(size=(6, 50)) * 0.1
    p, scale, keep = P.project_matrix(to_crossbar(w), g, "tinyadc_packed", 2, (4, "differential",
                                                                             None, False))
    assert packed_feasible(p, g, 2) and on_levels(p, scale, 4)


@pytest.mark.parametrize("structure", ["tinyadc", "tinyadc_packed"])
def test_signed_tinyadc_holds_the_unsigned_set_and_is_no_farther(structure):
    """Counting each sign apart (each array of a differential crossbar) is a superset of
    counting both: every unsigned-feasible point is signed-feasible, so the (exact) signed
    projection is at least as near, and it keeps up to twice the nonzeros."""
    g = CrossbarGeometry(rows=16, cols=8)
    w = np.random.default_rng(11).normal(size=(20, 70))
    plain = P.project_structured(w, g, structure, 3)
    signed = P.project_structured(w, g, structure + "_signed", 3)
    if structure == "tinyadc":
        assert feasible(to_crossbar(plain), g, "tinyadc_signed", 3)
        assert feasible(to_crossbar(signed), g, "tinyadc_signed", 3)
        assert dist(signed, w) < dist(plain, w)
        assert np.count_nonzero(plain) < np.count_nonzero(signed) <= 2 * np.count_nonzero(plain)
    else:   # packed: feasible, not nearest (module doc); the superset still holds, and the
        # fewer rows a strip keeps the more they pack, so the signed one keeps > 2x here
        assert packed_feasible(to_crossbar(plain), g, 3, signed=True)
        assert packed_feasible(to_crossbar(signed), g, 3, signed=True)
        assert np.count_nonzero(signed) > 2 * np.count_nonzero(plain)
    kept = signed != 0
    assert np.array_equal(signed[kept], w[kept])


@pytest.mark.parametrize("structure", ["tinyadc_signed", "tinyadc", "tinyadc_packed"])
def test_column_count_structures_need_a_differential_geometry(structure):
    # Under offset mapping a pruned weight still conducts (the offset level), so a count of
    # nonzeros bounds nothing the ADC sees.
    from compressor.constraints import Constraint
    c = Constraint(structure, 4)
    c.check(CrossbarGeometry(rows=8, cols=8))
    with pytest.raises(CompressionError, match=f"{structure}.*'offset'"):
        c.check(CrossbarGeometry(rows=8, cols=8, mapping="offset"))


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_free_scale_projection_is_idempotent_at_high_bits(bits):
    """Above 256 levels a side the lattice a point lies on is found from its ratios."""
    rng = np.random.default_rng(bits)
    for _ in range(200):
        x = rng.standard_normal((1, int(rng.integers(2, 9))))
        p = P.project_levels(x, bits)
        assert np.array_equal(P.project_levels(p, bits), p)
    f = float(np.float32(0.0123))
    for levels in ([429, -300, 17, 5], [500] + [250] * 8 + [1],   # largest level 429, 500
                   [480, 400, 400, 320, 320, -400, -320, 240, 160, 7, 3]):
        q = np.array([levels]) * f
        assert np.array_equal(P.project_levels(q, 10), q), levels


@pytest.mark.parametrize("w, kwargs, match", [
    (np.array([[1.0, np.nan]]), {}, "1 NaN and 0 infinite values"),
    (np.array([[1.0, np.inf]]), {"pow2": True}, "0 NaN and 1 infinite values"),
    (np.array([[1.0, 2.0]]), {"bits": 1}, "bits=1 differential: the only level is 0"),
    (np.array([[1.0, 2.0]], np.float16), {}, "dtype float16: a projection needs float32"),
    # a float64 weight no float32 holds: its level and scale could not be stored
    (np.array([[1.0, -1e39]]), {}, r"1 values beyond float32's range \(\|w\| > 3.403e\+38\)"),
    (np.array([[1.0, 4e38]]), {"per_channel": True}, "1 values beyond float32's range"),
])
def test_bad_weights_are_refused_in_one_line(w, kwargs, match):
    with pytest.raises(CompressionError, match=match):
        P.project_levels(w, **{"bits": 4, **kwargs})


def test_pow2_search_spans_the_side_that_does_not_clip():
    """Offset 1-bit levels are {-1, 0}: only the negative weight can be kept, at 2**-10."""
    assert P.best_scale(np.array([1000.0, -0.001]), -1, 0, pow2=True) == 2.0 ** -10
    tiny = P.best_scale(np.full(5, 1e-44), -7, 7, pow2=True)
    assert P.float32_positive(tiny)          # a stored (float32) scale, not 0


def test_a_live_group_must_hold_a_weight_it_can_keep():
    """Rows read live inputs only through weights that round to 0 at the scale: ranking that
    group first would zero the layer; the groups holding weights are kept instead."""
    m = np.array([[.1, .1], [.1, .1], [3, 2], [1, 2]])
    live = np.array([True, True, False, False])
    g = CrossbarGeometry(rows=2, cols=2, weight_bits=4)
    out, _, keep = P.project_matrix(m, g, "aligned_rows", 0.5, (4, "differential", 1.0, False),
                                    live_rows=live)
    assert np.array_equal(out, np.array([[0, 0], [0, 0], [3, 2], [1, 2]]))


@pytest.mark.parametrize("pow2", [False, True])
def test_weights_below_float32s_range_project_to_zero(pow2):
    """A float64 tensor whose weights are all 0 as float32 (where levels are stored): scale
    1.0 and zeros, as for an all-zero one (it divided by a float32 zero, or found no power
    of two, before)."""
    w = np.array([[1e-50, -3e-51], [2e-52, 0.0]])
    p, s, _ = P.project_matrix(w, None, None, None, (4, "differential", None, pow2))
    assert s == 1.0 and not p.any()



# -- TinyADC per read (geometry.active_rows) ---------------------------------------------

READS = [(4, 4, 2), (5, 2, 3), (128, 128, 48), (3, 3, 1)]    # rows, cols, rows per read


@pytest.mark.parametrize("shape,xbar,structure", list(itertools.product(
    SHAPES + [(9, 20)], READS, PER_SEG)))
def test_tinyadc_per_read_is_feasible_idempotent_and_no_random_feasible_point_closer(
        shape, xbar, structure):
    """With ``active_rows`` a segment is one read's rows of a crossbar column (48 does not
    divide 128: the last read is shorter)."""
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1], active_rows=xbar[2])
    n = min(2, xbar[2])
    w, p = check_projection(shape, g, structure, n, seed=_stable_seed(shape, xbar, structure))
    if shape == (9, 20) and xbar[2] < min(xbar[0], 20):  # a column spans several reads
        whole = P.project_structured(w, CrossbarGeometry(rows=xbar[0], cols=xbar[1]),
                                     structure, n)
        assert np.count_nonzero(p) > np.count_nonzero(whole)


@pytest.mark.parametrize("structure", PER_SEG)
def test_tinyadc_per_read_is_nearest_by_brute_force(structure):
    g = CrossbarGeometry(rows=4, cols=2, active_rows=2)
    w = np.random.default_rng(11).normal(size=(2, 4))     # crossbar matrix 4 x 2
    m = to_crossbar(w)
    best = min(dist(m * mask, m)
               for bits in itertools.product((0, 1), repeat=m.size)
               for mask in [np.array(bits).reshape(m.shape)]
               if feasible(m * mask, g, structure, 1))
    assert dist(P.project_structured(w, g, structure, 1), w) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("structure", P.PACKED)
def test_tinyadc_packed_per_read_holds_on_every_packed_read(structure):
    g = CrossbarGeometry(rows=16, cols=16, active_rows=6)
    rng = np.random.default_rng(4)
    w = rng.normal(size=(20, 70)) * (rng.random((20, 70)) < 0.7)
    p = P.project_structured(w, g, structure, 2)
    assert packed_feasible(to_crossbar(p), g, 2, signed=structure in P.SIGNED)
    assert np.array_equal(P.project_structured(p, g, structure, 2), p)
    # reads of 6 rows keep more weights per column than whole 16-row crossbars at the same n
    whole = CrossbarGeometry(rows=16, cols=16)
    assert np.count_nonzero(p) > np.count_nonzero(P.project_structured(w, whole, structure, 2))


def test_one_read_of_every_row_is_the_geometry_without_reads():
    """``active_rows`` equal to the rows changes nothing, so it is stored as absent: the same
    geometry, the same recipe fingerprint (checkpoint names)."""
    whole = CrossbarGeometry(rows=8, cols=8)
    assert CrossbarGeometry(rows=8, cols=8, active_rows=8) == whole
    assert CrossbarGeometry.from_dict({"rows": 8, "cols": 8, "active_rows": 8}).to_dict() == \
        whole.to_dict()
    assert CrossbarGeometry(rows=8, cols=8, active_rows=4).active_rows == 4


def test_tinyadc_n_is_bounded_by_the_rows_one_read_drives():
    g = CrossbarGeometry(rows=8, cols=8, active_rows=4)
    with pytest.raises(CompressionError, match=r"n=5: .* 1\.\.4 \(geometry\.active_rows"):
        P.project_structured(np.ones((8, 8)), g, "tinyadc", 5)
    with pytest.raises(CompressionError, match=r"geometry.active_rows=9: must be an integer "
                                               r"in 1..rows=8"):
        CrossbarGeometry(rows=8, cols=8, active_rows=9)


def test_pow2_scale_is_exact_far_below_the_no_clipping_scale():
    """Ternary levels, 1.1 M weights of ±1 and one of 1024: clipping the outlier (scale 1,
    ten octaves below the no-clipping 1024) beats rounding every other weight to 0. The
    search stopped 8 octaves down; the clipping bound now tells how far to go."""
    from compressor.projections import best_scale, column_scales
    x = np.where(np.arange(1_100_001) % 2, 1.0, -1.0)
    x[0] = 1024.0
    brute = {k: float(((x - np.clip(np.rint(x / 2.0 ** k), -1, 1) * 2.0 ** k) ** 2).sum())
             for k in range(-4, 12)}
    assert min(brute, key=brute.get) == 0
    assert best_scale(x, -1, 1, pow2=True) == 1.0
    m = np.stack([x, x / 8], axis=1)                     # per column: 1 and 1/8
    np.testing.assert_array_equal(column_scales(m, -1, 1, pow2=True)[0], [1.0, 0.125])


def _dense_min(x, qmin, qmax, n=200_001):
    """The least distance over a dense float32 grid of scales (an independent reference)."""
    qm = max(-qmin, qmax)
    a = float(np.abs(x).max())
    grid = np.float32(np.geomspace(a / (4 * qm + 4), 4 * a, n)).astype(np.float64)
    return float(P._distances(np.asarray(x, np.float64), grid, qmin, qmax).min())


def test_exact_free_scale_is_never_farther_than_a_dense_scan():
    """The search can miss (levels [5, 7] at 0.161 for x = [0.771, 1.150] at 4 bits, 120x
    farther than [4, 6] at 0.192); exact_scale sweeps every breakpoint of the distance."""
    x = np.array([0.7712193621153433, 1.150088000505753])
    s = P.exact_scale(x, -7, 7)
    assert P._distances(x, np.array([s]), -7, 7)[0] < 1.5e-5
    assert P._distances(x, np.array([P.best_scale(x, -7, 7)]), -7, 7)[0] > 1e-3
    rng = np.random.default_rng(7)
    for t in range(120):
        bits = int(rng.integers(2, 6))
        qmin, qmax = level_range(bits, "offset" if t % 2 else "differential")
        x = rng.standard_normal(int(rng.integers(1, 6))) * rng.uniform(0.01, 10)
        d = P._distances(x, np.array([P.exact_scale(x, qmin, qmax)]), qmin, qmax)[0]
        assert d <= _dense_min(x, qmin, qmax) * (1 + 1e-9), (x, qmin, qmax)


@pytest.mark.parametrize("qmin,qmax", [(-1, 0), (-2, 1), (-4, 3)])
def test_exact_scale_with_no_level_on_one_side_is_quiet_and_exact(qmin, qmax):
    """1-bit offset levels {-1, 0}: a positive weight cannot move off 0. The search window's
    lower end then halved down to 0 and was divided by (a RuntimeWarning per layer), e.g.
    for [-0.785, 0.749, 1.635, 0.273]; with no weight able to move, any scale will do."""
    import warnings
    rng = np.random.default_rng(11)
    cases = [np.array([-0.7847803553442784, 0.7487457707345911, 1.6347830429585775,
                       0.27276877584472176])]
    cases += [s * np.abs(rng.standard_normal(n)) for s in (1, -1) for n in (1, 3, 7)]
    cases += [rng.standard_normal(n) for n in (2, 4, 6)]
    for x in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s = P.exact_scale(x, qmin, qmax)
        d = P._distances(x, np.array([s]), qmin, qmax)[0]
        assert d <= _dense_min(x, qmin, qmax) * (1 + 1e-9), (x, qmin, qmax)


def test_exact_scale_past_its_breakpoint_budget_sweeps_in_parts(monkeypatch):
    """Past 2**25 breakpoints (a trained 1M-weight layer at 8 bits has ~90M) it was refused,
    after pretraining; the window is now swept in parts, to the same scale."""
    rng = np.random.default_rng(4)
    for trial in range(20):
        x = rng.standard_normal(300) * rng.uniform(0.01, 10)
        qmin, qmax = (-127, 127) if trial % 2 else (-7, 7)
        whole = P.exact_scale(x, qmin, qmax)
        monkeypatch.setattr(P, "EXACT_SCALE_MAX_EVENTS", 50)
        parts = P.exact_scale(x, qmin, qmax)
        monkeypatch.undo()
        assert parts == whole
    # weights whose breakpoints sit exactly on a split point (odd half-multiples of 2**m):
    # rint(a / hi) put them one level up there, and a part's distances went negative
    for _ in range(40):
        x = rng.standard_normal(60) * 2
        m, k = rng.integers(-3, 3, 30), 2 * rng.integers(0, 4, 30) + 1
        x[:30] = np.sign(x[:30]) * (k + 0.5) * 2.0 ** m
        whole = P.exact_scale(x, -8, 7, start=1.0)
        monkeypatch.setattr(P, "EXACT_SCALE_MAX_EVENTS", int(rng.integers(60, 180)))
        parts = P.exact_scale(x, -8, 7, start=1.0)
        monkeypatch.undo()
        d = P._distances(x, np.array([whole, parts]), -8, 7)
        assert d[1] <= d[0] * (1 + 1e-12)
    monkeypatch.setattr(P, "EXACT_SCALE_MAX_EVENTS", 50)
    with pytest.raises(CompressionError, match="too many equal weights"):
        P.exact_scale(np.full(200, 0.3), -127, 127, start=0.5)   # 200 breakpoints at each scale


def test_exact_scale_through_projections_and_recipes():
    """``exact_scale`` reaches every free-scale path (single, per channel, with a
    structure), never lands farther than the search, keeps old fingerprints when off, and
    is refused where no free scale is searched."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 40)) * np.linspace(0.2, 3, 6)[:, None]
    geom = CrossbarGeometry(rows=8, cols=4, weight_bits=4)
    for kw in ({}, {"per_channel": True}):
        plain = P.project_levels(w, 4, **kw)
        exact = P.project_levels(w, 4, exact_scale=True, **kw)
        assert np.sum((exact - w) ** 2) <= np.sum((plain - w) ** 2) + 1e-12
    for per_channel in (False, True):
        plain = P.project_sparse_quantized(w, geom, "blocks", 0.5, 4, per_channel=per_channel)
        exact = P._apply(w, geom, "blocks", 0.5, (4, "differential", None, False, per_channel,
                                                  True))
        assert np.sum((exact - w) ** 2) <= np.sum((plain - w) ** 2) + 1e-12
    from compressor import parse_recipe
    base = {"name": "t", "geometry": {"rows": 8, "cols": 4, "weight_bits": 4},
            "layers": [{"match": "*", "quant": {"bits": 4}}]}
    on = {**base, "layers": [{"match": "*", "quant": {"bits": 4, "exact_scale": True}}]}
    assert parse_recipe(on).fingerprint() != parse_recipe(base).fingerprint()
    assert "exact_scale" not in str(parse_recipe(base).to_dict())
    assert parse_recipe(parse_recipe(on).to_dict()) == parse_recipe(on)
    for bad in ({"pow2": True}, {"scale": 0.5}):
        with pytest.raises(CompressionError, match="exact_scale: applies to a searched"):
            parse_recipe({**base, "layers": [{"match": "*", "quant": {
                "bits": 4, "exact_scale": True, **bad}}]})


@pytest.mark.parametrize("bits,m,step", [(10, 300, 100), (12, 2000, 1000)])
def test_a_wide_lattice_whose_small_levels_the_sample_misses_is_recovered(bits, m, step):
    """Levels mostly multiples of ``step`` plus 50 small ones off the 256-entry sample: the
    sample's denominators missed ``m``, and the projection moved the point (up to 0.019)."""
    rng = np.random.default_rng(0)
    n = 2000
    q = rng.choice(np.arange(-m, m + 1, step), size=n)
    q[0] = m
    sampled = set(np.linspace(0, n - 1, 256).astype(int).tolist())
    off = [i for i in range(n) if i not in sampled][:50]
    q[off] = rng.choice([1, -1, 7, 13], size=len(off))
    x = q * float(np.float32(0.0123))
    np.testing.assert_array_equal(P.project_levels(x, bits), x)
    cols = np.stack([x, x[::-1]], axis=1)
    np.testing.assert_array_equal(P.project_levels(cols.T, bits, per_channel=True), cols.T)


@pytest.mark.parametrize("structure, kept", [
    ("tinyadc", [False, False, True, True]),
    ("tinyadc_signed", [False, True, True, True]),    # 2 of each sign: .2, .002 and -.25
])
def test_joint_tinyadc_fills_its_mask_with_the_largest_weights_that_round_to_zero(structure,
                                                                                  kept):
    # column 1 rounds to level 0 everywhere at the layer's scale: any 2 of its entries are
    # as near, but masked retraining keeps the mask free; ranked by position it froze
    # rows 2 and 3 (|w| 0.2, 0.25) at 0 and left rows 0 and 1 (|w| 0.001, 0.002) free
    from compressor import projections as P
    g = CrossbarGeometry(rows=4, cols=4)
    m = np.array([[3.0, 0.001], [2.0, 0.002], [1.0, 0.2], [0.5, -0.25]])
    out, s, keep = P.project_matrix(m, g, structure, 2, (3, "differential", None, False))
    assert keep[:, 1].tolist() == kept
    assert not out[:, 1].any()
    again = P.project_matrix(out, g, structure, 2, (3, "differential", None, False))
    np.testing.assert_array_equal(again[0], out)


def test_a_number_for_a_weight_is_refused_and_numpy_fractions_are_read_as_numbers():
    with pytest.raises(CompressionError, match="0-d weight"):
        P.project_levels(np.float32(0.3), 4)
    g = CrossbarGeometry(rows=4, cols=4)
    w = np.arange(32, dtype=np.float64).reshape(8, 4)
    np.testing.assert_array_equal(P.project_matrix(w, g, "rows", np.float32(0.5), None)[0],
                                  P.project_matrix(w, g, "rows", 0.5, None)[0])
    with pytest.raises(CompressionError, match="fraction"):
        P.keep_count(True, 4)
