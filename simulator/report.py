"""The result of a simulation: latency, energy and area by component and by layer, counts,
outputs and their error against a reference; exports to JSON, CSV/pandas, a Chrome/Perfetto
trace and plots. Every energy figure is counts x the cost table, so it can be audited."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import costs
from .errors import SimulationError
from .fileio import atomic_write
from .isa import Op
from .program import jsonable
from .timing import (C_ADC, C_DAC, C_EDRAM, C_INSTR, C_MVM, C_NOC, C_SHADD, C_VFU, C_XBAR,
                     COUNTER_NAMES)

#: the PNGs :meth:`Report.plot` writes (the CLI keeps other outputs off them)
PLOT_FILES = ENERGY_PLOT, LATENCY_PLOT, COSTS_PLOT = (
    "energy_breakdown.png", "layer_latency.png", "layer_costs.png")


@dataclass
class Report:
    latency_cycles: int
    latency_s: float
    energy_j: dict
    area_mm2: dict
    crossbars: int
    mvmus: int
    cores: int
    tiles: int
    mvm_ops: int
    adc_conversions: int
    instructions: int
    instructions_executed: int
    layers: list
    counters: dict
    config: dict
    adc_model: str
    outputs: dict | None = None
    accuracy: dict | None = None
    sim_wall_s: float = 0.0
    timing_wall_s: float = 0.0
    values_wall_s: float = 0.0
    trace_events: np.ndarray | None = field(default=None, repr=False)
    trace_truncated: bool = False
    """The trace reached its event cap (``simulate(trace_cap=...)``) before the run ended."""
    agent_names: list = field(default_factory=list, repr=False)
    cycle_ns: float = 1.0
    memory: dict = field(default_factory=dict)
    utilization: float | None = None
    """Share of the placed crossbars' cells that hold weights (the compiler's mapping);
    None for a program built without one."""

    @property
    def throughput_per_s(self) -> float | None:
        """Inferences per second, one at a time (1 / latency: the next inference starts when
        this one ends; layer pipelining across inferences is not simulated); None for a
        program that takes no time (JSON has no inf)."""
        return 1.0 / self.latency_s if self.latency_s > 0 else None

    def to_dict(self) -> dict:
        return {
            "latency_cycles": self.latency_cycles, "latency_s": self.latency_s,
            "throughput_per_s": self.throughput_per_s,
            "energy_j": self.energy_j, "area_mm2": self.area_mm2,
            "crossbars": self.crossbars, "mvmus": self.mvmus, "cores": self.cores,
            "tiles": self.tiles, "utilization": self.utilization, "mvm_ops": self.mvm_ops,
            "adc_conversions": self.adc_conversions, "instructions": self.instructions,
            "instructions_executed": self.instructions_executed, "adc_model": self.adc_model,
            "layers": self.layers, "counters": self.counters, "accuracy": self.accuracy,
            "memory": self.memory, "trace_truncated": self.trace_truncated,
            "sim_wall_s": self.sim_wall_s, "timing_wall_s": self.timing_wall_s,
            "values_wall_s": self.values_wall_s, "config": self.config,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, default=jsonable)
        if path is not None:
            with atomic_write(path) as tmp:
                tmp.write_text(text + "\n")   # a stream (/dev/stdout) gets its line end
        return text

    def layers_frame(self):
        """Per-layer figures as a pandas DataFrame (one row per layer)."""
        import pandas as pd
        rows = []
        for L in self.layers:
            row = {k: v for k, v in L.items() if k != "energy_j"}
            for comp, e in L["energy_j"].items():
                row[f"energy_{comp}_j"] = e
            rows.append(row)
        return pd.DataFrame(rows)

    def to_csv(self, path) -> None:
        """The per-layer table as CSV into ``path`` (or an open text buffer, as pandas takes)."""
        if not isinstance(path, (str, os.PathLike)):
            self.layers_frame().to_csv(path, index=False)
            return
        with atomic_write(path) as tmp:     # as every output: the old file or the new one
            self.layers_frame().to_csv(tmp, index=False)

    def save_trace(self, path: str | Path) -> int:
        """Chrome / Perfetto trace JSON (open in ui.perfetto.dev or chrome://tracing).
        Returns the number of events written."""
        if self.trace_events is None:
            raise SimulationError("no trace recorded: simulate(..., trace=True) records one")
        events = []
        names = {}
        ev = self.trace_events
        lnames = [L["name"] for L in self.layers]
        us = self.cycle_ns / 1000.0
        for a, start, end, op, layer in ev.tolist():
            tile, _, rest = self.agent_names[a].partition(" ")
            names.setdefault(a, self.agent_names[a])
            events.append({"name": Op(op).name.lower(), "ph": "X", "ts": start * us,
                           "dur": max(end - start, 1) * us, "pid": int(rest.split()[0]),
                           "tid": a, "args": {"layer": lnames[layer] if 0 <= layer < len(
                               lnames) else None}})
        for a, n in names.items():
            events.append({"name": "thread_name", "ph": "M", "pid": int(n.split()[1]),
                           "tid": a, "args": {"name": n}})
        trace = {"traceEvents": events, "displayTimeUnit": "ns",
                 "metadata": {"truncated": self.trace_truncated, "events_kept": len(ev),
                              "latency_us": self.latency_s * 1e6}}
        if self.trace_truncated:   # else the timeline just looks idle after the cut
            last = max((e["ts"] + e["dur"] for e in events if e["ph"] == "X"), default=0.0)
            events.append({"name": f"trace cut at its {len(ev)}-event cap (the run ends at "
                                   f"{self.latency_s * 1e6:.1f} us)", "ph": "i", "s": "g",
                           "ts": last, "pid": 0, "tid": 0})
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(trace))
        return len(events)

    def plot(self, folder: str | Path) -> list[Path]:
        """Energy breakdown, per-layer latency and per-layer energy/area plots (PNG) into
        ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        comps = {k: v for k, v in self.energy_j.items() if k != "total" and v > 0}
        fig, ax = BareFigures.subplots(figsize=(6, 3.5))
        ks = sorted(comps, key=comps.get, reverse=True)
        ax.barh(ks[::-1], [comps[k] * 1e9 for k in ks[::-1]], color="tab:blue")
        ax.set_xlabel("energy per inference (nJ)")
        ax.set_title(f"Energy breakdown: {self.energy_j['total'] * 1e9:.1f} nJ total "
                     f"(ADC model: {self.adc_model})")
        out.append(_save(fig, folder / ENERGY_PLOT))
        if self.layers:
            fig, ax = BareFigures.subplots(figsize=(7, 0.3 * len(self.layers) + 1.5))
            names = [L["name"] for L in self.layers][::-1]
            us = self.cycle_ns / 1000
            lat = [L["latency_cycles"] * us for L in self.layers][::-1]
            start = [L.get("start_cycle", 0) * us for L in self.layers][::-1]
            # on the inference's timeline: a layer's span runs from its first data event
            # (a load of its producer's words, once valid; an MVM) to its last, so pipelined
            # layers overlap; loop set-up and loads of persistent constants do not count
            ax.barh(names, lat, left=start, color="tab:orange")
            ax.set_xlabel("time in the inference (us)")
            ax.set_title("Per-layer busy span, first to last data event")
            out.append(_save(fig, folder / LATENCY_PLOT))
            out.append(self._plot_layer_costs(folder))
        return out

    def _plot_layer_costs(self, folder: Path) -> Path:
        """Energy (by component) and area of each layer, side by side."""
        layers = self.layers[::-1]
        names = [L["name"] for L in layers]
        comps = [k for k in ("crossbar", "adc", "dac", "shift_add", "vfu", "edram", "noc",
                             "leakage") if any(L["energy_j"].get(k, 0) > 0 for L in layers)]
        fig, (ax_e, ax_a) = BareFigures.subplots(1, 2, sharey=True,
                                                 figsize=(10, 0.3 * len(layers) + 1.8))
        top = max((L["energy_j"]["total"] for L in layers), default=0.0)
        unit, per_j = ("uJ", 1e6) if top >= 1e-6 else ("nJ", 1e9)
        left = np.zeros(len(layers))
        for k in comps:
            v = np.array([L["energy_j"].get(k, 0.0) * per_j for L in layers])
            ax_e.barh(names, v, left=left, label=k)
            left += v
        ax_e.set_xlabel(f"energy per inference ({unit})")
        if comps:       # no energy at all (an empty program): nothing to label
            ax_e.legend(fontsize=7, loc="lower right")
        ax_a.barh(names, [L["area_mm2"] for L in layers], color="dimgray")
        ax_a.set_xlabel("area of its own MVMUs (mm2)")
        fig.suptitle(f"Per layer (chip: {self.energy_j['total'] * per_j:.3f} {unit}, "
                     f"{self.area_mm2['total']:.3f} mm2, with the eDRAM leakage and the "
                     f"shared parts no layer owns)")
        return _save(fig, folder / COSTS_PLOT)

    def layers_table(self) -> str:
        """The per-layer figures as a fixed-width text table (layers with any activity):
        crossbars, widest ADC (``id.17``: ideal, charged as 17 bits), busy span (first to last
        data event), energy with the share that is leakage, and area."""
        rows = [L for L in self.layers if L["crossbars"] or L["energy_j"]["total"] > 0]
        width = max((len(L["name"]) for L in rows), default=5)
        us = self.cycle_ns / 1000.0
        lines = [f"{'layer':{width}s}  {'op':14s} {'crossbars':>9s} {'ADC bits':>8s} "
                 f"{'span us':>10s} {'energy uJ':>10s} {'leakage':>8s} {'area mm2':>9s}"]
        for L in rows:
            e = L["energy_j"]
            bits = (str(L["adc_bits"]) if L["adc_bits"] is not None else "-"
                    if not L.get("adc_bits_charged") else f"id.{L['adc_bits_charged']}")
            lines.append(f"{L['name']:{width}s}  {L['op'][:14]:14s} {L['crossbars']:9d} "
                         f"{bits:>8s} {L['latency_cycles'] * us:10.3f} "
                         f"{e['total'] * 1e6:10.4f} {e['leakage'] / max(e['total'], 1e-300):8.0%} "
                         f"{L['area_mm2']:9.4f}")
        return "\n".join(lines)

    def summary(self) -> str:
        e = self.energy_j
        top = sorted(((k, v) for k, v in e.items() if k != "total"), key=lambda kv: -kv[1])[:3]
        active = self.config.get("xbar", {}).get("active_rows")
        reads = f", {active} rows per read" if active else ""
        thr = self.throughput_per_s
        lines = [
            f"latency      {self.latency_s * 1e6:10.3f} us  ({self.latency_cycles} cycles)",
            f"throughput   {f'{thr:10.1f}' if thr else 'n/a (no time)':>10} inferences/s",
            f"energy       {e['total'] * 1e6:10.3f} uJ  (" + ", ".join(
                f"{k} {v / e['total'] * 100:.0f}%" for k, v in top if e["total"] > 0) + ")",
            f"area         {self.area_mm2['total']:10.3f} mm2",
            f"crossbars    {self.crossbars:10d}  ({self.mvmus} MVMUs, {self.cores} cores, "
            f"{self.tiles} tiles)",
            f"ADC convs    {self.adc_conversions:10d}  (model {self.adc_model}{reads})",
        ]
        if self.memory.get("tiles_over_edram"):
            lines.append(f"memory       {self.memory['tiles_over_edram']} tile(s) need more than "
                         f"the {self.memory['edram_words_per_tile']}-word eDRAM (up to "
                         f"{self.memory['words_per_tile_max']} words; modelled as if it fit)")
        return "\n".join(lines)


class BareFigures:
    """The part of pyplot the plots use (``subplots``, ``close``) on figures that pyplot never
    sees, drawn by Agg: library code must not switch the caller's backend
    (``matplotlib.use("Agg")`` turned a notebook's inline figures off) nor leave figures open
    in pyplot."""

    @staticmethod
    def subplots(nrows=1, ncols=1, *, figsize=None, constrained_layout=None, **grid):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=figsize, constrained_layout=constrained_layout)
        FigureCanvasAgg(fig)
        return fig, fig.subplots(nrows, ncols, **grid)

    @staticmethod
    def close(fig) -> None:
        """Nothing to do: no registry holds the figure, the last reference going frees it."""


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def energy_by_component(cfg, counters: np.ndarray, adc_by_bits: np.ndarray) -> dict:
    """Energy in joules per component from a count row (or table summed over rows)."""
    tab = costs.energy_table(cfg)
    adc_e = costs.adc_energy_by_bits(cfg, adc_by_bits.shape[-1] - 1)
    pj = {
        "crossbar": counters[C_XBAR] * tab["crossbar"],
        "dac": counters[C_DAC] * tab["dac"],
        "adc": float(adc_by_bits @ adc_e),
        "shift_add": counters[C_SHADD] * tab["shift_add"],
        "vfu": counters[C_VFU] * tab["vfu"],
        "edram": counters[C_EDRAM] * tab["edram"],
        "noc": counters[C_NOC] * tab["noc"],
    }
    return {k: float(v) * 1e-12 for k, v in pj.items()}


