"""Fixed-point choices: calibration ranges, weight quantization, requantization constants.

Activations: symmetric, one scale per tensor: ``headroom`` (2 by default, one bit spare)
times the largest |value| seen on calibration inputs (onnxruntime on the frontend graph)
maps to the top code of ``input_bits`` (:meth:`compiler.lower.LowerContext.scale_for`); a
scale the model's own Q/DQ nodes set wins.
Weights: symmetric per output channel over ``weight_bits``; weights that arrive as QDQ
integers keep their integers and scales when they fit.
"""
from __future__ import annotations

import warnings

import numpy as np

from simulator.crossbar import weight_range
from simulator.errors import first_line

from .errors import CompilerError
from .frontend import OTHER_WEIGHTS, Graph


def calibrate(graph: Graph, data: dict[str, np.ndarray] | None, n_random: int = 4,
              seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """|max| of every tensor over the calibration batch, and the batch's graph outputs.
    Without data, standard normal inputs (seeded) stand in."""
    from .reference import onnxruntime_session
    if data is None:
        rng = np.random.default_rng(seed)
        data = {n: rng.standard_normal((n_random,) + tuple(s[1:])).astype(np.float32)
                for n, s in graph.inputs}
    names = [n for n, _ in graph.inputs]
    unknown = sorted(set(data) - set(names))
    if unknown and all(n in data for n in names):   # a key meant for another model
        raise CompilerError(f"calibration data has unknown input {unknown[0]!r}; the model's "
                            f"inputs are {', '.join(names)}")
    for n, s in graph.inputs:
        if n not in data:
            raise CompilerError(f"calibration data lacks input {n!r}; the model's inputs are "
                                f"{', '.join(names)}")
        if tuple(np.shape(data[n])[1:]) != tuple(s[1:]):
            raise CompilerError(f"calibration input {n!r} has shape {np.shape(data[n])}; "
                                f"expected (N, {', '.join(map(str, s[1:]))})")
        _check_calibration_values(n, np.asarray(data[n]))
    sizes = {n: len(data[n]) for n, _ in graph.inputs}
    if len(set(sizes.values())) > 1:
        raise CompilerError(f"calibration inputs hold different numbers of samples ("
                            f"{', '.join(f'{k!r}: {v}' for k, v in sizes.items())}); each "
                            f"input needs the same N")
    model = graph.to_onnx(extra_outputs=True)
    try:
        # every tensor is a graph output, so little fuses; kept as calibrated so far
        sess = onnxruntime_session(model.SerializeToString(), fuse=True)
    except Exception as e:
        raise CompilerError(f"onnxruntime cannot run the model for calibration: "
                            f"{first_line(e)}") from e
    names = [o.name for o in sess.get_outputs()]
    absmax = {n: 0.0 for n in names}
    for n, _ in graph.inputs:
        # in float64: abs(int8(-128)) is -128 in the array's own type
        absmax[n] = float(np.abs(np.asarray(data[n], np.float64)).max())
    batch = next(iter(sizes.values()), 1)
    outs = {o: [] for o in graph.outputs}
    for b in range(batch):
        feeds = {n: np.asarray(data[n][b:b + 1], np.float32) for n, _ in graph.inputs}
        try:
            res = sess.run(names, feeds)
        except Exception as e:   # a model that loads but fails at run time (bad shapes)
            raise CompilerError(f"onnxruntime failed on the model during calibration: "
                                f"{first_line(e)}") from e
        for n, v in zip(names, res):
            top = float(np.abs(v).max()) if v.size else 0.0
            if np.isnan(top):   # max(0.0, nan) is 0.0: it calibrated as all zeros (an
                # inf is left to the lowering, which names what holds it: Pad's -inf)
                node = next((nd for nd in graph.nodes if n in nd.output), None)
                by = f" (node {node.name!r}, {node.op_type})" if node is not None else ""
                raise CompilerError(f"calibration: tensor {n!r}{by} is NaN on sample "
                                    f"{b}; fixed-point words hold numbers only")
            absmax[n] = max(absmax[n], top)
            if n in outs:
                outs[n].append(v)
    return absmax, {k: np.concatenate(v) for k, v in outs.items()}


def _check_calibration_values(name: str, x: np.ndarray) -> None:
    """Samples that can set an input's fixed-point scale: at least one, all finite, not all
    zero (a zero range gives a scale of ~1e-12, so real inputs saturate)."""
    if len(x) == 0:
        raise CompilerError(f"calibration input {name!r} holds no samples (shape {x.shape}); "
                            f"give at least one")
    bad = int(np.size(x) - np.isfinite(x).sum())
    if bad:
        raise CompilerError(f"calibration input {name!r} holds {bad} NaN/inf values; "
                            f"calibration data must be finite")
    if not np.any(x):
        raise CompilerError(f"calibration input {name!r} is all zeros, which sets no range "
                            f"for its fixed-point scale; give representative samples")


def quantize_weight(w: np.ndarray, bits: int, qdq: tuple | None = None,
                    mapping: str = "differential", name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Float matrix (K, N) -> integers (K, N) and per-column scales (N,). QDQ integers are
    kept, column by column, where the mapping stores them (offset mapping also holds
    ``-2**(bits-1)``, which a negative batch-norm factor folded into a channel can turn into
    an unstorable ``+2**(bits-1)``); floats are quantized symmetrically, which every mapping
    stores. QDQ columns that are not kept as exported (re-quantized, or coarsened by the
    scale floor) are warned about, naming layer ``name``: the chip then runs other weights
    than the model file holds."""
    lim = (1 << (bits - 1)) - 1
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)
    if w.size == 0:
        return np.zeros(w.shape, np.int64), np.ones(w.shape[1])
    if qdq is not None:
        q, s = qdq
        q = np.array(q, np.int64)
        lo, hi = weight_range(bits, mapping)
        fits = (q >= lo).all(axis=0) & (q <= hi).all(axis=0)
        s = np.array(np.broadcast_to(np.asarray(s, np.float64), (q.shape[1],)))
        q = np.where(s == 0, 0, q)                                  # scale 0: a zero column
        exported = q
        if not fits.all():            # only those columns go back to floats
            q = q.copy()
            q[:, ~fits], s[~fits] = _symmetric(w[:, ~fits], lim)
            warnings.warn(
                f"{name or 'a layer'}: {int((~fits).sum())} of {len(fits)} columns hold "
                f"levels {int(exported.min())}..{int(exported.max())}, past the {lo}..{hi} "
                f"that {bits}-bit weights store with {mapping} mapping: re-quantized from "
                f"their float values, so {OTHER_WEIGHTS}",
                stacklevel=2)
        q2, s2 = _floor_columns(q, _fill_zero_scales(s))
        coarse = fits & np.any(q2 != q, axis=0)
        if coarse.any():
            warnings.warn(
                f"{name or 'a layer'}: {int(coarse.sum())} of {len(fits)} columns are scaled "
                f"below 1/{SCALE_RANGE:g} of the layer's largest; their exported levels are "
                f"coarsened to that floor (see compiler.quantize.SCALE_RANGE)", stacklevel=2)
        return q2, s2
    return _floor_columns(*_symmetric(w, lim))


def _symmetric(w: np.ndarray, lim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric integers in ``[-lim, lim]`` and their scales."""
    top = np.maximum(w.max(axis=0), -w.min(axis=0)).astype(np.float64)   # |w| max, no copy
    scale = _fill_zero_scales(top / lim)
    # rint(w / scale) in float64, a block of rows at a time (no full-size float64 temporaries).
    q = np.empty(w.shape, np.int64)
    step = max(1, (1 << 21) // max(w.shape[1], 1))
    for r0 in range(0, w.shape[0], step):
        blk = np.asarray(w[r0:r0 + step], np.float64) / scale
        q[r0:r0 + step] = np.rint(blk, out=blk)
    return q, scale


#: A column's weight scale is at least 1/SCALE_RANGE of the layer's largest. The columns'
#: requantization multipliers share one shift, set by the largest, so a column scaled 1e-4
#: below the rest (a batch-norm channel with a tiny gamma) got a multiplier of 1 or 0 and
#: its bias (stored at its scale) came out wrong or lost. Floored at 1/64, its multiplier
#: is at least 2**13 / 64 = 128 (its rescaling within 0.4 %), and its weights still get 64
#: times the levels that one scale per layer would give them. (No column of the benchmark
#: models lies below the floor; at 1/16 one dense VGG column did, with a multiplier of 915.)
SCALE_RANGE = 64.0


def _floor_columns(q: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` with each column's scale at least the largest / SCALE_RANGE (see
    :func:`coarsen_columns`).

    "The largest" is over columns holding a nonzero integer, and an all-zero column gets
    that scale (it only scales its bias): a pruned channel followed by batch-norm folds a
    variance of ~0 into a scale hundreds of times the others', which would otherwise coarsen
    every live column (and set the shared requantization shift)."""
    live = np.any(q != 0, axis=0)
    ref = float(scale[live].max(initial=0.0)) if live.any() else float(scale.max(initial=0.0))
    scale = np.where(live, scale, ref if ref > 0 else 1.0)
    return coarsen_columns(q, scale, np.maximum(scale, ref / SCALE_RANGE))


def coarsen_columns(q: np.ndarray, scale: np.ndarray, coarser: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` re-expressed at per-column scales ``coarser`` (each >= ``scale``): the
    integers of a raised column shrink to it, each nonzero staying nonzero (at least +-1):
    the compiler packs rows that hold a nonzero, so a row emptied here would shift every
    later row into another crossbar, past a TinyADC bound per crossbar."""
    small = coarser != scale
    if small.any():
        q = q.copy()
        part = q[:, small]
        coarse = np.abs(np.rint(part * (scale[small] / coarser[small]))).astype(np.int64)
        q[:, small] = np.sign(part) * np.maximum(coarse, part != 0)
    return q, coarser


def _fill_zero_scales(scale: np.ndarray) -> np.ndarray:
    """An all-zero column's scale only scales its bias; give it the layer's largest scale so
    its requantization multiplier stays in the range of the others (they share a shift)."""
    top = float(np.abs(scale).max(initial=0.0))
    return np.where(scale != 0, scale, top if top > 0 else 1.0)
