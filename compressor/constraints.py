"""A layer's constraint: one structured sparsity and/or one level set, projected jointly.

>>> c = Constraint(structure="blocks", amount=0.5, quant=QuantSpec(bits=8))
>>> w_proj, scale, keep = c.project(w, geom)     # torch-layout weight, numpy or torch

Combining the two is exact for a given scale (see :mod:`compressor.projections`); two
sparsity structures on one layer are not offered, because sequential projections onto two
such sets are not the projection onto their intersection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .errors import CompressionError
from .geometry import CrossbarGeometry, from_crossbar, level_range, to_crossbar
from .projections import (ALL_STRUCTURES, PER_SEGMENT, SIGNED, as_float64, check_n,
                          float32_positive, project_matrix)


@dataclass(frozen=True, slots=True)
class QuantSpec:
    """Weights restricted to ``scale · q`` with ``q`` a ``bits``-bit level under ``mapping``."""

    bits: int
    """Width of the signed integer weight, bits (``1..geometry.weight_bits``)."""
    mapping: str = "differential"
    """Level set: ``differential`` (symmetric) or ``offset`` (two's complement range)."""
    pow2: bool | str = False
    """Power-of-two scales (integer-only hardware: a shift, no multiplier): ``True`` projects
    onto them during ADMM; ``"fold"`` trains with free scales and folds each scale's residual
    into what follows the layer, exactly (:mod:`compressor.fold`)."""
    scale: float | None = None
    """Fixed scale, weight units per level; None searches the distance-minimising one."""
    per_channel: bool = False
    """One scale per output channel (crossbar column), applied after the column's ADC as a
    single one is; False: one for the layer. Searched, so no fixed ``scale``; not with
    ``pow2: fold`` (a per-channel residual has nowhere exact to go)."""
    exact_scale: bool = False
    """Search a free scale exactly (:func:`compressor.projections.exact_scale`: every
    breakpoint of the distance; seconds per million weights) instead of by the candidate
    search, which is close but not guaranteed nearest. Power-of-two scales are exact
    either way."""

    @property
    def levels(self) -> tuple[int, int]:
        """``(qmin, qmax)`` integer levels."""
        return level_range(self.bits, self.mapping)


@dataclass(frozen=True, slots=True)
class Constraint:
    """What one layer's weight must satisfy. All fields optional; an empty one is no-op."""

    structure: str | None = None
    """One of ``projections.ALL_STRUCTURES`` or None (no sparsity)."""
    amount: float | int | None = None
    """Fraction of groups kept, in (0, 1]; for ``projections.PER_SEGMENT`` (the ``tinyadc``
    family) the nonzeros per column segment (per sign for the ``_signed`` ones)."""
    quant: QuantSpec | None = None
    """Level set, or None to keep float weights."""

    def check(self, geom: CrossbarGeometry, where: str = "constraint") -> None:
        """Raise :class:`CompressionError` naming the field if impossible on ``geom``."""
        if self.structure is not None:
            if self.structure not in ALL_STRUCTURES:
                raise CompressionError(f"{where}.sparsity.structure={self.structure!r}: must be "
                                       f"one of {', '.join(ALL_STRUCTURES)}")
            if self.structure in SIGNED and geom.mapping != "differential":
                raise CompressionError(
                    f"{where}.sparsity.structure={self.structure!r}: counts each array of a "
                    f"differential crossbar; geometry.mapping is {geom.mapping!r} (one array "
                    f"holds both signs: use {self.structure.replace('_signed', '')!r})")
            if self.structure in PER_SEGMENT and geom.mapping != "differential":
                raise CompressionError(
                    f"{where}.sparsity.structure={self.structure!r}: bounds the nonzeros per "
                    f"column, which bounds the ADC range only where a zero weight is zero "
                    f"conductance; geometry.mapping is {geom.mapping!r} (every cell conducts): "
                    f"use mapping: differential")
            if self.structure in PER_SEGMENT:
                check_n(self.amount, geom, f"{where}.sparsity.")
            elif isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)) \
                    or not 0.0 < self.amount <= 1.0:
                raise CompressionError(
                    f"{where}.sparsity.keep={self.amount!r}: must be a fraction in (0, 1]")
        q = self.quant
        if q is not None:
            if not _is_int(q.bits) or not 1 <= q.bits <= geom.weight_bits:
                raise CompressionError(f"{where}.quant.bits={q.bits!r}: must be an integer in "
                                       f"1..{geom.weight_bits} (geometry.weight_bits)")
            if q.mapping not in ("differential", "offset"):
                raise CompressionError(f"{where}.quant.mapping={q.mapping!r}: must be "
                                       f"differential or offset")
            if q.bits == 1 and q.mapping == "differential":
                raise CompressionError(f"{where}.quant.bits=1: a differential level set needs "
                                       f">= 2 bits (1 bit holds only 0)")
            (qmin, qmax), (gmin, gmax) = q.levels, geom.levels
            if qmin < gmin or qmax > gmax:
                # the compiler would re-quantize the whole layer to fit, discarding the levels
                raise CompressionError(
                    f"{where}.quant: {q.bits}-bit {q.mapping} levels {qmin}..{qmax} do not fit "
                    f"the crossbar's {gmin}..{gmax} (geometry: {geom.weight_bits}-bit "
                    f"{geom.mapping}); lower quant.bits or match the mappings")
            if not (isinstance(q.pow2, bool) or q.pow2 == "fold"):
                raise CompressionError(f"{where}.quant.pow2={q.pow2!r}: must be true, false "
                                       f"or fold")
            if not isinstance(q.per_channel, bool):
                raise CompressionError(f"{where}.quant.per_channel={q.per_channel!r}: must be "
                                       f"true or false")
            if not isinstance(q.exact_scale, bool):
                raise CompressionError(f"{where}.quant.exact_scale={q.exact_scale!r}: must be "
                                       f"true or false")
            if q.exact_scale and (q.pow2 is True or q.scale is not None):
                raise CompressionError(f"{where}.quant.exact_scale: applies to a searched "
                                       f"free scale; drop it, or pow2: true / scale")
            if q.per_channel and q.pow2 == "fold":
                raise CompressionError(
                    f"{where}.quant: per_channel with pow2: fold: a residual per output "
                    f"channel cannot fold into the next layer's levels; use pow2: true (a "
                    f"power of two per channel) or per_channel: false")
            if q.per_channel and q.scale is not None:
                raise CompressionError(f"{where}.quant: per_channel searches a scale per "
                                       f"output channel; drop scale={q.scale!r} or "
                                       f"per_channel")
            if q.pow2 == "fold" and q.scale is not None:
                raise CompressionError(f"{where}.quant: pow2: fold chooses the scale; drop "
                                       f"scale={q.scale!r} or use pow2: true")
            if q.scale is not None and not (isinstance(q.scale, (int, float))
                                            and not isinstance(q.scale, bool)
                                            and float32_positive(q.scale)):
                raise CompressionError(f"{where}.quant.scale={q.scale!r}: must be > 0 and "
                                       f"within float32's range (the stored scale)")
            if q.scale is not None and q.pow2 is True \
                    and 2.0 ** round(math.log2(q.scale)) != q.scale:
                raise CompressionError(f"{where}.quant.scale={q.scale!r}: pow2: true needs a "
                                       f"power of two (e.g. {2.0 ** round(math.log2(q.scale)):g})")

    def project(self, w, geom: CrossbarGeometry, scale: float | None = None,
                live_rows: np.ndarray | None = None, view: tuple[int, ...] | None = None):
        """Project a torch-layout weight (numpy or torch).

        ``scale`` overrides the spec's (to hold it fixed). ``live_rows``: the crossbar rows
        (inputs) that depend on the model's input, ranked first by the group structures
        (:mod:`compressor.connectivity`). ``view``: the shape the crossbars read ``w`` as
        (:func:`compressor.geometry.to_crossbar`, :mod:`compressor.layout`). Returns
        ``(w_proj, scale, keep)``: the projected weight (same type/dtype as ``w``), the scale
        (None if unquantized; with ``per_channel`` a float64 array, one per output channel)
        and the boolean keep mask in torch layout (numpy).
        """
        arr, back = as_float64(w)
        quant = None
        if self.quant is not None:
            q = self.quant
            # pow2 "fold" projects with free scales: the fold comes after the final snap
            quant = (q.bits, q.mapping, scale if scale is not None else q.scale,
                     q.pow2 is True, q.per_channel, q.exact_scale)
        out, s, keep = project_matrix(to_crossbar(arr, view), geom, self.structure, self.amount,
                                      quant, live_rows)
        # contiguous: a transposed view made every ADMM penalty step ~5x slower (profiled)
        return (back(np.ascontiguousarray(from_crossbar(out, arr.shape, view))), s,
                np.ascontiguousarray(from_crossbar(keep, arr.shape, view)))

    def relaxed(self, t: float, geom: CrossbarGeometry) -> Constraint:
        """The same constraint with its sparsity target a fraction ``t`` in (0, 1] of the way
        from dense to this one's, geometrically: ``keep**t`` of the groups, or
        ``rows**(1-t) · n**t`` nonzeros per column segment (rounded, never below ``n``).
        ``t = 1`` (or no sparsity) is this constraint. The level set is kept."""
        if not 0.0 < t <= 1.0:
            raise ValueError(f"relaxed: t={t!r} must be in (0, 1]")
        if t == 1.0 or self.structure is None:
            return self
        if self.structure in PER_SEGMENT:
            n = max(int(self.amount), round(geom.read_rows ** (1 - t) * self.amount ** t))
            return replace(self, amount=min(n, geom.read_rows))
        return replace(self, amount=float(self.amount) ** t)

    def describe(self) -> dict:
        """JSON-ready description (recipe vocabulary: ``keep`` or ``n``)."""
        d: dict = {}
        if self.structure is not None:
            key = "n" if self.structure in PER_SEGMENT else "keep"
            d["sparsity"] = {"structure": self.structure, key: self.amount}
        if self.quant is not None:
            q = self.quant
            d["quant"] = {"bits": q.bits, "mapping": q.mapping, "pow2": q.pow2}
            if q.scale is not None:
                d["quant"]["scale"] = q.scale
            if q.per_channel:   # only when set: fingerprints of older recipes stay
                d["quant"]["per_channel"] = True
            if q.exact_scale:   # likewise
                d["quant"]["exact_scale"] = True
        return d


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