def mvmu_costs(prog) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per MVMU: the area (mm^2) of each of its own parts (its crossbars and their
    periphery, as against what a core or tile shares), its ADCs' leakage (mW) and the bits
    they convert with (0: ideal). The ADCs are charged at those bits: their own with
    ``adc.adaptive``, else the configured ones (an ideal ADC as the worst case), as dynamic
    energy and latency are."""
    cfg = prog.config
    n = len(prog.mvmu_loc)
    xbars = cfg.arrays * cfg.slices
    T = costs.TABLE
    bits = np.array([prog.adc_bits_of(i) or 0 for i in range(n)], np.int64)
    adc = {int(b): costs.adc_cost(cfg.adc.model, costs.cost_bits(cfg, int(b) or None))
           for b in np.unique(bits)}
    adc_area = np.array([adc[b].area_mm2 for b in bits.tolist()], np.float64)
    adc_leak = np.array([adc[b].leak_mw for b in bits.tolist()], np.float64)
    one = np.ones(n)
    area = {
        "crossbar": one * (xbars * costs.crossbar_area_mm2(cfg.xbar.rows, cfg.xbar.cols)),
        "adc": adc_area * cfg.adc.per_mvmu,
        "dac": one * (xbars * cfg.xbar.rows * T["dac_area_mm2"]),
        "sample_hold": one * (xbars * cfg.xbar.cols * T["snh_area_mm2"]),
        "shift_add": one * (cfg.adc.per_mvmu * T["shift_add_area_mm2"]),
        "mvmu_registers": one * (T["mvmu_reg_area_mm2_128"]
                                 * (cfg.xbar.rows + cfg.xbar.cols) / 128),
    }
    return area, adc_leak * cfg.adc.per_mvmu, bits


def edram_kib_used(prog) -> int:
    """KiB of eDRAM on the tiles the program uses (their area and leakage scale with it):
    ``tile.edram_kb`` each, or with ``tile.edram_fit`` what each one's program keeps there."""
    used = sorted(prog.tiles_used())
    return int(prog.config.edram_kb_of(prog.mem_words[used]).sum()) if used else 0


