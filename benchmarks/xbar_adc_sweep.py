"""Crossbar size x ADC resolution sweep on the PUMA machine: latency, energy, area and
accuracy of LeNet-5, a VGG-8 and a ResNet-18 over square crossbars of 64/128/256 rows and
4..8-bit ADCs (``xbar.rows=xbar.cols=64,128,256 x adc.bits=4,5,6,7,8``, 45 points).

- LeNet-5: the shipped pretrained model on the shipped Fashion-MNIST test images (top-1 vs
  labels, and agreement / relative error vs onnxruntime);
- VGG-8 and ResNet-18 at CIFAR size (3x32x32), width 0.25, seeded random weights and seeded
  random inputs: relative output error vs onnxruntime (no labels: no accuracy). Their top-1
  agreement is 100 % at every point and means nothing: a randomly initialised net gives every
  random input the same class (VGG-8: 7, ResNet-18: 0), so read ``rel_err`` for them.

    python benchmarks/xbar_adc_sweep.py [--workers N] [--lenet-samples 300] [--samples 16]

Writes ``benchmarks/results/xbar_adc_sweep.{csv,parquet,json}`` and the plots in
``benchmarks/results/plots/``. Finished points are kept in ``benchmarks/results/.sweep/``:
a rerun (or a run after a crash) computes only what is missing; delete that folder to
measure from scratch.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")   # before numpy loads BLAS: one thread per worker

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from compiler.sweep import usable_cpus, results_paths, run_sweep, write_table  # noqa: E402
from compiler.sweep_plots import plot_results  # noqa: E402
from simulator.cli import positive_int  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / ".sweep"
GRID = ["xbar.rows=xbar.cols=64,128,256", "adc.bits=4,5,6,7,8"]


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=positive_int,
                    help="parallel workers [the CPUs this process may run on]")
    ap.add_argument("--lenet-samples", type=int, default=300,
                    help="shipped Fashion-MNIST test images for LeNet-5 [300, all]")
    ap.add_argument("--samples", type=int, default=16,
                    help="random inputs for VGG-8 / ResNet-18 [16]")
    ap.add_argument("--executor", default="local")
    return ap


def main() -> None:
    args = arg_parser().parse_args()
    workers = args.workers or usable_cpus()   # run_sweep's default, recorded as used

    t0 = time.perf_counter()
    parts = []
    runs = (("lenet", ["lenet5_fmnist"], "demo", args.lenet_samples),
            ("cifar", ["vgg8:width=0.25", "resnet18:width=0.25"], "random", args.samples))
    counts = {}
    for name, models, data, samples in runs:
        t = time.perf_counter()
        df = run_sweep(models, GRID, CACHE / f"{name}.csv", preset="puma", data=data,
                       samples=samples, workers=args.workers, executor=args.executor)
        counts[name] = dict(df.attrs, wall_s=round(time.perf_counter() - t, 1))
        parts.append(df)
    wall = time.perf_counter() - t0

    table = pd.concat(parts, ignore_index=True)
    out = RESULTS / "xbar_adc_sweep.csv"
    write_table(table, results_paths(out))
    plots = plot_results(table, RESULTS / "plots")

    ok = table[table["status"] == "ok"]
    summary = {
        "grid": GRID, "preset": "puma", "points": len(table), "failed": int(
            (table["status"] != "ok").sum()),
        "wall_s": round(wall, 1), "runs": counts,
        "point_wall_s": {"sum": round(float(table["wall_s"].sum()), 1),
                         "median": round(float(table["wall_s"].median()), 2),
                         "max": round(float(table["wall_s"].max()), 1)},
        "machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                    "workers": workers, "executor": args.executor,
                    "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        "note": "a point reused from .sweep/ counts its original wall_s in point_wall_s; "
                "wall_s is this run's. VGG-8/ResNet-18 have random weights: their top-1 "
                "agreement is trivially 1 (one class for every input); read rel_err",
        "points_table": json.loads(ok[[
            "model", "data", "samples", "xbar.rows", "adc.bits", "latency_s", "energy_j",
            "energy_adc_j", "area_mm2", "crossbars", "adc_conversions", "accuracy",
            "accuracy_onnx", "top1_agreement", "rel_err", "wall_s"]].to_json(
                orient="records")),
        "plots": [str(p.relative_to(ROOT)) for p in plots],
    }
    (RESULTS / "xbar_adc_sweep.json").write_text(json.dumps(summary, indent=1))

    show = ok.assign(energy_uJ=ok["energy_j"] * 1e6, latency_us=ok["latency_s"] * 1e6)
    cols = ["model", "xbar.rows", "adc.bits", "latency_us", "energy_uJ", "area_mm2",
            "crossbars", "accuracy", "top1_agreement", "rel_err", "wall_s"]
    with pd.option_context("display.width", 200, "display.max_rows", 100,
                           "display.float_format", "{:.4g}".format):
        print(show[cols].to_string(index=False))
    print(f"\n{len(table)} points ({summary['failed']} failed), wall {wall:.1f} s "
          f"(sum of point wall times {summary['point_wall_s']['sum']} s) with "
          f"{workers} workers; -> {out}, {len(plots)} plots in {RESULTS / 'plots'}")


if __name__ == "__main__":
    main()
