"""Bit-exact functional model of one MVMU: bit-sliced weights, bit-serial inputs, per-column
ADCs, shift-and-add.

Weights are signed ``weight_bits`` integers stored as cell levels (0 .. 2**cell_bits - 1)
in ``slices`` crossbars per array (:func:`n_slices`), slice k holding bits
[k*cell_bits, (k+1)*cell_bits):

* ``differential``: a positive and a negative array, w = pos - neg, each holding a
  magnitude; weights are symmetric, |w| <= 2**(weight_bits-1) - 1, so the magnitude has
  weight_bits - 1 bits and ``slices = ceil((weight_bits - 1) / cell_bits)``;
* ``offset``: one array holding w + 2**(weight_bits-1) (two's-complement range, weight_bits
  bits, ``slices = ceil(weight_bits / cell_bits)``); the bias times the sum of the inputs is
  removed digitally (ISAAC counts the ones of each input step).

Inputs are two's-complement ``input_bits`` integers fed bit-serially: first the sign bit as
a 1-bit step whose result is *subtracted* (weight -2**(input_bits-1)), then the remaining
bits ``dac_bits`` at a time, unsigned. Each step, each array of each slice yields per column
``v = sum_rows digit * level``; the ADC turns v into a code; shift-and-add combines steps
and slices. With an ideal ADC the result is exactly ``x @ W``. Where ``active_rows`` limits
the word lines one read drives, each step is several reads of that many rows (from row 0),
each read's sums go through the ADC on their own, and the codes are added.

Speed: all steps and all vectors of a batch go through one matrix product (float32 is
exact while every column sum stays below 2**24); only the ADC needs per-step sums.
"""
from __future__ import annotations

import numpy as np

from .errors import SimulationError


