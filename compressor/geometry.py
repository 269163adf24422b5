"""How a layer's weight lies on crossbars: the geometry every constraint is stated in.

Convention shared with the compiler (``compiler/`` partitions weights the same way):

* The *crossbar matrix* of a weight is its transpose view. Crossbar rows (word lines) are the
  layer's inputs, crossbar columns (bit lines) its outputs. For ``nn.Linear`` (``out × in``)
  that is ``W.T`` (``in × out``); for a convolution (``C_out × C_in × k_h × k_w``) it is
  ``W.permute(0, 2, 3, 1).reshape(C_out, -1).T``: ``k_h·k_w·C_in`` rows in ``(ky, kx, c_in)``
  order, channel-last, as ``compiler/ops/conv.py`` lays out the receptive field of a
  feature map stored ``(H, W, C)`` (1-D convolutions likewise: ``(kx, c_in)``). So the
  row-blocks here are the compiler's crossbars and a TinyADC column segment is one bit line.
* A fully connected layer after ``Flatten`` of a ``C × H × W`` map (``C, H·W > 1``; a
  ``Conv1d``'s ``C × L`` likewise) reads the map as the compiler stores it, ``(h, w, c)``:
  ``compiler/ops/shape.py`` records that order and ``compiler/ops/gemm.py`` permutes the
  weight's rows to match. With a TinyADC or ``aligned_rows`` structure its ``out × C·H·W``
  weight is read here as the ``out × C × H × W`` weight of a convolution whose kernel covers
  the whole map (the ``view`` of :func:`to_crossbar`; :func:`compressor.layout.layer_views`),
  so its rows run over ``(h, w, c)`` by the rule above and a column segment is one bit line
  of one of the compiler's crossbars. The other group structures keep torch's order: the
  compiler packs each column strip's nonzero rows, so ``k`` kept row-blocks fill ``k``
  crossbars in either order.
* The crossbar matrix is tiled into *row-blocks* of ``rows`` rows and *column-blocks* of
  ``cols`` columns; block ``(r, c)`` is one logical crossbar (all its bit slices). The last
  row-/column-block may be partial; the missing part counts as zero.
* A *crossbar row* is one matrix row inside one column-block (one word line of one crossbar);
  a *column segment* is one matrix column inside one row-block (one bit line: what one ADC
  conversion sees).

Integer weight levels (see :func:`level_range`): a logical weight is a signed integer ``q`` of
``weight_bits`` bits times a per-layer scale, stored over ``slices`` crossbars per array of
``2**cell_bits`` conductance levels each (the simulator's ``n_slices``). ``differential``
mapping stores ``max(q, 0)`` and ``max(-q, 0)`` on a positive and a negative array, so the
level set is symmetric, ``|q| <= 2**(weight_bits-1) - 1``, and each array holds a
``weight_bits - 1``-bit magnitude: ``slices = ceil((weight_bits - 1) / cell_bits)``.
``offset`` mapping stores ``q + 2**(weight_bits-1)`` unsigned and subtracts a reference
column, so the full two's-complement range ``-2**(weight_bits-1) <= q <= 2**(weight_bits-1)
- 1`` is available, over ``slices = ceil(weight_bits / cell_bits)``. In both, conductance
``g_min_us`` is level 0 and ``g_max_us`` the top level of a cell; the linear map from level to
conductance does not change the weight lattice, only the scale.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simulator.crossbar import MAPPINGS, n_slices, row_groups, weight_range

from .errors import CompressionError


def level_range(bits: int, mapping: str = "differential") -> tuple[int, int]:
    """Smallest and largest integer level of a signed ``bits``-bit weight under ``mapping``.

    ``differential``: ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)`` (symmetric);
    ``offset``: ``(-2**(bits-1), 2**(bits-1) - 1)`` (two's complement).
    """
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or bits < 1:
        raise CompressionError(f"bits={bits!r}: must be an integer >= 1")
    if mapping not in MAPPINGS:
        raise CompressionError(f"mapping={mapping!r}: must be one of {', '.join(MAPPINGS)}")
    return weight_range(int(bits), mapping)


#: Largest crossbar side (rows or columns), as the simulator's config allows.
MAX_XBAR_SIDE = 1 << 16


@dataclass(frozen=True, slots=True)
class CrossbarGeometry:
    """The crossbar a weight is mapped onto, as far as compression needs to know it."""

    rows: int = 128
    """Word lines per crossbar (inputs per block), count."""
    cols: int = 128
    """Bit lines per crossbar (outputs per block), count."""
    cell_bits: int = 2
    """Bits stored per cell (``2**cell_bits`` conductance levels), bits."""
    weight_bits: int = 8
    """Width of the signed integer weight, bits; stored over ``slices`` crossbars."""
    mapping: str = "differential"
    """Signed-weight encoding: ``differential`` (two arrays) or ``offset`` (reference column)."""
    g_min_us: float = 1.0
    """Conductance of cell level 0, microsiemens (as ``simulator.config.XbarConfig``)."""
    g_max_us: float = 100.0
    """Conductance of the top cell level, microsiemens."""
    active_rows: int | None = None
    """Word lines one read drives (as ``simulator.config.XbarConfig``); ``None``: all
    ``rows``. TinyADC's column segments are then reads, not whole crossbars."""

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "cell_bits", "weight_bits"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise CompressionError(f"geometry.{name}={v!r}: must be an integer >= 1")
        for name in ("rows", "cols"):   # the simulator's limit: no array is larger
            if getattr(self, name) > MAX_XBAR_SIDE:
                raise CompressionError(f"geometry.{name}={getattr(self, name)}: must be at "
                                       f"most {MAX_XBAR_SIDE}")
        for name in ("g_min_us", "g_max_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) \
                    or not math.isfinite(v):
                raise CompressionError(f"geometry.{name}={v!r}: must be a finite number")
        if self.weight_bits < 2 or self.weight_bits > 32:
            raise CompressionError(
                f"geometry.weight_bits={self.weight_bits}: must be in 2..32 (a signed weight)")
        if self.cell_bits > self.weight_bits:
            raise CompressionError(
                f"geometry.cell_bits={self.cell_bits}: must be <= weight_bits={self.weight_bits}")
        if self.mapping not in MAPPINGS:
            raise CompressionError(
                f"geometry.mapping={self.mapping!r}: must be one of {', '.join(MAPPINGS)}")
        if not self.g_min_us >= 0.0:
            raise CompressionError(f"geometry.g_min_us={self.g_min_us}: must be >= 0")
        if not self.g_max_us > self.g_min_us:
            raise CompressionError(
                f"geometry.g_max_us={self.g_max_us}: must be > g_min_us={self.g_min_us}")
        a = self.active_rows
        if a is not None and (not isinstance(a, (int, np.integer)) or isinstance(a, bool)
                              or not 1 <= a <= self.rows):
            raise CompressionError(f"geometry.active_rows={a!r}: must be an integer in "
                                   f"1..rows={self.rows}, or null for every row")
        if a == self.rows:   # one read of every row: the same geometry, the same fingerprint
            object.__setattr__(self, "active_rows", None)

    @classmethod
    def from_config(cls, cfg: Any) -> CrossbarGeometry:
        """Read a machine config (duck-typed, e.g. ``simulator.config.MachineConfig``):
        ``cfg.xbar.{rows, cols, cell_bits, mapping}``, ``cfg.weight_bits``, and
        ``cfg.xbar.g_min_us/g_max_us`` when present."""
        x = cfg.xbar
        extra = {k: getattr(x, k) for k in ("g_min_us", "g_max_us", "active_rows")
                 if getattr(x, k, None) is not None}
        return cls(rows=x.rows, cols=x.cols, cell_bits=x.cell_bits,
                   weight_bits=cfg.weight_bits, mapping=x.mapping, **extra)

    @classmethod
    def from_dict(cls, d: dict, where: str = "geometry") -> CrossbarGeometry:
        """Build from a mapping (a recipe's ``geometry:`` section); unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CompressionError(
                f"{where}.{min(unknown)}: unknown field; allowed: "
                f"{', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except CompressionError as e:  # name the field as the caller knows it
            msg = str(e)
            if where != "geometry" and msg.startswith("geometry."):
                raise CompressionError(where + msg[len("geometry"):]) from None
            raise

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["active_rows"] is None:   # added later: left out at its default, so recipes'
            del d["active_rows"]       # fingerprints (checkpoint names) stay as they were
        return d

    @property
    def read_rows(self) -> int:
        """Rows one read drives: ``active_rows``, or all ``rows``."""
        return self.active_rows or self.rows

    def reads(self) -> list[tuple[int, int]]:
        """The row ranges of one crossbar that are read one after another."""
        return row_groups(self.rows, self.active_rows)

    @property
    def slices(self) -> int:
        """Crossbars (bit slices) per array one logical weight occupies (module doc)."""
        return n_slices(self.weight_bits, self.cell_bits, self.mapping)

    @property
    def levels(self) -> tuple[int, int]:
        """Integer weight range ``(qmin, qmax)`` this geometry can store (see module doc)."""
        return level_range(self.weight_bits, self.mapping)

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(row_blocks, col_blocks)`` of a weight of ``shape`` (torch layout, ``C_out`` first)."""
        k, n = matrix_shape(shape)
        return -(-k // self.rows), -(-n // self.cols)

    def blocks(self, m: np.ndarray) -> np.ndarray:
        """Zero-padded crossbar matrix ``m`` (``K × N``) as a ``(rb, rows, cb, cols)`` array."""
        rb, cb = -(-m.shape[0] // self.rows), -(-m.shape[1] // self.cols)
        p = np.zeros((rb * self.rows, cb * self.cols), dtype=m.dtype)
        p[: m.shape[0], : m.shape[1]] = m
        return p.reshape(rb, self.rows, cb, self.cols)

    def unblock(self, b: np.ndarray, k: int, n: int) -> np.ndarray:
        """Inverse of :meth:`blocks`: the ``k × n`` crossbar matrix."""
        rb, r, cb, c = b.shape
        return b.reshape(rb * r, cb * c)[:k, :n]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(K, N)`` of the crossbar matrix of a weight of torch ``shape`` (``N = C_out``)."""
    if len(shape) < 2:
        raise CompressionError(f"weight shape {tuple(shape)}: need at least 2 dimensions")
    return int(np.prod(shape[1:])), int(shape[0])


def to_crossbar(w, view: tuple[int, ...] | None = None):
    """Crossbar matrix (``K × C_out``) of a torch-layout weight; numpy array or torch tensor.

    A convolution weight ``(C_out, C_in, *kernel)`` is read channel-last: its rows run over
    ``(*kernel, c_in)`` (the compiler's order; see the module doc). ``view``: the shape to
    read ``w`` as first, e.g. ``(out, C, H, W)`` for a Linear after Flatten of a map (module
    doc). A view where possible.
    """
    if view is not None:
        w = w.reshape(view)
    if w.ndim >= 3:
        w = _channel_last(w)
    return w.reshape(w.shape[0], math.prod(w.shape[1:])).T   # not -1: C_out may be 0


def from_crossbar(m, shape: tuple[int, ...], view: tuple[int, ...] | None = None):
    """Inverse of :func:`to_crossbar`: the torch-layout weight of ``shape`` (read as
    ``view``, if given)."""
    shape = tuple(int(n) for n in shape)
    if view is not None:
        return from_crossbar(m, view).reshape(shape)
    if len(shape) < 3:
        return m.T.reshape(shape)
    w = m.T.reshape((shape[0], *shape[2:], shape[1]))  # (C_out, *kernel, C_in)
    order = (0, w.ndim - 1, *range(1, w.ndim - 1))
    return w.permute(*order) if hasattr(w, "permute") else w.transpose(order)


def _channel_last(w):
    """``(C_out, C_in, *kernel)`` -> ``(C_out, *kernel, C_in)`` (numpy or torch, a view)."""
    order = (0, *range(2, w.ndim), 1)
    return w.permute(*order) if hasattr(w, "permute") else w.transpose(order)


def occupancy(m: np.ndarray, geom: CrossbarGeometry) -> dict:
    """How a crossbar matrix ``m`` (``K × N``) occupies the crossbars (JSON-ready).

    ``blocks_nonzero`` crossbars of ``blocks_total`` hold a nonzero (``nonzero_blocks`` lists
    their ``[row_block, col_block]``); ``rows_nonzero`` of ``rows_total`` crossbar rows (word
    lines) and ``segments_nonzero`` of ``segments_total`` column segments (bit lines) are
    used; ``max_nonzeros_per_segment`` bounds every column sum (TinyADC's ``n``): of one
    read's rows where ``geom.active_rows`` splits a crossbar's rows into reads, as TinyADC
    states it. Counted on the fixed crossbar grid, before the compiler packs kept rows.
    """
    nz = geom.blocks(np.asarray(m) != 0)
    real = geom.blocks(np.ones(np.shape(m), dtype=bool))
    blocks = nz.any(axis=(1, 3))
    per_segment = nz.sum(axis=1)
    per_read = np.stack([nz[:, r0:r1].sum(axis=1) for r0, r1 in geom.reads()])
    return {
        "matrix": [int(np.shape(m)[0]), int(np.shape(m)[1])],
        "grid": [int(blocks.shape[0]), int(blocks.shape[1])],
        "density": float(np.count_nonzero(m) / max(1, np.size(m))),
        "blocks_total": int(blocks.size),
        "blocks_nonzero": int(blocks.sum()),
        "nonzero_blocks": [[int(r), int(c)] for r, c in zip(*np.nonzero(blocks))],
        "rows_total": int(real.any(axis=3).sum()),
        "rows_nonzero": int(nz.any(axis=3).sum()),
        "segments_total": int(real.any(axis=1).sum()),
        "segments_nonzero": int((per_segment > 0).sum()),
        "max_nonzeros_per_segment": int(per_read.max()) if per_read.size else 0,
    }
