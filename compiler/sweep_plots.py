"""Plots from a sweep's results table (``xbarsim plot RESULTS.csv -o DIR``).

- ``heatmap_<model>.png``: energy, latency and area over crossbar rows x ADC bits (or the
  first two numeric grid keys), one figure per model (and per value of any other grid key);
- ``accuracy_vs_adc_bits.png``: accuracy (top-1 vs labels, else top-1 agreement with
  onnxruntime) and relative output error against ADC bits, a line per model and crossbar size;
- ``energy_breakdown_<model>.png``: energy per component, stacked, one bar per point;
- ``pareto_accuracy_energy.png``: accuracy vs energy of every point, the Pareto front drawn,
  when more than one model or variant has accuracy figures.

Only ``status == ok`` rows are drawn. Grid columns are those between ``samples`` and the
first metric column, as :func:`compiler.sweep.run_sweep` writes them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from simulator.fileio import check_writable_folder
from simulator.report import BareFigures

from .sweep import ENERGY_PARTS, METRIC_COLUMNS, SweepError, _missing, read_table

HEAT = (("energy_j", "energy per inference (µJ)", 1e6),
        ("latency_s", "latency per inference (µs)", 1e6),
        ("area_mm2", "area (mm²)", 1.0))
PREFERRED_AXES = ("xbar.rows", "adc.bits")
#: What none (a missing value) means for the config keys that take it; "none" elsewhere.
NONE_LABELS = {"adc.bits": "ideal", "xbar.active_rows": "all", "node.mesh_cols": "square",
               "noise.on_off_ratio": "inf"}


def grid_columns(df) -> list[str]:
    cols = list(df.columns)
    start = cols.index("samples") + 1 if "samples" in cols else 0
    end = cols.index(METRIC_COLUMNS[0]) if METRIC_COLUMNS[0] in cols else len(cols)
    return cols[start:end]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).strip("_") or "model"


def _fmt(v, col: str = "") -> str:
    """A grid value as a label; none is named by what it means for ``col``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NONE_LABELS.get(col, "none")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _order(values) -> list:
    """Distinct values, numbers ascending, none (NaN/None) last."""
    vals = list(dict.fromkeys(values))
    nums = sorted(v for v in vals if isinstance(v, (int, float, np.number)) and not (
        isinstance(v, float) and math.isnan(v)))
    rest = [v for v in vals if v not in nums and not (isinstance(v, float) and math.isnan(v))]
    ideal = [v for v in vals if isinstance(v, float) and math.isnan(v)]
    return nums + sorted(rest, key=str) + ideal[:1]


def _key(v):
    return "ideal" if isinstance(v, float) and math.isnan(v) else v


def _short(col: str) -> str:
    return col.removeprefix("xbar.")


def _shown(df, grid) -> list[str]:
    """Grid columns that vary, without xbar.cols when it only mirrors xbar.rows."""
    cols = [c for c in grid if df[c].nunique(dropna=False) > 1]
    if "xbar.rows" in cols and "xbar.cols" in cols and (df["xbar.rows"] == df["xbar.cols"]).all():
        cols.remove("xbar.cols")
    return cols


def _heat_axes(df, grid: list[str]) -> tuple[str, str] | None:
    varying = _shown(df, grid)          # xbar.cols mirroring xbar.rows is not an axis
    if all(c in varying for c in PREFERRED_AXES):
        return PREFERRED_AXES
    from pandas.api.types import is_numeric_dtype
    # pandas >= 3 reads text columns as StringDtype, which numpy's issubdtype rejects
    numeric = [c for c in varying if is_numeric_dtype(df[c])]
    return (numeric[0], numeric[1]) if len(numeric) >= 2 else None


def _axis_label(col: str) -> str:
    return {"xbar.rows": "crossbar rows (xbar.rows)", "xbar.cols": "crossbar columns",
            "adc.bits": "ADC resolution (adc.bits, bits)",
            "xbar.cell_bits": "bits per cell (xbar.cell_bits)",
            "dac.bits": "DAC bits (dac.bits)"}.get(col, col)