def area_by_component(prog, part_area: dict | None = None) -> tuple[dict, int]:
    """Area (mm^2) of the hardware the program uses, and the number of cores used: the
    eDRAM of the tiles used, the routers of those and of the tiles messages pass through.
    ``part_area``: :func:`mvmu_costs`' areas, where the caller has them."""
    cfg = prog.config
    cores_used = prog.cores_used()
    T = costs.TABLE
    if part_area is None:
        part_area = mvmu_costs(prog)[0]
    area = {k: float(v.sum()) for k, v in part_area.items()}
    area |= {
        "vfu": len(cores_used) * cfg.core.vfu_lanes * T["vfu_area_mm2_per_lane"],
        "core_other": len(cores_used) * (costs.register_file_area_mm2(cfg.core.registers)
                                         + T["core_control_area_mm2"]),
        "edram": edram_kib_used(prog) / 64 * T["edram_area_mm2"],
        "router": len(prog.tiles_used(routes=True)) * T["router_area_mm2"],
    }
    area["total"] = float(sum(area.values()))
    return area, len(cores_used)


def check_reference(prog, reference, batch: int) -> None:
    """Refuse, before simulating, a ``reference`` that cannot be compared with the outputs:
    it must be a dict of real arrays by output name, each (batch, *that output's shape)."""
    shapes = {p.name: (batch, *p.shape) for p in prog.outputs}
    if not isinstance(reference, Mapping):
        raise SimulationError(f"reference: got {type(reference).__name__}; expected a dict of "
                              f"arrays by output name ({', '.join(shapes) or 'none'})")
    for name, ref in reference.items():
        if name not in shapes:
            raise SimulationError(f"reference {name!r}: not an output; the program's outputs "
                                  f"are {', '.join(shapes) or 'none'}")
        r = np.asarray(ref)
        if r.shape != shapes[name]:
            raise SimulationError(f"reference {name!r} has shape {r.shape}; expected "
                                  f"{shapes[name]} (the batch, then the output's shape)")
        if not (np.issubdtype(r.dtype, np.integer) or np.issubdtype(r.dtype, np.floating)):
            raise SimulationError(f"reference {name!r} has dtype {r.dtype}; expected real "
                                  f"numbers")


