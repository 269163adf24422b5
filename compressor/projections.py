"""Euclidean projections onto the crossbar constraint sets.

Each ``project_*`` function takes a weight in torch layout (numpy array or torch tensor; the
result has the same type, dtype and device) and returns the point of the constraint set
nearest to it in Euclidean (Frobenius) distance. All structure is stated on the crossbar
matrix of :mod:`compressor.geometry` (rows = inputs, columns = outputs, tiled by the
crossbar). Ties are broken towards the lower index, so every projection is deterministic.

Structured sparsity (``STRUCTURES``), each "keep the best groups":

``rows``          crossbar rows: one matrix row within one column-block (a word line of one
                  crossbar); keep the fraction ``keep`` of them with the largest L2 norm.
``columns``       column segments: one matrix column within one row-block (one ADC's bit
                  line); keep the fraction ``keep`` by L2 norm.
``blocks``        whole crossbars (``rows × cols`` tiles); keep the fraction ``keep`` by L2.
``aligned_rows``  crossbar-aligned (after Huai et al. 2023): whole row-blocks, i.e. strips of
                  ``rows`` inputs across every output. A pruned strip frees every crossbar in
                  it and its inputs need not be fetched; nothing is re-indexed, so no
                  data-alignment hardware is needed.
``aligned_cols``  crossbar-aligned: whole column-blocks (``cols`` outputs across all inputs).
``tinyadc``       TinyADC (Yuan et al., DATE 2021): at most ``n`` nonzeros in every column
                  segment, so the bit line sum needs ``ceil(log2(n·c·d + 1))`` ADC bits
                  (``c = 2**cell_bits - 1``, ``d = 2**dac_bits - 1``: a cell's top level and
                  a DAC step's top input) instead of ``ceil(log2(rows·c·d + 1))``. Keeps the
                  ``n`` largest ``|w|`` of each segment.
                  With ``geometry.active_rows`` (a chip that reads that many rows at once) a
                  segment is one read's rows of a crossbar column, and a column holds ``n``
                  per read. The segments are the fixed grid's: where the compiler drops a
                  strip's all-zero rows, a compiled crossbar (or read) can gather several
                  segments' nonzeros; ``tinyadc_packed`` holds the bound on what it builds.
``tinyadc_signed`` TinyADC per array of a differential crossbar: at most ``n`` positive and
                  at most ``n`` negative nonzeros per column segment. A differential MVMU
                  holds w = pos − neg on two arrays, each bit line of each array has its own
                  ADC conversion, so its sum only sees one sign: the same ADC bits as
                  ``tinyadc`` with the same ``n``, with up to ``2n`` weights per column.
                  Keeps the ``n`` largest of each sign (a weight never gains by changing sign).

Not a fixed set, so not an exact projection (``PACKED``, outside ``STRUCTURES``):

``tinyadc_packed`` TinyADC on the crossbars the compiler actually builds. ``compiler/``
                  drops, per column strip, the input rows that are all zero there and cuts the
                  remaining rows into crossbars, so after pruning a crossbar's rows are no
                  longer one fixed segment: with ``tinyadc`` a packed crossbar can gather
                  the kept rows of several segments and hold several times ``n`` nonzeros
                  per bit line (a 32-row strip of 8-row segments at n=1 that keeps 4 rows
                  packs them into one crossbar: 4 per bit line). This structure keeps the
                  ``n`` largest per column of each *packed* segment (each packed read with
                  ``geometry.active_rows``), re-packs, and repeats until nothing changes, so
                  every crossbar the compiler builds from the result has at most ``n``
                  nonzeros per bit line and read. Feasible and idempotent, not guaranteed
                  nearest.
``tinyadc_packed_signed`` the same on packed crossbars, ``n`` per sign (per array, as
                  ``tinyadc_signed``).

The group-sparsity sets are "at most k groups nonzero" with ``k = round(keep · groups)``
(at least 1), ``groups`` counting only groups that hold at least one real (unpadded) weight.
For them the nearest point keeps the k groups of largest squared norm unchanged and zeroes the
rest, which is what is returned; likewise per segment for ``tinyadc`` (and per segment and
sign for ``tinyadc_signed``).

Quantization: the set ``{s·q : q integer, qmin <= q <= qmax}`` with ``(qmin, qmax)`` from
:func:`compressor.geometry.level_range`. Given the scale ``s`` the projection is exact (round to
nearest, clip). Without a given scale, ``s`` is searched to minimise the distance (see
:func:`best_scale`): that search is not guaranteed globally optimal for a free real scale, but
it is exact over power-of-two scales (``pow2=True``) and it recovers the scale of a point that
already lies on a lattice (so projections are idempotent, up to float rounding: a float32
weight ``float32(q·s)`` is off the lattice by its rounding, and a re-projection may move it
by an ulp; for levels above 256 only some lattices are tried, :func:`best_scale`).
``exact_scale`` (a recipe's ``quant.exact_scale``) finds the free scale exactly instead
(:func:`exact_scale`: the nearest point of the whole set ``{s·q}`` over float32 scales, up to
float64 rounding; joined with a group structure it is one more candidate, exact there only
where magnitude pruning's support is the joint one, as for the ``tinyadc`` structures),
at seconds per million weights; off
by default, as the benchmark's runs were made with the search (it came within 4e-6 of the
exact distance on 4 M Gaussian weights at 3 bits).

Per-channel scales (``per_channel=True``): one scale per crossbar column (a layer's output
channel), ``{s_j·q}`` column by column, applied digitally after the column's ADC as the
per-tensor one is. Given the scales the projection is exact as above. Searched, each
column's scale comes from :func:`column_scales` (the same kinds of candidates as
:func:`best_scale`, every one judged on the whole column). Without a structure, or with the
per-segment ``tinyadc``/``tinyadc_signed`` sets (whose segments lie within one column), the
columns are independent and each gets its own best candidate. The group structures couple
the columns: there the search compares the whole-layer distance of each candidate rank, of
the per-column best and of the layer's own single-scale candidates, so it is never farther
than the single-scale projection.

Joint sparse + quantized (:func:`project_sparse_quantized`): nearest point of the intersection.
For a given scale it is exact: a kept weight goes to its nearest level, a pruned one to 0, so
keeping a group reduces the distance by ``gain = Σ w² − Σ (w − Q(w))²``; the groups (or, for
``tinyadc``, the entries of each segment) with the largest gains are kept. Note this support
can differ from the magnitude-ranked one (a weight that rounds to 0 gains nothing).
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numba
import numpy as np

from .errors import CompressionError
from .geometry import CrossbarGeometry, from_crossbar, level_range, to_crossbar

STRUCTURES = ("rows", "columns", "blocks", "aligned_rows", "aligned_cols", "tinyadc",
              "tinyadc_signed")
#: Structures whose set depends on the support (see the module doc): feasible, not nearest.
PACKED = ("tinyadc_packed", "tinyadc_packed_signed")
#: Every structure a recipe may name.
ALL_STRUCTURES = STRUCTURES + PACKED
#: Structures whose amount is ``n`` (nonzeros per bit line), not a keep fraction.
PER_SEGMENT = ("tinyadc", "tinyadc_signed") + PACKED
#: Structures that count each sign (each array of a differential crossbar) on its own.
SIGNED = ("tinyadc_signed", "tinyadc_packed_signed")

# Axes of the (row_blocks, rows, col_blocks, cols) block view summed into one group.
_GROUP_AXES = {
    "rows": (3,),
    "columns": (1,),
    "blocks": (1, 3),
    "aligned_rows": (1, 2, 3),
    "aligned_cols": (0, 1, 3),
}
_SEARCH_SAMPLE = 1 << 14  # entries the coarse scale search ranks on (plus the largest one)
_COLUMN_SAMPLE = 512      # the same per column, for per-channel scales


# ---------------------------------------------------------------------------- public API


def project_rows(w, geom: CrossbarGeometry, keep: float):
    """Keep the fraction ``keep`` (0, 1] of crossbar rows with the largest L2 norm."""
    return _apply(w, geom, "rows", keep, None)


def project_columns(w, geom: CrossbarGeometry, keep: float):
    """Keep the fraction ``keep`` (0, 1] of column segments with the largest L2 norm."""
    return _apply(w, geom, "columns", keep, None)


def project_blocks(w, geom: CrossbarGeometry, keep: float):
    """Keep the fraction ``keep`` (0, 1] of whole crossbar blocks with the largest L2 norm."""
    return _apply(w, geom, "blocks", keep, None)


def project_crossbar_aligned(w, geom: CrossbarGeometry, keep: float, axis: str = "rows"):
    """Keep the fraction ``keep`` of whole row-blocks (``axis='rows'``) or column-blocks
    (``axis='cols'``) with the largest L2 norm."""
    if axis not in ("rows", "cols"):
        raise CompressionError(f"axis={axis!r}: must be 'rows' or 'cols'")
    return _apply(w, geom, f"aligned_{axis}", keep, None)


def project_tinyadc(w, geom: CrossbarGeometry, n: int):
    """At most ``n`` nonzeros per column segment: keep the ``n`` largest ``|w|`` of each."""
    return _apply(w, geom, "tinyadc", n, None)


def project_structured(w, geom: CrossbarGeometry, structure: str, amount: float):
    """Any of ``STRUCTURES``; ``amount`` is ``keep`` (a fraction) or, for ``tinyadc``, ``n``."""
    return _apply(w, geom, structure, amount, None)


def project_levels(w, bits: int, mapping: str = "differential", scale=None,
                   pow2: bool = False, per_channel: bool = False, exact_scale: bool = False):
    """Nearest point of ``{s·q}``, ``q`` a ``bits``-bit level under ``mapping``, for a given
    ``scale`` or over powers of two; with a free searched scale, the point of the scale the
    search finds (not guaranteed nearest: module docstring).

    ``scale`` (weight units per level) is searched when None (:func:`best_scale`); with
    ``pow2`` the search is restricted to ``2**k`` (integer-only hardware: a shift, no
    multiplier). ``mapping='differential'`` is uniform symmetric quantization.
    ``per_channel``: one scale per output channel (``scale`` then one per channel, or one
    for all). ``exact_scale``: a searched free scale found exactly (:func:`exact_scale`).
    """
    return _apply(w, None, None, None, (bits, mapping, scale, pow2, per_channel,
                                        exact_scale))


def project_conductance(w, geom: CrossbarGeometry, scale=None, pow2: bool = False,
                        per_channel: bool = False):
    """Nearest point whose levels the geometry's cells can store (``geom.levels``), for a
    given ``scale`` or over powers of two (a free scale is searched: :func:`project_levels`)."""
    return project_levels(w, geom.weight_bits, geom.mapping, scale, pow2, per_channel)


def project_sparse_quantized(w, geom: CrossbarGeometry, structure: str, amount: float,
                             bits: int, mapping: str = "differential",
                             scale=None, pow2: bool = False, per_channel: bool = False):
    """Nearest point that is both ``structure``-sparse and on the ``bits``-bit level set
    (``per_channel``: a scale per output channel), for a given ``scale``; with a free scale,
    the best of a search (it was 2.9x the least squared distance on one 3×2 case a review
    found: module docstring), and with ``pow2`` the best of the four powers of two ranked on
    the support magnitude pruning keeps, each judged by the exact joint distance (a review
    found a 16×4 case where a power outside those four was 3 % closer; random and
    heavy-tailed weights matched brute force in ~3000 cases)."""
    return _apply(w, geom, structure, amount, (bits, mapping, scale, pow2, per_channel))


def project_matrix(m: np.ndarray, geom: CrossbarGeometry | None, structure: str | None,
                   amount, quant: tuple | None, live_rows: np.ndarray | None = None
                   ) -> tuple[np.ndarray, float | np.ndarray | None, np.ndarray]:
    """The workhorse on a float64 crossbar matrix ``m`` (``K × N``).

    ``quant`` is None or ``(bits, mapping, scale, pow2[, per_channel])``. Returns the
    projected matrix, the scale used (None without quantization; with ``per_channel`` a
    float64 array of ``N``, one per column) and the boolean mask of the entries the
    structure keeps (all True without one; a kept entry may still have rounded to level 0).
    Scales are float32-representable, so ``float32(q) * float32(scale)`` reproduces the
    result. ``live_rows`` (``K`` booleans): see :func:`keep_mask`.
    """
    if structure is not None and structure not in ALL_STRUCTURES:
        raise CompressionError(
            f"structure={structure!r}: must be one of {', '.join(ALL_STRUCTURES)}")
    if not np.isfinite(m).all():
        raise CompressionError(f"weights hold {int(np.isnan(m).sum())} NaN and "
                               f"{int(np.isinf(m).sum())} infinite values: a projection "
                               f"needs finite weights (did training diverge?)")
    if quant is None:
        if structure is None:
            return m.copy(), None, np.ones(m.shape, dtype=bool)
        keep = keep_mask(m * m, geom, structure, amount, sign=m, live_rows=live_rows)
        return m * keep, None, keep
    big = int((np.abs(m) > _F32_MAX).sum())
    if big:   # their levels and scales could not be stored (and float32(scale) is inf)
        raise CompressionError(f"weights hold {big} values beyond float32's range "
                               f"(|w| > {_F32_MAX:.4g}): quantized levels and scales are "
                               f"stored as float32")
    bits, mapping, scale, pow2, *rest = quant
    per_channel = bool(rest and rest[0])
    exact = bool(len(rest) > 1 and rest[1]) and not pow2 and scale is None
    qmin, qmax = level_range(bits, mapping)
    if qmin == qmax:
        raise CompressionError(f"bits={bits} {mapping}: the only level is {qmin}; "
                               f"{mapping} levels need bits >= 2")
    if scale is not None:
        scale = _checked_scale(scale, pow2, m.shape[1] if per_channel else None)
    if per_channel:
        return _per_channel(m, geom, structure, amount, scale, qmin, qmax, pow2, live_rows,
                            exact)
    if structure is None:
        s = scale if scale is not None else best_scale(m, qmin, qmax, pow2)
        if exact:
            s = exact_scale(m, qmin, qmax, start=s)
        return _snap(m, s, qmin, qmax), float(s), np.ones(m.shape, dtype=bool)
    if scale is not None:
        return _joint(m, geom, structure, amount, scale, qmin, qmax, live_rows)
    # Free scale: candidates from the weights a magnitude projection keeps (the pruned ones
    # would drag the scale down), each then judged by the exact joint distance.
    support = m[keep_mask(m * m, geom, structure, amount, sign=m, live_rows=live_rows)]
    best = None
    cands = scale_candidates(support, qmin, qmax, pow2)
    if exact:   # the support's exact scale, one more candidate (the joint choice is a search)
        cands = [exact_scale(support, qmin, qmax, start=cands[0])] + cands
    for s in cands:
        out = _joint(m, geom, structure, amount, s, qmin, qmax, live_rows)
        d = float(np.sum((out[0] - m) ** 2))
        if best is None or d < best[0]:
            best = (d, out)
    return best[1]


def _checked_scale(scale, pow2: bool, columns: int | None):
    """A given scale as float32-representable values: a float, or with ``columns`` (per
    channel) an array of that many (a single number is one for every column)."""
    a = np.asarray(scale, dtype=np.float64)
    if columns is None and a.ndim != 0:
        raise CompressionError(f"scale of shape {a.shape}: one number expected (a scale per "
                               f"channel needs per_channel)")
    if columns is not None:
        if a.ndim == 0:
            a = np.full(columns, float(a))
        elif a.shape != (columns,):
            raise CompressionError(f"scale of shape {a.shape}: per_channel needs one per "
                                   f"output channel ({columns})")
    if not (np.all(a > 0) and np.all(np.isfinite(a))):
        raise CompressionError(f"scale={scale!r}: must be finite numbers > 0")
    if pow2 and not np.array_equal(2.0 ** np.round(np.log2(a)), a):
        raise CompressionError(f"scale={scale!r}: pow2 requires a power of two (one per "
                               f"channel with per_channel)")
    if not all(float32_positive(float(v)) for v in a.ravel()):
        # the stored (float32) scale would be 0 or inf
        raise CompressionError(f"scale={scale!r}: outside float32's range, where the "
                               f"stored scale is kept")
    a = _f32(a)
    return float(a) if columns is None else a


def _per_channel(m, geom, structure, amount, scale, qmin, qmax, pow2, live_rows,
                 exact=False):
    """:func:`project_matrix` with a scale per column (module doc, "Per-channel scales")."""
    ones = np.ones(m.shape, dtype=bool)
    if structure is None:
        s = scale if scale is not None else column_scales(m, qmin, qmax, pow2)[0]
        if exact:
            s = np.array([exact_scale(m[:, j], qmin, qmax, start=s[j])
                          for j in range(m.shape[1])])
        return _snap(m, s, qmin, qmax), s, ones
    if scale is not None:
        return _joint(m, geom, structure, amount, scale, qmin, qmax, live_rows)
    support = keep_mask(m * m, geom, structure, amount, sign=m, live_rows=live_rows)
    # each column's candidates from the weights the magnitude projection keeps there (from
    # all of them where it keeps none: the joint ranking may still keep some)
    basis = np.where(support.any(axis=0), m * support, m)
    cands = column_scales(basis, qmin, qmax, pow2)
    if exact:
        cands = np.concatenate([[[exact_scale(basis[:, j][basis[:, j] != 0], qmin, qmax,
                                              start=cands[0, j])
                                  for j in range(m.shape[1])]], cands])
    if structure not in PER_SEGMENT:
        # the group structures couple the columns: one scale for the layer, as its own
        # search finds it, is a candidate too, so the result is never farther than that
        shared = scale_candidates(m[support], qmin, qmax, pow2)
        cands = np.concatenate([cands, np.repeat(np.array(shared)[:, None], m.shape[1], 1)])
    outs = [_joint(m, geom, structure, amount, s, qmin, qmax, live_rows) for s in cands]
    dists = np.stack([np.sum((o[0] - m) ** 2, axis=0) for o in outs])   # (top, N)
    # the per-column best: the nearest point for the per-segment structures, whose
    # segments lie within a column; one more candidate for the group ones
    mixed = cands[np.argmin(dists, axis=0), np.arange(m.shape[1])]
    outs.append(_joint(m, geom, structure, amount, mixed, qmin, qmax, live_rows))
    total = [float(np.sum((o[0] - m) ** 2)) for o in outs]
    return outs[int(np.argmin(total))]


def keep_mask(score: np.ndarray, geom: CrossbarGeometry, structure: str, amount,
              sign: np.ndarray | None = None, live_rows: np.ndarray | None = None
              ) -> np.ndarray:
    """Boolean ``K × N`` mask of the entries a ``structure`` constraint keeps, ranking groups
    by the sum of ``score`` (>= 0) over each group (per entry within segments for
    ``tinyadc``). The exact maximiser of the kept score subject to the constraint.
    ``SIGNED`` structures need ``sign`` (the weights, or anything of their sign): each
    sign is ranked on its own and entries of sign 0 are never kept.
    ``live_rows`` (``K`` booleans, the inputs that depend on the model's input; see
    :mod:`compressor.connectivity`): the group structures (rows, columns, blocks, aligned)
    rank a group with a live row before any without, by score within each; the maximiser
    among the choices that read a live input wherever the budget allows. Ignored by the
    per-segment (``tinyadc``) structures."""
    if structure in SIGNED:
        if sign is None:
            raise CompressionError(f"structure={structure!r} needs the weights' sign")
        plain = structure.replace("_signed", "")
        score = np.asarray(score, np.float64)
        pos, neg = sign > 0, sign < 0
        if plain == "tinyadc_packed":   # the two arrays share the packed rows
            return _packed_keep(score, geom, check_n(amount, geom), pos, neg)
        return ((keep_mask(np.where(pos, score, 0.0), geom, plain, amount) & pos)
                | (keep_mask(np.where(neg, score, 0.0), geom, plain, amount) & neg))
    k_rows, n_cols = score.shape
    if structure == "tinyadc_packed":
        score = np.asarray(score, np.float64)
        return _packed_keep(score, geom, check_n(amount, geom), score >= 0)
    blocks = geom.blocks(score.astype(np.float64))
    real = geom.blocks(np.ones(score.shape, dtype=bool))
    if structure == "tinyadc":
        n = check_n(amount, geom)
        # Segments are (row_block, read, col_block, col): rank within axis 1 (the rows) of
        # each read's rows (one read of all rows unless geometry.active_rows splits them).
        s = np.where(real, blocks, -np.inf)
        keep = np.zeros(blocks.shape, dtype=bool)
        for r0, r1 in geom.reads():
            order = np.argsort(-s[:, r0:r1], axis=1, kind="stable")
            ranks = np.empty_like(order)
            np.put_along_axis(ranks, order, np.arange(r1 - r0)[None, :, None, None], axis=1)
            keep[:, r0:r1] = ranks < n
        return geom.unblock(keep & real, k_rows, n_cols)
    axes = _GROUP_AXES[structure]
    gscore = blocks.sum(axis=axes, keepdims=True)
    greal = real.any(axis=axes, keepdims=True)
    n_groups = int(greal.sum())
    k = keep_count(amount, n_groups)
    flat = np.where(greal, gscore, -np.inf).ravel()
    chosen = np.zeros(flat.shape, dtype=bool)
    if live_rows is None:
        order = np.argsort(-flat, kind="stable")
    else:   # live groups first, by score within each (lexsort: the last key is primary)
        live = geom.blocks(np.broadcast_to(np.asarray(live_rows, bool)[:, None], score.shape))
        # live: reads a live input through a weight it could keep (score > 0)
        glive = (live & real & (blocks > 0)).any(axis=axes, keepdims=True).ravel()
        order = np.lexsort((-flat, ~glive))
    chosen[order[:k]] = True
    keep = np.broadcast_to(chosen.reshape(gscore.shape), blocks.shape)
    return geom.unblock(keep & real, k_rows, n_cols)


def _packed_keep(score: np.ndarray, geom: CrossbarGeometry, n: int,
                 *classes: np.ndarray) -> np.ndarray:
    """``tinyadc_packed``: at most ``n`` kept entries of each class (``classes``: disjoint
    boolean masks; one for ``tinyadc_packed``, the two signs for ``_signed``) per column of
    every packed crossbar.

    Packing as ``compiler/partition.py`` does it: per column strip of ``cols`` columns, the
    rows with a kept entry (of any class), in order, cut into runs of ``rows``. Only entries
    with a positive score are candidates (a zero score is a zero weight, which the compiler
    drops); each pass keeps the ``n`` best of each class per column of each packed run (ties:
    lower row); passes repeat until the kept set no longer changes (it only shrinks, so this
    ends).
    """
    keep = score > 0
    for c0 in range(0, score.shape[1], geom.cols):
        cols = slice(c0, c0 + geom.cols)
        sub, sc = keep[:, cols], score[:, cols]
        while True:
            rows = np.flatnonzero(sub.any(axis=1))
            new = np.zeros_like(sub)
            # each packed crossbar's rows, read by read
            runs = [rows[x0 + q0:x0 + q1] for x0 in range(0, len(rows), geom.rows)
                    for q0, q1 in geom.reads() if x0 + q0 < len(rows)]
            for rr in runs:
                for cls in classes:
                    cand = sub[rr] & cls[rr, cols]
                    s = np.where(cand, sc[rr], -np.inf)
                    order = np.argsort(-s, axis=0, kind="stable")[:n]   # best n per column
                    top = np.zeros(s.shape, dtype=bool)
                    np.put_along_axis(top, order, True, axis=0)
                    new[rr] |= top & cand
            if np.array_equal(new, sub):
                break
            sub = new
        keep[:, cols] = sub
    return keep


def keep_count(keep: float, n_groups: int) -> int:
    """Groups kept out of ``n_groups`` for the fraction ``keep``: ``round(keep·n)``, >= 1."""
    if isinstance(keep, bool) or not (isinstance(keep, numbers.Real) and 0.0 < keep <= 1.0):
        raise CompressionError(f"keep={keep!r}: must be a fraction in (0, 1]")
    return max(1, min(n_groups, math.floor(keep * n_groups + 0.5)))


def best_scale(x: np.ndarray, qmin: int, qmax: int, pow2: bool = False) -> float:
    """Scale (weight units per level) minimising ``‖x − s·clip(round(x/s))‖``.

    ``pow2``: exact minimiser over ``s = 2**k``: every ``k`` from where every weight rounds
    to 0 down to 8 octaves below the no-clipping scale, and further down while the clipping
    alone (a lower bound on the distance at that scale and every finer one) stays below the
    best distance found (:func:`_pow2_floor`).

    Otherwise a search, not guaranteed globally optimal: (1) the no-clipping scale, 255
    finer ones down to a quarter of it (clipping the tails) and 32 coarser ones are ranked
    on a 16384-entry stride sample of ``x``; (2) if ``x`` already lies on a lattice, its
    scale ``max|x| / m`` (``m`` its largest level) is found exactly, so projections are
    idempotent: every ``m`` up to 256, and above that the first 64 multiples of the
    denominators of ``x``'s ratios to ``max|x|`` (:func:`_lattice_levels`; a lattice whose
    largest level lies beyond them, e.g. 1275 where the ratios give 17, is not recovered and
    the point moves to another lattice within float rounding); (3) the best two ranked are
    refined by Lloyd iterations (``s = <x,q>/<q,q>``) on all of ``x``. Measured within 1 %
    of a 4000-point dense search for Gaussian weights of 2..8 bits
    (``tests/compressor/test_projections.py``). Returns 1.0 for an ``x`` that is all zero in
    float32 (stored weights below float32's range are 0).
    """
    return scale_candidates(x, qmin, qmax, pow2)[0]


def scale_candidates(x: np.ndarray, qmin: int, qmax: int, pow2: bool,
                     top: int = 4) -> list[float]:
    """The ``top`` best scales of :func:`best_scale`'s search, best first (float32 values)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    a = float(np.abs(x).max()) if x.size else 0.0
    if float(np.float32(a)) == 0.0:   # all zero, also as float32 (where levels are stored)
        return [1.0]
    qm = max(-qmin, qmax)
    # the scale at which neither side clips (the sides differ under offset mapping)
    no_clip = max(x.max() / qmax if qmax > 0 else 0.0, x.min() / qmin if qmin < 0 else 0.0)
    if pow2:
        hi = math.ceil(math.log2(2.0 * a)) + 1
        lo = math.floor(math.log2(no_clip if no_clip > 0 else a / qm)) - 8

        def powers(k0, k1):   # 2**k0 .. 2**(k1-1), none that underflow to 0 in float32
            s = 2.0 ** np.arange(k0, k1, dtype=np.float64)
            return s[_f32(s) > 0]
        scales = powers(lo, hi + 1)
        d = _distances(x, scales, qmin, qmax)
        floor = int(_pow2_floor(x[None, :], np.array([lo]), np.array([d.min()]), qmin,
                                qmax)[0])
        if floor < lo:   # finer powers can still win: judge them too (ascending order kept)
            extra = powers(floor, lo)
            scales, d = (np.concatenate([extra, scales]),
                         np.concatenate([_distances(x, extra, qmin, qmax), d]))
        order = np.argsort(d, kind="stable")[:top]
        return [float(scales[i]) for i in order]
    # The no-clipping scale, finer ones that clip the tails, and a few coarser ones, ranked
    # on a sample.
    grid = np.concatenate([no_clip / np.geomspace(1.0, 4.0, 256), a / np.geomspace(1, qm, 32)])
    grid = np.unique(_f32(grid[grid > 0]))  # ascending: finest first, wins ties
    d = _distances(_sample(x, _SEARCH_SAMPLE), grid, qmin, qmax)
    ranked = [float(grid[i]) for i in np.argsort(d, kind="stable")[:top]]
    # A point already on a lattice has scale a/m, m its largest |level|: screen those
    # candidates on a few entries (the extreme one included), keep the exact fits. Every m
    # up to 256, and above that the multiples of the denominators that x's ratios to a
    # reduce to (on a lattice each is q_i/m exactly, to far better than 1/qm**2).
    tiny = _sample(x, 256)
    ms = [np.arange(1, min(qm, 256) + 1, dtype=np.float64)]
    if qm > 256:
        ms.append(_lattice_levels(x, a, qm))
    lattice = np.unique(_f32(a / np.concatenate(ms)))
    exact = lattice[_distances(tiny, lattice, qmin, qmax) <= 1e-12 * (tiny @ tiny)]
    # every exact fit: the finest (a sub-lattice of x's, e.g. s/13 for levels that are all
    # multiples of 13) can fit to within rounding and still be farther than x's own scale
    starts = [float(s) for s in exact] + ranked
    found = {s: _distances(x, np.array([s]), qmin, qmax)[0] for s in starts}
    for s in ranked[:2]:  # refine the two best on all of x
        ref = _lloyd(x, s, qmin, qmax)
        found.setdefault(ref, _distances(x, np.array([ref]), qmin, qmax)[0])
    return sorted(found, key=lambda s: (found[s], s))[:top]


#: Breakpoints :func:`exact_scale` sorts at once (memory ~100 bytes each); a wider window is
#: swept in parts.
EXACT_SCALE_MAX_EVENTS = 1 << 25


def exact_scale(x: np.ndarray, qmin: int, qmax: int, start: float | None = None) -> float:
    """The float32 scale ``s`` minimising ``‖x − s·clip(round(x/s), qmin, qmax)‖``, exactly
    up to float64 rounding of the interval sums (about eps·‖x‖²): where many lattices fit
    ``x`` to within that, as for a point on a lattice whose levels share a factor, it may
    return one of them rather than the least.

    As ``s`` falls, weight ``x_i`` moves from level ``k`` to ``k + 1`` (towards its side's
    cap) where ``|x_i| / s = k + ½``; between two such breakpoints the levels are fixed and
    the distance is the quadratic ``A − 2sB + s²C`` (``B = Σ|x_i| q_i``, ``C = Σ q_i²``),
    least at ``B / C`` clipped into the interval. One sweep over the sorted breakpoints
    visits every interval. Only the window where the distance can beat ``start``'s (default:
    :func:`best_scale`) is swept: above it the weights that round to 0 alone cost more,
    below it the clipping alone does. The best interval optima are then rounded to float32
    (where scales are stored) and judged by the exact distance. Cost grows with weights ×
    levels in the window; past :data:`EXACT_SCALE_MAX_EVENTS` breakpoints the window is
    swept in parts, so memory stays bounded.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    start = best_scale(x, qmin, qmax) if start is None else float(start)
    best_d = _distances(x, np.array([start]), qmin, qmax)[0]
    if best_d == 0.0:
        return start
    a = np.abs(x)
    cap = np.where(x > 0, qmax, -qmin).astype(np.int64)
    moving = (a > 0) & (cap > 0)
    a, cap = a[moving], cap[moving]
    if not a.size:        # no weight can take a nonzero level: every scale is as good
        return start
    total = float(x @ x)
    # the window: f(s) >= the cost of weights below s/2 (rounded to 0), rising with s, and
    # >= the clipping cost sum (a - s*cap)+^2, falling with s
    order = np.sort(a)
    csum = np.cumsum(order * order)

    def zeroed(s):
        i = int(np.searchsorted(order, s / 2, side="left"))
        return csum[i - 1] if i else 0.0

    def clipped(s):
        e = np.maximum(a - s * cap, 0.0)
        return float(e @ e)

    lo, hi = start, start
    while clipped(lo / 2) < best_d and lo / 2 > 0:
        lo /= 2
    lo /= 2
    while zeroed(hi * 2) < best_d and hi < 4 * a.max(initial=0):
        hi *= 2
    hi *= 2
    s_opt, f = _interval_optima(a, cap, total, lo, hi)
    cands = {float(start)}
    for i in np.argsort(f, kind="stable")[:4]:
        v = np.float32(s_opt[i])
        cands.update(float(t) for t in (v, np.nextafter(v, np.float32(0)),
                                        np.nextafter(v, np.float32(np.inf)))
                     if 0 < t < np.inf)
    cands = np.array(sorted(cands))
    d = _distances(x, cands, qmin, qmax)
    return float(cands[int(np.argmin(d))])     # ties: the finer scale (sorted ascending)


def _interval_optima(a, cap, total, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Each interval's least scale and distance in the window (lo, hi): the best four of
    each. A window of more than :data:`EXACT_SCALE_MAX_EVENTS` breakpoints is swept in
    halves (each starts from the levels at its top), so memory stays bounded (a trained
    1M-weight layer at 8 bits has ~90M); the global best interval is each half's best."""
    # breakpoints a/(k + 1/2) inside (lo, hi): k from ceil(a/hi - 1/2) to floor(a/lo - 1/2)
    with np.errstate(divide="ignore", over="ignore"):   # lo can reach 0: all levels in
        k0 = np.clip(np.ceil(a / hi - 0.5), 0, cap).astype(np.int64)
        k1 = np.clip(np.floor(a / lo - 0.5), -1, cap - 1).astype(np.int64)
    count = np.maximum(k1 - k0 + 1, 0)
    n_events = int(count.sum())
    if n_events > EXACT_SCALE_MAX_EVENTS:
        mid = np.sqrt(lo * hi) if lo > 0 else hi / 2
        if not lo < mid < hi or mid == lo or mid == hi:
            raise CompressionError(f"exact scale: {n_events} breakpoints at one scale (at "
                                   f"most {EXACT_SCALE_MAX_EVENTS}): too many equal weights; "
                                   f"leave quant.exact_scale off for this layer")
        halves = [_interval_optima(a, cap, total, mid, hi),
                  _interval_optima(a, cap, total, lo, mid)]
        s_opt = np.concatenate([h[0] for h in halves])
        f = np.concatenate([h[1] for h in halves])
        best = np.argsort(f, kind="stable")[:4]
        return s_opt[best], f[best]
    # the levels just below hi: k0, the first level whose breakpoint lies in the window
    # (rint(a / hi) rounded a breakpoint exactly at hi up, then counted its event again)
    q0 = k0.astype(np.float64)
    b0, c0 = float(a @ q0), float(q0 @ q0)
    owner = np.repeat(np.arange(len(a)), count)
    k = (np.arange(n_events) - np.repeat(np.cumsum(count) - count, count)) + k0[owner]
    bp = a[owner] / (k + 0.5)
    srt = np.argsort(-bp, kind="stable")
    bp, da, dc = bp[srt], a[owner][srt], (2 * k + 1)[srt].astype(np.float64)
    b = np.concatenate([[b0], b0 + np.cumsum(da)])
    c = np.concatenate([[c0], c0 + np.cumsum(dc)])
    upper = np.concatenate([[hi], bp])
    lower = np.concatenate([bp, [lo]])
    with np.errstate(divide="ignore", invalid="ignore"):
        s_opt = np.where(c > 0, np.clip(b / c, lower, upper), upper)
    f = total - 2 * s_opt * b + s_opt * s_opt * c
    best = np.argsort(f, kind="stable")[:4]
    return s_opt[best], f[best]


def column_scales(m: np.ndarray, qmin: int, qmax: int, pow2: bool = False,
                  top: int = 4) -> np.ndarray:
    """Per-column :func:`scale_candidates`: ``(top, N)`` float32-valued scales for the
    ``N`` columns of ``m``, each column's best first (ties: the finer scale).

    :func:`best_scale`'s search for each column on its own: its candidates (the no-clipping
    scale, 255 finer ones down to a quarter of it, 32 coarser ones, and every lattice scale
    ``max|x|/m``) ranked on a stride sample of the column (:data:`_COLUMN_SAMPLE` entries
    and its largest), the best two refined by Lloyd iterations on the whole column, and the
    six ranked again on it (:func:`_column_distances`). With ``pow2``, every power of two of
    its range, judged on the whole column: exact, as in :func:`best_scale`. An all-zero
    column gets 1.0. A column that lies on a lattice gets its own scale back (idempotent).
    """
    x = np.ascontiguousarray(np.asarray(m, dtype=np.float64).T)   # a column a row
    n = x.shape[0]
    if x.shape[1] == 0 or n == 0:
        return np.ones((top, n))
    a = np.abs(x).max(axis=1)
    zero = _f32(a) == 0.0               # all zero, also as float32 (as in scale_candidates)
    a1 = np.where(zero, 1.0, a)
    qm = max(-qmin, qmax)
    no_clip = np.maximum(x.max(axis=1) / qmax if qmax > 0 else 0.0,
                         x.min(axis=1) / qmin if qmin < 0 else 0.0)
    no_clip = np.where(no_clip > 0, no_clip, a1 / qm)
    if pow2:
        k_hi = np.ceil(np.log2(2.0 * a1)) + 1
        k_lo = np.floor(np.log2(no_clip)) - 8

        def powers(k_lo):   # each column's powers from k_lo up to k_hi, as stored
            span = np.arange(int((k_hi - k_lo).max()) + 1)[:, None]
            return _storable(2.0 ** np.minimum(k_lo[None, :] + span, k_hi[None, :]), zero)
        # exact over the powers of two: every one judged on all of x
        grid = powers(k_lo)
        d = _column_distances(x, grid, qmin, qmax)
        floor = _pow2_floor(x, k_lo, d.min(axis=0), qmin, qmax)
        if (floor < k_lo).any():    # some column's optimum may clip further: widen its range
            grid = powers(floor)
            d = _column_distances(x, grid, qmin, qmax)
        return _rank_columns(grid, d, top)
    else:
        parts = [no_clip[None, :] / np.geomspace(1.0, 4.0, 256)[:, None],
                 a1[None, :] / np.geomspace(1.0, qm, 32)[:, None],
                 a1[None, :] / np.arange(1, min(qm, 256) + 1, dtype=np.float64)[:, None]]
        if qm > 256:    # larger lattices, as best_scale finds them (a column at a time)
            extra = [a1[j] / _lattice_levels(x[j], a1[j], qm) for j in range(n)]
            width = max(len(e) for e in extra)
            if width:
                parts.append(np.stack([np.pad(e, (0, width - len(e)), constant_values=a1[j])
                                       for j, e in enumerate(extra)], axis=1))
        grid = _f32(np.concatenate(parts))
    grid = _storable(grid, zero)
    # ranked on a stride sample of each column (with its largest entry), as best_scale does
    if x.shape[1] > _COLUMN_SAMPLE:
        idx = np.linspace(0, x.shape[1] - 1, _COLUMN_SAMPLE).astype(np.int64)
        big = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
        sample = np.ascontiguousarray(np.concatenate([x[:, idx], big], axis=1))
    else:
        sample = x
    ranked = _rank_columns(grid, _column_distances(sample, grid, qmin, qmax), max(top, 2))
    refined = _lloyd_columns(x, np.ascontiguousarray(ranked[:2]), qmin, qmax)
    both = np.ascontiguousarray(np.concatenate([ranked, refined]))
    return _rank_columns(both, _column_distances(x, both, qmin, qmax), top)


def _storable(grid: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Scales as stored (float32): a candidate that would be 0 or inf there becomes float32's
    smallest normal or largest power of two (both powers of two; only columns of weights
    near float32's limits, e.g. a dead channel of a float64 model, have such candidates);
    an all-zero column (``zero``) gets 1.0."""
    f = _f32(grid)
    grid = np.where((f > 0) & np.isfinite(f), grid, np.where(grid > 1.0, 2.0 ** 127,
                                                              2.0 ** -126))
    return np.ascontiguousarray(np.where(zero[None, :], 1.0, grid))


def _pow2_floor(rows: np.ndarray, k_lo: np.ndarray, best: np.ndarray, qmin: int,
                qmax: int) -> np.ndarray:
    """Per row of ``rows``, the lowest power-of-two exponent whose scale can still beat
    ``best`` (the row's best distance so far), from ``k_lo`` down. At scale ``s`` clipping
    alone costs ``Σ (x - s·qmax)²`` over ``x > s·qmax`` plus ``Σ (s·qmin - x)²`` over
    ``x < s·qmin``, a lower bound on the distance at ``s`` that only grows as ``s`` falls;
    once it reaches ``best`` no finer scale can win. Stops at float32's smallest normal."""
    k, best = np.array(k_lo, dtype=np.float64), np.array(best, dtype=np.float64)
    active = np.ones(len(k), dtype=bool)
    while active.any():
        s = 2.0 ** (k - 1)
        over = np.maximum(rows - (s * qmax)[:, None], 0.0)
        under = np.maximum((s * qmin)[:, None] - rows, 0.0)
        bound = np.einsum("ij,ij->i", over, over) + np.einsum("ij,ij->i", under, under)
        active &= (bound < best) & (k - 1 >= -126)
        if not active.any():
            break
        idx = np.flatnonzero(active)
        for j in idx:
            best[j] = min(best[j], _distances(rows[j], np.array([s[j]]), qmin, qmax)[0])
        k[idx] -= 1
    return k


def _rank_columns(scales: np.ndarray, d: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` scales of each column by ``(distance, scale)``, repeats last."""
    order = np.lexsort((scales.T, d.T))              # (N, G): each column's ascending
    s = np.take_along_axis(scales.T, order, axis=1)
    repeat = np.zeros(s.shape, dtype=bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]            # equal scales sort side by side
    s = np.take_along_axis(s, np.argsort(repeat, axis=1, kind="stable"), axis=1)
    if s.shape[1] < top:
        s = np.concatenate([s, np.repeat(s[:, -1:], top - s.shape[1], axis=1)], axis=1)
    return np.ascontiguousarray(s[:, :top].T)


@numba.njit(cache=True)
def _row_distance(x, j, s, qmin, qmax):
    """Squared distance of row ``j`` of ``x`` to its levels at scale ``s`` (:func:`_snap`'s
    arithmetic)."""
    acc = 0.0
    for i in range(x.shape[1]):
        v = x[j, i]
        r = v - min(max(np.rint(v / s), qmin), qmax) * s
        acc += r * r
    return acc


@numba.njit(cache=True)
def _column_distances(x, scales, qmin, qmax):
    """``out[c, j]``: :func:`_row_distance` of row ``j`` of ``x`` (a column of the weight)
    at scale ``scales[c, j]``."""
    n = x.shape[0]
    g = scales.shape[0]
    out = np.empty((g, n))
    for j in range(n):
        for c in range(g):
            out[c, j] = _row_distance(x, j, scales[c, j], qmin, qmax)
    return out


@numba.njit(cache=True)
def _lloyd_columns(x, starts, qmin, qmax, iters=10):
    """:func:`_lloyd` for every start ``starts[c, j]`` on row ``j`` of ``x``."""
    g, n = starts.shape
    k = x.shape[1]
    out = starts.copy()
    for j in range(n):
        for c in range(g):
            s = starts[c, j]
            best_d = _row_distance(x, j, s, qmin, qmax)
            for _ in range(iters):
                xq = 0.0
                qq = 0.0
                for i in range(k):
                    q = min(max(np.rint(x[j, i] / s), qmin), qmax)
                    xq += x[j, i] * q
                    qq += q * q
                if qq == 0.0:
                    break
                s = np.float64(np.float32(xq / qq))
                if not 0.0 < s < np.inf:   # underflow or overflow in float32
                    break
                d = _row_distance(x, j, s, qmin, qmax)
                if d >= best_d:
                    break
                out[c, j], best_d = s, d
    return out


def _lattice_levels(x: np.ndarray, a: float, qm: int) -> np.ndarray:
    """Candidate largest levels ``m`` (> 256) of a lattice ``x`` may lie on: multiples of the
    least common multiple of the denominators of every distinct ``|x_i| / a`` as a fraction
    with denominator up to ``qm``. All of ``x``'s distinct magnitudes (a sample could miss
    the levels that carry a denominator's factor); more than ``qm + 1`` of them cannot lie
    on such a lattice."""
    r = np.unique(np.abs(x)) / a
    if len(r) > qm + 1:
        return np.empty(0)
    r = r[(r > 0) & (r < 1)]
    lcm = 1
    for v in r:
        lcm = math.lcm(lcm, Fraction(float(v)).limit_denominator(qm).denominator)
        if lcm > qm:
            return np.empty(0)
    m = lcm * np.arange(1, min(qm // lcm, 64) + 1, dtype=np.float64)
    return m[m > 256]


def _sample(x: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` entries of ``x`` on a deterministic stride, plus its largest ``|x|``."""
    if x.size <= n:
        return x
    idx = np.linspace(0, x.size - 1, n).astype(np.int64)
    return np.concatenate([x[idx], x[[int(np.argmax(np.abs(x)))]]])


def quantize(m: np.ndarray, scale: float, qmin: int, qmax: int) -> np.ndarray:
    """Integer levels ``clip(round(m / scale), qmin, qmax)`` (int64)."""
    return np.clip(np.rint(np.asarray(m, dtype=np.float64) / scale), qmin, qmax).astype(np.int64)


# ---------------------------------------------------------------------------- internals


def _apply(w, geom, structure, amount, quant):
    if structure is not None and geom is None:
        raise CompressionError("a structured constraint needs a CrossbarGeometry")
    arr, back = as_float64(w)
    m = to_crossbar(arr)
    out = project_matrix(m, geom, structure, amount, quant)[0]
    return back(from_crossbar(out, arr.shape))


def as_float64(w):
    """``(float64 numpy copy of w, inverse)``; the inverse turns a float64 array back into
    the type, dtype and device of ``w`` (numpy array or torch tensor)."""
    if getattr(w, "ndim", np.ndim(w)) < 1:
        raise CompressionError("a 0-d weight (one number): a projection needs a weight "
                               "array, a layer's (C_out, C_in[, kh, kw]) or a vector")
    if hasattr(w, "detach"):  # a torch tensor; torch itself is not imported here
        src = w
        if not (w.is_floating_point() and w.element_size() >= 4):
            raise CompressionError(f"weights of dtype {w.dtype}: a projection needs float32 "
                                   f"or float64 (its levels would not survive the cast back)")

        def back(a):
            import torch
            return torch.as_tensor(a, dtype=src.dtype, device=src.device)
        return w.detach().cpu().double().numpy(), back
    arr = np.asarray(w)
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize < 4:
        raise CompressionError(f"weights of dtype {arr.dtype}: a projection needs float32 or "
                               f"float64 (its levels would not survive the cast back)")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return arr.astype(np.float64), lambda a: np.asarray(a, dtype=dtype)


def _joint(m, geom, structure, amount, s, qmin, qmax, live_rows=None):
    """Exact joint projection at scale ``s`` (a float, or one per column)."""
    qv = _snap(m, s, qmin, qmax)
    gain = m * m - (m - qv) ** 2  # >= 0: level 0 is always available
    if structure in ("tinyadc", "tinyadc_signed"):
        gain = _ties_by_magnitude(gain, m)
    keep = keep_mask(gain, geom, structure, amount, sign=m, live_rows=live_rows)
    return qv * keep, (s if np.ndim(s) else float(s)), keep


def _ties_by_magnitude(gain, m):
    """``gain`` with its zeros (entries that round to level 0) ranked by |m|, below every
    positive gain. Any n of them are as near, but the mask is what retraining leaves free:
    ranked by position, a weak column kept its first rows (|w| = 0.001) and froze its
    largest weights at 0. Only for structures that rank single entries (a group's sum of
    such scores could pass a positive gain); the packed ones never keep a zero."""
    zero = gain <= 0
    mag = np.abs(m)
    if not zero.any() or not mag.max():
        return gain
    floor = gain[~zero].min() if not zero.all() else 1.0
    return np.where(zero, 0.5 * floor * mag / mag.max(), gain)


def _snap(m, s, qmin, qmax):
    return np.clip(np.rint(m / s), qmin, qmax) * s


def _distances(x, scales, qmin, qmax):
    """Squared distance of ``x`` to its projection at each scale (chunked, vectorised)."""
    out = np.empty(len(scales))
    step = max(1, (1 << 20) // max(1, x.size))
    for i in range(0, len(scales), step):
        s = np.asarray(scales[i:i + step], dtype=np.float64)[:, None]
        r = x[None, :] - np.clip(np.rint(x[None, :] / s), qmin, qmax) * s
        out[i:i + step] = np.einsum("ij,ij->i", r, r)
    return out


def _lloyd(x, s, qmin, qmax, iters: int = 10) -> float:
    """Alternate optimal levels and optimal scale from ``s``; never returns a worse scale."""
    best_d = _distances(x, np.array([s]), qmin, qmax)[0]
    best = s
    for _ in range(iters):
        q = np.clip(np.rint(x / s), qmin, qmax)
        qq = q @ q
        if qq == 0:
            break
        s = float(_f32(np.array([(x @ q) / qq]))[0])
        d = _distances(x, np.array([s]), qmin, qmax)[0]
        if d >= best_d:
            break
        best, best_d = s, d
    return best


_F32_MAX = float(np.finfo(np.float32).max)


def float32_positive(x: float) -> bool:
    """Whether ``x`` rounds to a finite float32 > 0 (how scales are stored)."""
    return 0.0 < x <= _F32_MAX and float(np.float32(x)) > 0.0


def _f32(a):
    """Round to float32-representable values (kept as float64)."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def check_n(n, geom, where: str = "") -> int:
    """``n`` of a per-segment (TinyADC) structure as an int, or :class:`CompressionError`
    (prefixed by ``where``, e.g. ``recipe.layers[2].sparsity.``) saying what is allowed:
    1 up to the rows one read drives."""
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool)
            and 1 <= n <= geom.read_rows):
        raise CompressionError(
            f"{where}n={n!r}: nonzeros per column segment must be an integer in "
            f"1..{geom.read_rows} (" + ("geometry.rows, the crossbar rows)"
                                        if geom.active_rows is None else
                                        "geometry.active_rows, the rows one read drives)"))
    return int(n)
