"""Small hand-built programs: executable documentation of the ISA, and test fixtures.

* :func:`single_mvm` — one MVM on one MVMU: load, mvm, store.
* :func:`two_core_exchange` — core 0 computes, hands its result to core 1 through tile
  memory (valid/count sync); core 1 applies ReLU and a rounding shift (``shr``) and stores
  the output.
* :func:`two_tile_exchange` — the same across two tiles with send/receive over the NoC.
* :func:`deadlock` — a load of a word nobody stores.
"""
from __future__ import annotations

import numpy as np

from .config import MachineConfig, load_config
from .crossbar import encode_levels, weight_range
from .errors import ProgramError
from .isa import Fn, Op, RegisterLayout, assemble, instr
from .program import Program, TensorPort

EMPTY = assemble([instr(Op.HLT)])


def _levels(cfg: MachineConfig, w: np.ndarray) -> np.ndarray:
    full = np.zeros((cfg.xbar.rows, cfg.xbar.cols), np.int64)
    full[: w.shape[0], : w.shape[1]] = w
    return encode_levels(full, cfg.weight_bits, cfg.xbar.cell_bits, cfg.xbar.mapping)


def random_weights(cfg: MachineConfig, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    lo, hi = weight_range(cfg.weight_bits, cfg.xbar.mapping)
    return np.random.default_rng(seed).integers(lo, hi + 1, (rows, cols))


def single_mvm(cfg: MachineConfig, w: np.ndarray, adc_bits: int = -1) -> Program:
    """out = in @ w on MVMU 0 of core 0 of tile 0; in at addr 0, out after it."""
    rows, cols = w.shape
    lay = RegisterLayout.of(cfg)
    out_addr = rows
    code = assemble([
        instr(Op.LOAD, dst=lay.xin_of(0), imm=0, vec=rows, layer=0),
        instr(Op.MVM, mask=1, layer=0),
        instr(Op.STORE, src1=lay.xout_of(0), imm=out_addr, vec=cols, count=0, layer=0),
        instr(Op.HLT),
    ])
    cores = [code] + [EMPTY] * (cfg.tile.cores - 1)
    return Program(
        config=cfg, n_tiles=1, core_code=cores, tile_code=[EMPTY],
        mvmu_loc=[(0, 0, 0)], mvmu_levels=_levels(cfg, w)[None],
        mvmu_rows_used=[rows], mvmu_cols_used=[cols], mvmu_adc_bits=[adc_bits],
        mvmu_layer=[0],
        inputs=[TensorPort("x", 0, 0, (rows,), 1.0)],
        outputs=[TensorPort("y", 0, out_addr, (cols,), 1.0)],
        layers=[{"name": "mvm", "op": "MatMul"}])


def _producer_consumer(lay, rows, cols, mid, out, shift):
    """Core code of the exchange examples: the producer computes y = in @ w and stores it
    with consumer count 1 at ``mid``; the consumer waits for it, applies relu and a rounding
    shift right by ``shift`` (``shr``: half up) and stores the result at ``out``."""
    producer = assemble([
        instr(Op.LOAD, dst=lay.xin_of(0), imm=0, vec=rows, layer=0),
        instr(Op.MVM, mask=1, layer=0),
        instr(Op.STORE, src1=lay.xout_of(0), imm=mid, vec=cols, count=1, layer=0),
        instr(Op.HLT),
    ])
    consumer = assemble([
        instr(Op.LOAD, dst=lay.gp, imm=mid, vec=cols, layer=1),
        instr(Op.ALU, fn=Fn.RELU, dst=lay.gp, src1=lay.gp, vec=cols, layer=1),
        instr(Op.ALUI, fn=Fn.SHR, dst=lay.gp, src1=lay.gp, imm=shift, vec=cols, layer=1),
        instr(Op.STORE, src1=lay.gp, imm=out, vec=cols, count=0, layer=1),
        instr(Op.HLT),
    ])
    return producer, consumer


def two_core_exchange(cfg: MachineConfig, w: np.ndarray, shift: int = 0) -> Program:
    """Core 0: y = in @ w, stored with consumer count 1. Core 1: loads y (waiting for it),
    computes relu(y) shifted right by ``shift``, rounding half up (``shr``), stores the
    output."""
    rows, cols = w.shape
    lay = RegisterLayout.of(cfg)
    mid, out = rows, rows + cols
    c0, c1 = _producer_consumer(lay, rows, cols, mid, out, shift)
    cores = [c0, c1] + [EMPTY] * (cfg.tile.cores - 2)
    return Program(
        config=cfg, n_tiles=1, core_code=cores, tile_code=[EMPTY],
        mvmu_loc=[(0, 0, 0)], mvmu_levels=_levels(cfg, w)[None],
        mvmu_rows_used=[rows], mvmu_cols_used=[cols], mvmu_layer=[0],
        inputs=[TensorPort("x", 0, 0, (rows,), 1.0)],
        outputs=[TensorPort("y", 0, out, (cols,), 1.0)],
        layers=[{"name": "mvm", "op": "MatMul"}, {"name": "relu_shift", "op": "Relu"}])


def two_tile_exchange(cfg: MachineConfig, w: np.ndarray, dst_tile: int = 1,
                      shift: int = 0) -> Program:
    """Tile 0 core 0: y = in @ w; tile 0's control unit sends y to tile ``dst_tile``, whose
    control unit receives it; a core there applies relu and a rounding shift (``shr``) and
    stores the output."""
    if dst_tile < 1:   # tile 0 would wait on a message to itself: a deadlock, not an example
        raise ProgramError(f"dst_tile = {dst_tile}: must be >= 1 (tile 0 is the producer)")
    rows, cols = w.shape
    lay = RegisterLayout.of(cfg)
    mid, out = rows, rows + cols
    n_tiles = dst_tile + 1
    c0, c1 = _producer_consumer(lay, rows, cols, mid, out, shift)
    send = assemble([instr(Op.SEND, imm=mid, vec=cols, peer=dst_tile, layer=0),
                     instr(Op.HLT)])
    recv = assemble([instr(Op.RECV, imm=mid, vec=cols, peer=0, count=1, layer=1),
                     instr(Op.HLT)])
    cores = [EMPTY] * (n_tiles * cfg.tile.cores)
    cores[0] = c0
    cores[dst_tile * cfg.tile.cores] = c1
    tiles = [EMPTY] * n_tiles
    tiles[0], tiles[dst_tile] = send, recv
    return Program(
        config=cfg, n_tiles=n_tiles, core_code=cores, tile_code=tiles,
        mvmu_loc=[(0, 0, 0)], mvmu_levels=_levels(cfg, w)[None],
        mvmu_rows_used=[rows], mvmu_cols_used=[cols], mvmu_layer=[0],
        inputs=[TensorPort("x", 0, 0, (rows,), 1.0)],
        outputs=[TensorPort("y", dst_tile, out, (cols,), 1.0)],
        layers=[{"name": "mvm", "op": "MatMul"}, {"name": "relu_shift", "op": "Relu"}])


def deadlock(cfg: MachineConfig | None = None) -> Program:
    """Core 0 loads address 100, which nothing ever stores: can never finish."""
    cfg = cfg or load_config("small")
    lay = RegisterLayout.of(cfg)
    c0 = assemble([instr(Op.LOAD, dst=lay.gp, imm=100, vec=4), instr(Op.HLT)])
    return Program(config=cfg, n_tiles=1, core_code=[c0] + [EMPTY] * (cfg.tile.cores - 1),
                   tile_code=[EMPTY])