def error_metrics(outputs: dict, reference: dict) -> dict:
    """max |err|, relative L2 error and, for classifier-shaped outputs, top-1 agreement."""
    res = {}
    for name, ref in reference.items():
        if name not in outputs:
            continue
        y = np.asarray(outputs[name], np.float64)
        r = np.asarray(ref, np.float64).reshape(y.shape)
        # a reference past float32 (onnxruntime on an input beyond the calibration) is
        # compared where it is finite and counted: inf and NaN made the JSON invalid
        finite = np.isfinite(r)
        err = np.where(finite, y - r, 0.0)
        d = {"max_abs_err": float(np.abs(err).max(initial=0.0)),
             "rel_err": float(np.linalg.norm(err)
                              / max(np.linalg.norm(np.where(finite, r, 0.0)), 1e-30))}
        if not finite.all():
            d["reference_nonfinite"] = int((~finite).sum())
        if y.ndim == 2 and y.shape[1] > 1:
            rows = finite.all(1)
            d["top1_agreement"] = (float((y[rows].argmax(1) == r[rows].argmax(1)).mean())
                                   if rows.any() else None)
        res[name] = d
    if len(res) == 1:
        return next(iter(res.values()))
    return res


def build_report(prog, timing: dict, outputs: dict | None, reference: dict | None) -> Report:
    cfg = prog.config
    counters, by_bits, span = timing["counters"], timing["adc_by_bits"], timing["span"]
    latency = int(timing["end"])
    latency_ns = latency * cfg.cycle_ns
    total = energy_by_component(cfg, counters.sum(0), by_bits.sum(0))
    n_mvmu = len(prog.mvmu_loc)
    part_area, adc_leak_mw, bits = mvmu_costs(prog)
    # the ADCs leak for the whole inference; so does each tile's eDRAM (not a layer's),
    # in proportion to its capacity as its area is
    tiles_used = len(prog.tiles_used())
    edram_kib = edram_kib_used(prog)
    leak_mw = float(adc_leak_mw.sum()) + costs.TABLE["edram_leak_mw"] * edram_kib / 64
    total["leakage"] = leak_mw * latency_ns * 1e-12
    total["total"] = float(sum(total.values()))
    area, cores_used = area_by_component(prog, part_area)
    # each layer's own MVMUs: their crossbars, their periphery and their ADCs' leakage
    of_layer = np.asarray(prog.mvmu_layer, np.int64).reshape(n_mvmu)
    mine = of_layer >= 0

    def by_layer(v):
        return np.bincount(of_layer[mine], weights=v[mine], minlength=len(prog.layers))
    mvmus_per_layer = by_layer(np.ones(n_mvmu))
    # the widest ADC a layer converts with (0: ideal ADCs or no MVMU)
    bits_per_layer = np.zeros(max(len(prog.layers), int(of_layer.max(initial=-1)) + 1),
                              np.int64)
    np.maximum.at(bits_per_layer, of_layer[mine], bits[mine])
    # ...and the width its ADCs are charged at (an ideal ADC: the worst-case lossless width)
    charged_per_layer = np.zeros_like(bits_per_layer)
    np.maximum.at(charged_per_layer, of_layer[mine], np.array(
        [costs.cost_bits(cfg, int(b) or None) for b in bits[mine]], np.int64))
    area_per_layer = by_layer(sum(part_area.values()))
    leak_per_layer = by_layer(adc_leak_mw) * latency_ns * 1e-12
    layers = []
    for i, L in enumerate(prog.layers):
        e = energy_by_component(cfg, counters[i + 1], by_bits[i + 1])
        e["leakage"] = float(leak_per_layer[i])
        e["total"] = float(sum(e.values()))
        start, end = int(span[i + 1, 0]), int(span[i + 1, 1])
        layers.append({
            "name": L.get("name", f"layer{i}"), "op": L.get("op", ""),
            "start_cycle": max(start, 0), "end_cycle": end,
            "latency_cycles": max(end - max(start, 0), 0) if start >= 0 else 0,
            "mvm_ops": int(counters[i + 1, C_MVM]),
            "adc_conversions": int(counters[i + 1, C_ADC]),
            "crossbars": int(mvmus_per_layer[i]) * cfg.arrays * cfg.slices,
            "area_mm2": float(area_per_layer[i]),
            "adc_bits": int(bits_per_layer[i]) or None,
            "adc_bits_charged": int(charged_per_layer[i]) or None,
            "energy_j": e,
        })
    count_tot = counters.sum(0)
    accuracy = None
    if outputs is not None and reference is not None:
        accuracy = error_metrics(outputs, reference)
    return Report(
        latency_cycles=latency, latency_s=latency_ns * 1e-9, energy_j=total, area_mm2=area,
        crossbars=n_mvmu * cfg.arrays * cfg.slices, mvmus=n_mvmu, cores=cores_used,
        tiles=tiles_used, mvm_ops=int(count_tot[C_MVM]),
        adc_conversions=int(count_tot[C_ADC]), instructions=prog.n_instructions,
        instructions_executed=int(count_tot[C_INSTR]), layers=layers,
        counters={n: int(v) for n, v in zip(COUNTER_NAMES, count_tot)} | {
            "adc_conversions_by_bits": {str(b): int(v) for b, v in enumerate(by_bits.sum(0))
                                        if v}},
        config=cfg.to_dict(), adc_model=cfg.adc.model, outputs=outputs, accuracy=accuracy,
        trace_events=timing["trace"],
        agent_names=[prog.agent_name(a) for a in range(prog.n_agents)],
        cycle_ns=cfg.cycle_ns, utilization=(prog.mapping or {}).get("utilization"),
        memory={"words_per_tile_max": int(prog.mem_words.max()),
                "edram_words_per_tile": cfg.edram_words,
                "tiles_over_edram": 0 if cfg.tile.edram_fit else int(
                    (prog.mem_words > cfg.edram_words).sum()),
                "edram_kib": edram_kib})
