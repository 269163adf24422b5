"""Partition: each MVM layer's integer weight matrix -> crossbar blocks (x bit slices).

Compression-aware ("masked mapping"): the matrix is cut into column strips of at most
``xbar.cols`` output channels; inside a strip, input rows whose weights are all zero for
that strip are dropped before the remaining rows are cut into blocks of ``xbar.rows``. So an
all-zero crossbar block takes no crossbar, pruned rows are compacted away, and grouped /
depthwise convolutions cost only their own rows. With ``adc.adaptive`` each block gets the
ADC bits its weights need to be lossless."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.config import MAX_ADC_BITS
from simulator.crossbar import adaptive_adc_bits, encode_levels

from .errors import CompilerError
from .ir import LayerProgram, MVMLayer


@dataclass
class Block:
    layer: int                    # index in LayerProgram.layers
    strip: int
    rows: np.ndarray              # weight-row indices held, in crossbar row order
    segments: list                # (mem offset, crossbar row, length) contiguous runs
    levels: np.ndarray            # (arrays*slices, R, C) uint8
    cols: int
    adc_bits: int                 # -1: the config's; else explicit bits
    loc: tuple = None             # (tile, core, mvmu), set by placement


@dataclass
class Strip:
    layer: int
    index: int
    c0: int
    n: int
    blocks: list = field(default_factory=list)
    owner: tuple = None           # (tile, core) that reduces and requantizes


def runs(offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs of memory offsets: (offset, position, length)."""
    offsets = np.asarray(offsets, np.int64)
    if not len(offsets):
        return []
    starts = np.concatenate([[0], np.flatnonzero(np.diff(offsets) != 1) + 1])
    lengths = np.diff(starts, append=len(offsets))
    return list(zip(offsets[starts].tolist(), starts.tolist(), lengths.tolist()))


def partition_layer(idx: int, layer: MVMLayer, prog: LayerProgram, cfg) -> list[Strip]:
    t_in = prog.tensors[prog.storage(layer.inputs[0])]
    offsets = layer.row_offsets(t_in)
    W = layer.weight
    R, C = cfg.xbar.rows, cfg.xbar.cols
    strips, plan = [], []
    for s, c0 in enumerate(range(0, W.shape[1], C)):
        n = min(C, W.shape[1] - c0)
        kept = np.flatnonzero(np.any(W[:, c0:c0 + n] != 0, axis=1))
        strips.append(Strip(idx, s, c0, n))
        plan += [(s, c0, n, kept[r0:r0 + R]) for r0 in range(0, len(kept), R)]
    # The layer's cell levels in one array, blocks hold views: the program's copy then
    # frees them layer by layer (per-block arrays would stay in the heap: +1 GB on VGG-19).
    levels = np.empty((len(plan), cfg.arrays * cfg.slices, R, C), np.uint8)
    for k, (s, c0, n, rows) in enumerate(plan):
        w = np.zeros((R, C), np.int64)
        w[:len(rows), :n] = W[rows, c0:c0 + n]
        levels[k] = encode_levels(w, cfg.weight_bits, cfg.xbar.cell_bits, cfg.xbar.mapping)
        # only the driven rows and the converted columns count: under offset mapping the
        # rest hold the bias level, which no ADC ever sees. With a finite on/off ratio every
        # driven cell also conducts G_off: the ADC must hold those nominal currents too
        bits = adaptive_adc_bits(levels[k][:, :len(rows), :n], cfg) if cfg.adc.adaptive \
            else -1
        if bits > MAX_ADC_BITS:
            raise CompilerError(
                f"layer {layer.name!r}: adc.adaptive needs a {bits}-bit ADC to convert its "
                f"crossbars losslessly, at most {MAX_ADC_BITS} exist: lower xbar.rows, "
                f"xbar.active_rows, dac.bits or xbar.cell_bits")
        strips[s].blocks.append(Block(idx, s, rows, runs(offsets[rows]), levels[k], n, bits))
    return strips


def partition(prog: LayerProgram, cfg) -> dict[int, list[Strip]]:
    """Strips (with their blocks) of every MVM layer, keyed by layer index."""
    return {i: partition_layer(i, L, prog, cfg) for i, L in enumerate(prog.layers)
            if L.kind == "mvm"}