def plot_heatmaps(df, grid, out: Path, plt) -> list[Path]:
    axes = _heat_axes(df, grid)
    if axes is None:
        return []
    ycol, xcol = axes
    others = [c for c in grid if c not in axes and df[c].nunique(dropna=False) > 1
              and not (c == "xbar.cols" and "xbar.rows" in axes
                       and (df["xbar.cols"] == df["xbar.rows"]).all())]
    written = []
    group_cols = ["model"] + others
    for gkey, g in df.groupby(group_cols, dropna=False, sort=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        xs, ys = _order(g[xcol]), _order(g[ycol])
        fig, axs = plt.subplots(1, 3, figsize=(5.2 * 3, 0.6 * len(ys) + 3.2),
                                constrained_layout=True)
        for ax, (metric, label, scale) in zip(axs, HEAT):
            grid_vals = np.full((len(ys), len(xs)), np.nan)
            for _, r in g.iterrows():
                i = [_key(v) for v in ys].index(_key(r[ycol]))
                j = [_key(v) for v in xs].index(_key(r[xcol]))
                grid_vals[i, j] = r[metric] * scale
            im = ax.imshow(grid_vals, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(xs)), [_fmt(v, xcol) for v in xs])
            ax.set_yticks(range(len(ys)), [_fmt(v, ycol) for v in ys])
            ax.set_xlabel(_axis_label(xcol))
            ax.set_ylabel(_axis_label(ycol))
            ax.set_title(label)
            fig.colorbar(im, ax=ax, label=label)
            finite = grid_vals[np.isfinite(grid_vals)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0
            for i in range(len(ys)):
                for j in range(len(xs)):
                    v = grid_vals[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, _num(v), ha="center", va="center", fontsize=8,
                                color="white" if v < mid else "black")
        title = str(gkey[0]) + "".join(f", {c}={_fmt(v, c)}" for c, v in zip(others, gkey[1:]))
        fig.suptitle(f"{title}: cost per inference")
        p = out / f"heatmap_{_slug('_'.join(map(_fmt, gkey, group_cols)))}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


ACC_LABEL = "top-1 accuracy vs labels (%)\n[* = agreement with onnxruntime: no labels]"


def numeric_axes(ok, grid):
    """``ok`` (successful rows) with each grid column that holds only numbers as numbers:
    an axis is stored as text when one of its values is not a number (adc.bits=4,...,x:
    that point failed), and as text 10 sorts before 4."""
    import pandas as pd
    for c in grid:
        if not pd.api.types.is_numeric_dtype(ok[c]):
            as_num = pd.to_numeric(ok[c], errors="coerce")
            if as_num.notna().sum() == ok[c].map(lambda v: not _missing(v)).sum():
                ok = ok.assign(**{c: as_num})
    return ok


def with_accuracy(df):
    """``df`` with ``_acc`` (top-1 vs labels where the model has labels, else top-1 agreement
    with onnxruntime) and ``_acc_kind``; None when no row has either."""
    acc, agree = df.get("accuracy"), df.get("top1_agreement")
    if (acc is None or acc.isna().all()) and (agree is None or agree.isna().all()):
        return None
    d = df.copy()
    has_labels = d.groupby("model", sort=False)["accuracy"].transform(
        lambda s: s.notna().any()) if acc is not None else False
    d["_acc"] = np.where(has_labels, d.get("accuracy"), d.get("top1_agreement"))
    d["_acc_kind"] = np.where(has_labels, "labels", "agreement")
    return d[d["_acc"].notna()]


def _name(model, kind) -> str:
    return f"{model}*" if kind == "agreement" else str(model)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def plot_accuracy_vs_adc(df, grid, out: Path, plt) -> list[Path]:
    if "adc.bits" not in grid or df["adc.bits"].nunique(dropna=False) < 2:
        return []
    # accuracy where a model has it; the output error of every model (one whose output is
    # not a class vector has only that)
    d = with_accuracy(df)
    errs = df[df["rel_err"].notna()] if "rel_err" in df else df.iloc[:0]
    if d is None and errs.empty:
        return []
    series = [c for c in _shown(df, grid) if c != "adc.bits"]
    xs = _order(df["adc.bits"])
    xpos = {_key(v): i for i, v in enumerate(xs)}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for rows, ax, col in ((d, a1, "_acc"), (errs, a2, "rel_err")):
        if rows is None or rows.empty:
            continue
        for gkey, g in rows.groupby(["model"] + series, dropna=False, sort=False):
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            kind = g["_acc_kind"].iloc[0] if "_acc_kind" in g else "labels"
            name = _name(gkey[0], kind) + "".join(
                f", {c}={_fmt(v, c)}" for c, v in zip(series, gkey[1:]))
            g = g.assign(_x=[xpos[_key(v)] for v in g["adc.bits"]]).sort_values("_x")
            y = g[col] * 100 if col == "_acc" else g[col].clip(lower=1e-9)
            ax.plot(g["_x"], y, marker="o", label=name)
    d = d if d is not None else df.iloc[:0]
    if "accuracy_onnx" in d:
        for model, g in d.groupby("model", sort=False):
            if g["accuracy_onnx"].notna().any():
                a1.axhline(g["accuracy_onnx"].iloc[0] * 100, ls="--", lw=1, color="gray")
                a1.annotate(f"{model}: onnxruntime (float)",
                            (0, g["accuracy_onnx"].iloc[0] * 100), fontsize=8,
                            color="gray", va="bottom")
    for ax in (a1, a2):
        ax.set_xticks(range(len(xs)), [_fmt(v, "adc.bits") for v in xs])
        ax.set_xlabel(_axis_label("adc.bits"))
        ax.grid(alpha=0.3)
    a1.set_ylabel(ACC_LABEL)
    a1.set_ylim(-2, 102)
    a1.set_title("accuracy vs ADC resolution")
    a2.set_yscale("log")
    a2.set_ylabel("relative L2 error of outputs vs onnxruntime")
    a2.set_title("output error vs ADC resolution")
    for ax in (a1, a2):   # each its own: a model without accuracy is only on the right
        if ax.lines:
            ax.legend(fontsize=7)
    p = out / "accuracy_vs_adc_bits.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot_energy_breakdown(df, grid, out: Path, plt) -> list[Path]:
    parts = [p for p in ENERGY_PARTS if f"energy_{p}_j" in df and df[f"energy_{p}_j"].abs()
             .sum() > 0]
    if not parts:
        return []
    shown = _shown(df, grid)
    written = []
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    for model, g in df.groupby("model", sort=False):
        labels = ["\n".join(f"{_short(c)}={_fmt(r[c], c)}" for c in shown) or "default"
                  for _, r in g.iterrows()]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(g) + 2.5), 5),
                               constrained_layout=True)
        bottom = np.zeros(len(g))
        for k, part in enumerate(parts):
            v = g[f"energy_{part}_j"].to_numpy(float) * 1e6
            ax.bar(range(len(g)), v, bottom=bottom, label=part.replace("_", "-"),
                   color=cmap(k % 10))
            bottom += v
        ax.set_xticks(range(len(g)), labels, fontsize=7)
        ax.set_ylabel("energy per inference (µJ)")
        ax.set_title(f"{model}: energy by component")
        ax.legend(fontsize=8, ncols=2)
        ax.grid(axis="y", alpha=0.3)
        p = out / f"energy_breakdown_{_slug(model)}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def pareto_front(energy: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (lower energy, higher accuracy),
    by ascending energy."""
    order = np.lexsort((-accuracy, energy))
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.asarray(front, int)


def plot_pareto(df, grid, out: Path, plt) -> list[Path]:
    d = with_accuracy(df)
    if d is None:
        return []
    d = d[d["energy_j"].notna()].reset_index(drop=True)
    if d["model"].nunique() < 2 and len(d) < 3:
        return []
    shown = _shown(d, grid)
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    for model, g in d.groupby("model", sort=False):
        ax.scatter(g["energy_j"] * 1e6, g["_acc"] * 100, alpha=0.75,
                   label=_name(model, g["_acc_kind"].iloc[0]))
    e, a = d["energy_j"].to_numpy(float) * 1e6, d["_acc"].to_numpy(float) * 100
    for kind, style in (("labels", "-"), ("agreement", ":")):
        idx = np.flatnonzero(d["_acc_kind"].to_numpy() == kind)   # like is compared with like
        if len(idx) < 2:
            continue
        front = idx[pareto_front(e[idx], a[idx])]
        if len(front) > 1:      # one point that dominates the rest draws no line
            ax.step(e[front], a[front], where="post", color="black", lw=1.2, ls=style,
                    label="Pareto front" + (" (*)" if kind == "agreement" else ""))
        for i in front:
            ax.annotate(", ".join([str(d.at[i, "model"])] + [
                f"{_short(c)}={_fmt(d.at[i, c], c)}" for c in shown]),
                (e[i], a[i]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (µJ, log scale)")
    ax.set_ylabel(ACC_LABEL)
    ax.set_title("accuracy vs energy (front: lowest energy for each accuracy)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    p = out / "pareto_accuracy_energy.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def plot_results(results, out_dir: str | Path) -> list[Path]:
    """Write every plot the table supports into ``out_dir``; returns the PNG paths.
    ``results``: a DataFrame or the path of a CSV/Parquet table."""
    import pandas as pd
    df = results if not isinstance(results, (str, Path)) else read_table(results)
    missing = [c for c in ("model", "status", "energy_j") if c not in df]
    if missing:
        raise SweepError(f"results table lacks column(s) {', '.join(missing)}; is it from "
                         f"xbarsim sweep?")
    grid = grid_columns(df)
    # integer axes with a none value (Int64 from run_sweep or Parquet) as the CSV reads
    # them: floats with NaN, the one missing value the plots know
    df = df.astype({c: float for c in grid if isinstance(df[c].dtype, pd.Int64Dtype)})
    ok = df[df["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise SweepError("no successful points in the table: nothing to plot")
    ok = numeric_axes(ok, grid)
    out = Path(out_dir)
    check_writable_folder(out, f"-o {out}", SweepError)   # a file there: said, not EEXIST
    written = []
    for fn in (plot_heatmaps, plot_accuracy_vs_adc, plot_energy_breakdown, plot_pareto):
        written += fn(ok, grid, out, BareFigures)
    return written
