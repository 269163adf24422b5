"""The compiler as a list of named passes, each a function from one structure to the next.

    frontend   ONNX -> Graph: static shapes, constants and batch norm folded, QDQ recognised
    calibrate  Graph -> per-tensor |max| (onnxruntime on calibration inputs)
    lower      Graph -> LayerProgram: quantized MVM and VFU layers (one module per op)
    partition  MVM layers -> column strips -> crossbar blocks (zero rows/blocks dropped)
    place      blocks -> MVMUs/cores/tiles, VFU layers -> cores (snake order over the mesh)
    generate   -> Program: memory layout, loop-nest code per core, transfers per tile
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from simulator.config import MachineConfig, load_config
from simulator.program import Program

from .codegen import generate
from .errors import CompilerError
from .frontend import Graph, frontend, load_model
from .ir import LayerProgram
from .lower import lower
from .partition import partition
from .place import place
from .quantize import calibrate


def _progress(enabled: bool):
    t0 = time.perf_counter()

    def say(stage: str):
        if enabled:
            print(f"  [{time.perf_counter() - t0:6.2f}s] {stage}", flush=True)
    return say


def compile_model(model: str | Path | onnx.ModelProto, cfg: MachineConfig | str | None = None,
                  *, calibration: dict[str, np.ndarray] | None = None,
                  progress: bool = False, return_ir: bool = False, headroom: float = 2.0,
                  replicate: int = 1, vfu_cores: str = "own"):
    """Compile an ONNX model (path or ModelProto) for machine ``cfg`` (a MachineConfig, a
    preset name or a .yaml path; None: puma). ``calibration``: inputs (a dict of arrays,
    batch first, keyed by graph input name) that set the activation ranges; default (None):
    a few seeded standard-normal samples. ``headroom``: range
    kept above the calibrated |max| of each activation (2 = one bit). ``replicate``: up to
    this many copies of the convolutions' crossbars, each computing a band of output rows
    (pipeline balance; 1 = none; see :mod:`compiler.place`). ``vfu_cores``: "own" gives
    pooling, residual adds and other VFU layers a core of their own (faster), "shared"
    packs them onto the MVM layers' cores (fewer cores and tiles; see :mod:`compiler.place`).
    Returns the Program, or (Program, LayerProgram, Graph) with ``return_ir``."""
    if isinstance(headroom, bool) or not isinstance(headroom, numbers.Real) \
            or not math.isfinite(headroom) or headroom <= 0:
        # 0 or NaN divided every scale and was blamed on the calibration inputs
        raise CompilerError(f"headroom = {headroom!r}: must be a finite number > 0 (the range "
                            f"kept above each calibrated |max|; 2 = one bit, below 1 clips)")
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise CompilerError(f"model: a path to an .onnx file or an onnx.ModelProto, got "
                            f"{type(model).__name__}")
    if calibration is not None and not isinstance(calibration, Mapping):
        raise CompilerError(f"calibration: a dict of graph input name -> inputs (batch "
                            f"first), or None for seeded random inputs; got "
                            f"{type(calibration).__name__}")
    cfg = load_config(cfg) if not isinstance(cfg, MachineConfig) else cfg
    say = _progress(progress)
    is_path = not isinstance(model, onnx.ModelProto)
    name = Path(model).stem if is_path else (model.graph.name or "model")
    proto = load_model(model) if is_path else model
    mismatch = compressed_for_other_crossbars(proto, cfg)
    if mismatch:
        warnings.warn(f"{name}: compressed for other crossbars than this machine's "
                      f"({mismatch}): its crossbar-aligned structures and TinyADC bounds "
                      f"do not carry over", stacklevel=2)
    graph: Graph = frontend(proto, name)
    say(f"frontend: {len(graph.nodes)} nodes")
    absmax, _ = calibrate(graph, calibration)
    say("calibrate")
    lp: LayerProgram = lower(graph, absmax, cfg, headroom)
    say(f"lower: {len(lp.layers)} layers")
    strips = partition(lp, cfg)
    say(f"partition: {sum(len(s.blocks) for ss in strips.values() for s in ss)} MVMUs")
    pl = place(lp, strips, cfg, replicate, vfu_cores)
    # tiles in use (ids follow the mesh's snake order, so the largest id + 1 can be more)
    tiles = len(set().union(*pl.layer_tiles.values()))
    say(f"place: {tiles} tiles" + (f", {len(pl.all_blocks())} MVMUs with copies"
                                   if pl.bands else ""))
    prog = generate(lp, pl, cfg, mapping_summary(lp, strips, pl, cfg))
    prog.mapping["cores"] = len(prog.cores_used())    # the report's count, code included
    prog.mapping["tiles"] = len(prog.tiles_used())    # placement may skip tiles
    say(f"generate: {prog.n_instructions} instructions")
    return (prog, lp, graph) if return_ir else prog


#: Geometry fields (``compressor.CrossbarGeometry``) that a structured constraint's promise
#: rests on, with the machine's field: which inputs share a crossbar column (and a read),
#: and what one cell of one array holds.
_STRUCTURAL = {"rows": "xbar.rows", "cols": "xbar.cols", "active_rows": "xbar.active_rows",
               "cell_bits": "xbar.cell_bits", "mapping": "xbar.mapping"}


def compressed_for_other_crossbars(proto: onnx.ModelProto, cfg: MachineConfig) -> str:
    """``"xbar.rows 128 -> 64, ..."`` where a model the compressor exported with structured
    layers (its ``xbarsim.compressor`` metadata) was laid out for crossbars other than
    ``cfg``'s; "" otherwise (no metadata, quantization only, or the same crossbars)."""
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        geometry = json.loads(props["xbarsim.compressor"])["geometry"]
        structured = any(json.loads(v).get("constraint", {}).get("sparsity")
                         for k, v in props.items() if k.startswith("xbarsim.layer."))
    except (KeyError, TypeError, ValueError, AttributeError):
        return ""    # not the compressor's (or another version's) metadata: nothing to check
    if not structured:
        return ""
    diffs = []
    for field, key in _STRUCTURAL.items():
        section, attr = key.split(".")
        have = getattr(getattr(cfg, section), attr)
        if geometry.get(field) != have:
            diffs.append(f"{key} {geometry.get(field)} -> {have}")
    return ", ".join(diffs)