def step_plan(input_bits: int, dac_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per input step: bit offset, width and signed weight. The sign step comes first."""
    shifts, widths, weights = [input_bits - 1], [1], [-(1 << (input_bits - 1))]
    s = 0
    while s < input_bits - 1:
        w = min(dac_bits, input_bits - 1 - s)
        shifts.append(s)
        widths.append(w)
        weights.append(1 << s)
        s += w
    return (np.array(shifts, np.int64), np.array(widths, np.int64),
            np.array(weights, np.int64))


MAPPINGS = ("differential", "offset")


def weight_range(weight_bits: int, mapping: str) -> tuple[int, int]:
    """Smallest and largest integer weight a mapping stores: differential is symmetric
    (``±(2**(b-1) - 1)``), offset is two's complement (``-2**(b-1) .. 2**(b-1) - 1``)."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; allowed: {', '.join(MAPPINGS)}")
    half = 1 << (weight_bits - 1)
    return (-(half - 1) if mapping == "differential" else -half), half - 1


def stored_bits(weight_bits: int, mapping: str) -> int:
    """Bits of a weight each array holds: a differential array the magnitude
    (``weight_bits - 1``), offset all ``weight_bits``."""
    return weight_bits - 1 if mapping == "differential" else weight_bits


def n_slices(weight_bits: int, cell_bits: int, mapping: str) -> int:
    """Crossbars per array one weight spans: its ``stored_bits`` over the cell's."""
    return max(1, -(-stored_bits(weight_bits, mapping) // cell_bits))


def top_weight_level(weight_bits: int, cell_bits: int, mapping: str) -> int:
    """The largest level any weight puts in a cell: the cell's top level, or less where a
    weight holds fewer bits than a cell (a 4-bit differential weight's magnitude on 4-bit
    cells reaches 7, not 15)."""
    return (1 << min(cell_bits, stored_bits(weight_bits, mapping))) - 1


def encode_levels(weights: np.ndarray, weight_bits: int, cell_bits: int,
                  mapping: str) -> np.ndarray:
    """Signed integer weights (R, C) -> cell levels (arrays*slices, R, C) uint8."""
    w = np.asarray(weights, dtype=np.int64)
    lo, hi = weight_range(weight_bits, mapping)
    if w.size and (w.min() < lo or w.max() > hi):
        raise ValueError(f"weights outside the {mapping} {weight_bits}-bit range [{lo}, {hi}]: "
                         f"min {w.min()}, max {w.max()}")
    slices = n_slices(weight_bits, cell_bits, mapping)
    if mapping == "differential":
        parts = [np.maximum(w, 0), np.maximum(-w, 0)]
    else:                                   # offset (weight_range has checked the name)
        parts = [w + (1 << (weight_bits - 1))]
    mask = (1 << cell_bits) - 1
    out = np.empty((len(parts) * slices,) + w.shape, dtype=np.uint8)
    for a, p in enumerate(parts):
        for k in range(slices):
            out[a * slices + k] = (p >> (k * cell_bits)) & mask
    return out


def decode_levels(levels: np.ndarray, weight_bits: int, cell_bits: int,
                  mapping: str) -> np.ndarray:
    """Cell levels (arrays*slices, R, C) -> signed integer weights (R, C)."""
    slices = n_slices(weight_bits, cell_bits, mapping)
    lv = levels.astype(np.int64)
    scale = (1 << (cell_bits * np.arange(slices, dtype=np.int64)))[:, None, None]
    pos = (lv[:slices] * scale).sum(0)
    if mapping == "differential":
        return pos - (lv[slices:2 * slices] * scale).sum(0)
    return pos - (1 << (weight_bits - 1))


def wrap_inputs(x: np.ndarray, input_bits: int) -> np.ndarray:
    """What an ``input_bits``-wide input register holds of int64 values: two's-complement
    wrap-around. The bit-serial DAC reads only those bits, so every MVM path (bit-serial,
    lossless shortcut, fused) wraps its inputs alike. Compiled programs clip before every
    MVM; only hand-written ones reach this."""
    half = 1 << (input_bits - 1)
    return ((np.asarray(x, dtype=np.int64) + half) & ((half << 1) - 1)) - half


def row_groups(rows: int, active_rows: int | None) -> list[tuple[int, int]]:
    """The row ranges one input step reads one after another: ``active_rows`` word lines at
    a time from row 0 (None: all ``rows`` in one read)."""
    a = max(1, rows if active_rows is None else active_rows)
    return [(r0, min(r0 + a, rows)) for r0 in range(0, max(rows, 1), a)]


def column_max_sums(levels: np.ndarray, step_bits: int,
                    active_rows: int | None = None) -> np.ndarray:
    """Largest possible ADC input per (read, array*slice, column): the widest input digit
    (``2**step_bits - 1``; ``SimConfig.step_bits``) times the sum of the levels a read drives.
    One read (the first axis) unless ``active_rows`` splits the rows. Float levels (nominal
    conductances) give float sums."""
    dtype = None if np.issubdtype(levels.dtype, np.floating) else np.int64
    return ((1 << step_bits) - 1) * np.stack(
        [levels[:, r0:r1].sum(axis=1, dtype=dtype)
         for r0, r1 in row_groups(levels.shape[1], active_rows)])


def code_bits(max_sum) -> np.ndarray:
    """Bits that hold every code up to ``max_sum`` (a scalar or per column):
    ceil(log2(code + 1)). An analog (float) sum is rounded to the nearest code first, as
    the ADC input is (half up: never below ``column_sums``' rounding, so never clipped);
    whole sums are unchanged. :func:`lossless_adc_bits` and the ``scale`` ADC's span both
    use it, so adaptive bits and the span agree."""
    code = np.floor(np.asarray(max_sum, dtype=np.float64) + 0.5)
    return np.ceil(np.log2(code + 1)).astype(np.int64)


def lossless_adc_bits(levels: np.ndarray, step_bits: int,
                      active_rows: int | None = None) -> int:
    """ADC bits that convert every column of these crossbars without loss:
    ceil(log2(max column sum + 1)) over every read (ISAAC; the basis of TinyADC). At least 1.
    Float levels (nominal conductances) give analog sums, which the ADC rounds to the
    nearest code: the bits then hold the largest sum rounded, so it never clips."""
    return _lossless_bits(column_max_sums(levels, step_bits, active_rows))


def _lossless_bits(col_max: np.ndarray) -> int:
    """:func:`lossless_adc_bits` of crossbars whose :func:`column_max_sums` are ``col_max``."""
    return max(1, int(code_bits(col_max.max(initial=0))))


def adaptive_adc_bits(levels: np.ndarray, cfg) -> int:
    """The bits ``adc.adaptive`` gives an MVMU whose driven rows and converted columns hold
    ``levels`` (arrays*slices, rows, cols) on ``cfg``'s machine: lossless for its nominal
    currents, the integer levels plus, with a finite ``noise.on_off_ratio``, the G_off every
    driven cell conducts (sized on the levels alone, an ADC in ``clip`` mode clipped it)."""
    from .noise import nominal_conductances
    nominal = nominal_conductances(levels, cfg)
    return lossless_adc_bits(levels if nominal is None else nominal, cfg.step_bits,
                             cfg.xbar.active_rows)


def adc_convert(v: np.ndarray, bits: int | None, mode: str,
                col_max: np.ndarray | None = None) -> np.ndarray:
    """ADC on column sums ``v`` (..., n_columns). ``bits`` None = ideal.

    ``clip``: saturate at 2**bits - 1. ``scale``: each column's ADC spans that column's
    largest possible (nominal) sum ``col_max`` rounded to a code (:func:`code_bits`), but
    never less than ``2**bits - 1`` (its LSB is at most one level: a column with little or
    no weight converts like a clipping ADC, so a stuck-on cell or noise there still
    shows); keep the top ``bits`` bits (drop, i.e. truncate, the LSBs the range does not
    fit) and saturate at the top of the span (only an analog sum, with noise or stuck
    cells, can exceed it)."""
    if bits is None:
        return v
    if mode == "clip":
        return np.minimum(v, (1 << bits) - 1)
    if mode == "scale":
        need = np.maximum(code_bits(col_max), bits)
        drop = need - bits
        top = ((1 << need) - 1) >> drop << drop
        # saturate before the cast: an analog sum past 2**63 would wrap to a negative code
        return ((np.minimum(v, top).astype(np.int64) >> drop) << drop).astype(v.dtype,
                                                                          copy=False)
    raise ValueError(f"unknown ADC mode {mode!r}; allowed: clip, scale")


class MVMUModel:
    """One MVMU's crossbars, prepared for fast repeated bit-exact MVMs.

    ``levels``: (arrays*slices, R, C) uint8. ``conductance``: optional float levels after
    programming variation / stuck cells (same shape); then column sums are analog and the
    ADC rounds them to the nearest code. ``nominal``: the float levels a scale-mode ADC's
    span is designed for (``noise.nominal_conductances``: the programmed levels with the
    finite on/off ratio's G_off, which every cell conducts; faults and variation are what
    the design does not know); default ``levels``.
    """

    def __init__(self, levels: np.ndarray, *, weight_bits: int, input_bits: int,
                 cell_bits: int, dac_bits: int, mapping: str, adc_bits: int | None,
                 adc_mode: str, conductance: np.ndarray | None = None,
                 read_sigma: float = 0.0, read_rng: np.random.Generator | None = None,
                 rows_used: int | None = None, cols_used: int | None = None,
                 active_rows: int | None = None, exact_shortcut: bool = True,
                 nominal: np.ndarray | None = None):
        # Only the used region is wired: rows beyond ``rows_used`` are not driven (their
        # DACs are off) and columns beyond ``cols_used`` have no ADC (they read 0) -- the
        # same counts the timing and energy model charge.
        self.full_rows, self.full_cols = levels.shape[1], levels.shape[2]
        ru = self.full_rows if rows_used is None else rows_used
        cu = self.full_cols if cols_used is None else cols_used
        levels = levels[:, :ru, :cu]
        if conductance is not None:
            conductance = conductance[:, :ru, :cu]
        if nominal is not None:
            nominal = nominal[:, :ru, :cu]
        self.n_arr, self.rows, self.cols = levels.shape
        self.slices = n_slices(weight_bits, cell_bits, mapping)
        self.arrays = self.n_arr // self.slices
        self.weight_bits, self.input_bits = weight_bits, input_bits
        self.cell_bits, self.dac_bits, self.mapping = cell_bits, dac_bits, mapping
        self.adc_bits, self.adc_mode = adc_bits, adc_mode
        self.read_sigma, self.read_rng = read_sigma, read_rng
        self.shifts, self.widths, step_w = step_plan(input_bits, dac_bits)
        self.analog = conductance is not None or read_sigma > 0
        g = conductance if conductance is not None else levels
        # Reads per input step (``active_rows`` word lines each); each read's column sums
        # go through the ADC on their own and are added digitally.
        self.groups = row_groups(self.rows, active_rows)
        step_bits = int(self.widths.max())
        col_max = column_max_sums(levels if nominal is None else nominal, step_bits,
                                  active_rows)
        # (R, arrays*slices*C): one matrix for every array and slice.
        big = int(col_max.max(initial=0))
        self.dtype = np.float32 if big < (1 << 24) and not self.analog else np.float64
        self.matrix = np.ascontiguousarray(
            np.transpose(g, (1, 0, 2)).reshape(self.rows, -1).astype(self.dtype))
        self.col_max = col_max.reshape(-1)                   # (reads * arrays*slices*C)
        # When the ADC provably never loses information on these weights (ideal, or at
        # least the lossless bits) and no analog effect is on, every conversion is the
        # identity and the MVM is exactly x @ W: one float64 product (exact, |sum| < 2**53)
        # instead of one per input step and slice.
        # (col_max holds the levels' sums unless a nominal span was given)
        self.lossless = exact_shortcut and not self.analog and (
            adc_bits is None or (_lossless_bits(col_max) if nominal is None else
                                 lossless_adc_bits(levels, step_bits, active_rows)) <= adc_bits)
        sign = np.array([1, -1][: self.arrays], np.int64)
        slice_w = 1 << (cell_bits * np.arange(self.slices, dtype=np.int64))
        # Combined digital weight of each (array, slice) output, and of each input step, in
        # the float64 the shift-and-add runs in (exact: powers of two).
        self.arr_slice_w = (sign[:, None] * slice_w[None, :]).reshape(-1).astype(np.float64)
        self.step_w = step_w.astype(np.float64)
        if self.lossless:
            # decode_levels in one float64 product (exact: whole numbers below 2**53)
            self.wmat = (self.arr_slice_w @ levels.reshape(self.n_arr, -1)).reshape(
                self.rows, self.cols)
            if mapping == "offset":
                self.wmat -= 1 << (weight_bits - 1)
        self.top_level = (1 << cell_bits) - 1

    def digits(self, x: np.ndarray) -> np.ndarray:
        """Bit planes of two's-complement inputs: (steps, B, R) small non-negative ints."""
        u = np.asarray(x, dtype=np.int64) & ((1 << self.input_bits) - 1)
        masks = (1 << self.widths) - 1
        return (u[None, :, :] >> self.shifts[:, None, None]) & masks[:, None, None]

    def column_sums(self, x: np.ndarray) -> np.ndarray:
        """ADC inputs: (steps, B, reads, arrays*slices, C), whole numbers as floats (the
        analog sums rounded to the nearest code when analog effects are on): ``mvm`` adds
        them in float64, so converting to int64 and back was only a cost (an eighth of a
        noisy simulation, profiled)."""
        d = self.digits(x)
        s, b, r = d.shape
        flat = d.reshape(s * b, r).astype(self.dtype)
        if len(self.groups) == 1:
            v = flat @ self.matrix
        else:
            v = np.stack([flat[:, r0:r1] @ self.matrix[r0:r1] for r0, r1 in self.groups], 1)
        v = v.reshape(s, b, len(self.groups), self.n_arr, self.cols)
        if self.read_sigma > 0:
            # Output-referred read noise (aihwkit style): std = sigma * ||digits|| * top
            # level, per read (the digits that read drives).
            sq = d.astype(np.float64) ** 2
            norm = np.sqrt(np.stack([sq[..., r0:r1].sum(-1) for r0, r1 in self.groups],
                                    -1))[..., None, None]
            v = v + self.read_rng.standard_normal(v.shape) * (
                self.read_sigma * self.top_level * norm)
        if self.analog:
            v = np.rint(v, out=v)
            return np.maximum(v, 0.0, out=v)
        return v

    def mvm(self, x: np.ndarray) -> np.ndarray:
        """Bit-exact MVM of a batch of input vectors ``x`` (B, R) -> (B, C) int64."""
        x = wrap_inputs(np.asarray(x)[:, :self.rows], self.input_bits)
        if self.lossless:
            y = np.rint(x.astype(np.float64) @ self.wmat).astype(np.int64)
            return self._pad_cols(y)
        v = self.column_sums(x)
        s, b = v.shape[:2]
        codes = adc_convert(v.reshape(s, b, -1), self.adc_bits, self.adc_mode, self.col_max)
        if len(self.groups) > 1:   # the reads of a step are added digitally
            codes = codes.reshape(s, b, len(self.groups), -1).sum(2, dtype=np.float64)
        # Shift-and-add over steps (signed step weights) and over arrays/slices; float64
        # is exact here (|sum| < 2**53).
        per_step = self.step_w @ codes.reshape(s, -1).astype(np.float64, copy=False)
        y = self.arr_slice_w @ per_step.reshape(b, self.n_arr, self.cols)
        if self.analog and not np.abs(y).max(initial=0.0) < 2.0 ** 62:
            # analog sums (noise, an ideal ADC) can exceed any integer word
            raise SimulationError(
                f"an MVM output reached {np.abs(y).max():.3g}, past what int64 holds: "
                f"the noise settings (program_sigma, read_sigma) are too large for this "
                f"ADC (an ideal ADC does not saturate)")
        y = np.rint(y).astype(np.int64)
        if self.mapping == "offset":
            y = y - (1 << (self.weight_bits - 1)) * x.sum(axis=1, keepdims=True)
        return self._pad_cols(y)

    def _pad_cols(self, y: np.ndarray) -> np.ndarray:
        if self.cols < self.full_cols:
            y = np.concatenate([y, np.zeros((len(y), self.full_cols - self.cols), np.int64)], 1)
        return y