def mapping_summary(lp: LayerProgram, strips, pl, cfg) -> dict:
    xb = cfg.arrays * cfg.slices
    layers = []
    total_cells = used_cells = 0
    for i, L in enumerate(lp.layers):
        if L.kind != "mvm":
            continue
        blocks = [b for ss in pl.copies(i) for s in ss for b in s.blocks]
        cells = len(blocks) * cfg.xbar.rows * cfg.xbar.cols
        used = sum(len(b.rows) * b.cols for b in blocks)
        total_cells += cells
        used_cells += used
        dense_blocks = (-(-L.weight.shape[0] // cfg.xbar.rows)) * (
            -(-L.weight.shape[1] // cfg.xbar.cols))
        layers.append({
            "layer": L.name, "op": L.op, "weights": int(L.weight.size),
            "nonzero_weights": int(np.count_nonzero(L.weight)),
            "mvmus": len(blocks), "mvmus_dense": dense_blocks, "crossbars": len(blocks) * xb,
            "copies": len(pl.copies(i)),
            "cores": len({b.loc[:2] for b in blocks}), "tiles": sorted({b.loc[0] for b in blocks}),
            "utilization": used / cells if cells else 0.0,
            "adc_bits": sorted({b.adc_bits for b in blocks}),
        })
    n_mvmu = sum(L["mvmus"] for L in layers)
    return {"layers": layers, "mvmus": n_mvmu, "crossbars": n_mvmu * xb,
            "tiles": pl.n_tiles, "utilization": used_cells / total_cells if total_cells else 0.0,
            "vfu_cores": pl.vfu_cores,
            "vfu_layers_sharing": len(pl.vfu_sharing) if pl.vfu_cores == "own" else None}


def save(prog: Program, folder: str | Path) -> Path:
    return prog.save(folder)
