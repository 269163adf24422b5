"""Compile + simulate wall time and simulated MVMs/s for PUMA's MLP, VGG-8/VGG-16 and
ResNet-18 at 32x32 (values and timing, batch 1) and ResNet-50 at 224x224 (timing and
energy), with the ratio to the BLAS bound of their bit-plane products, beside the peers'
published/measured figures.

    python benchmarks/sim_speed.py [--skip-resnet50]
    -> benchmarks/results/sim_speed.json, benchmarks/results/plots/sim_speed.png
"""
import _common  # noqa: F401  (pins threads first)
import argparse
import glob
import os
import resource
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, machine, mlp_onnx, write
from compiler import compile_model
from simulator import load_config, simulate
from simulator.simulate import run_timing_engine

PEERS = {
    "puma_mlp": ("PUMA simulator", 239.0, "CPU s for its MLP (~21k MAC/s), values off"),
    "vgg8": ("MNSIM 2.0", 21.0, "s per VGG-8 evaluation (19-23 s), behaviour level only"),
    "vgg8_neurosim": ("DNN+NeuroSim V1.4", 374.0, "s for VGG-8, C++ estimator"),
}


def bitplane_bound(prog) -> float:
    """BLAS time of one inference's bit-plane products: per MVMU, (steps, rows) @
    (rows, arrays*slices*cols) float32, times the MVMs it performs."""
    cfg = prog.config
    rep = simulate(prog, values=False)
    per_mvmu = rep.mvm_ops / max(len(prog.mvmu_loc), 1)
    r, c = cfg.xbar.rows, cfg.xbar.cols
    a = np.random.default_rng(0).integers(0, 2, (cfg.input_steps, r)).astype(np.float32)
    b = np.ones((r, cfg.arrays * cfg.slices * c), np.float32)
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    one = (time.perf_counter() - t) / reps
    return one * per_mvmu * len(prog.mvmu_loc)


def measure(name, model, shape, values=True, input_name="input"):
    x = np.random.default_rng(0).random((1,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma")
    t0 = time.perf_counter()
    prog = compile_model(model, cfg, calibration={input_name: x})
    t1 = time.perf_counter()
    rep = simulate(prog, {input_name: x} if values else None, values=values)
    t2 = time.perf_counter()
    # Steady state: a second inference reuses the prepared crossbar models.
    t_again = time.perf_counter()
    rep2 = simulate(prog, {input_name: x} if values else None, values=values)
    t_again = time.perf_counter() - t_again
    bound = bitplane_bound(prog) if values else None
    row = {"model": name, "values": values, "compile_s": t1 - t0, "simulate_s": t2 - t1,
           "end_to_end_s": t2 - t0, "timing_s": rep.timing_wall_s,
           "values_s": rep.values_wall_s, "mvm_ops": rep.mvm_ops,
           "instructions_executed": rep.instructions_executed,
           "mvm_per_s": rep.mvm_ops / (t2 - t1), "blas_bound_s": bound,
           "simulate_again_s": t_again, "values_again_s": rep2.values_wall_s,
           "values_over_bound": rep2.values_wall_s / bound if bound else None,
           "mvmus": len(prog.mvmu_loc), "tiles": rep.tiles,
           "instructions": prog.n_instructions, "latency_us": rep.latency_s * 1e6,
           "energy_uj": rep.energy_j["total"] * 1e6,
           # the process's peak so far (ru_maxrss), earlier models' rows included
           "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{name:10s} compile {row['compile_s']:6.2f} s  simulate {row['simulate_s']:6.2f} s "
          f"(timing {row['timing_s']:.2f}, values {row['values_s']:.2f}; again "
          f"{row['simulate_again_s']:.2f})  "
          f"{row['mvm_per_s']:9.0f} MVM/s  "
          + (f"values/BLAS-bound {row['values_over_bound']:.2f}x  " if bound else "")
          + f"latency {row['latency_us']:.1f} us  energy {row['energy_uj']:.1f} uJ  "
          f"process peak RSS {row['process_peak_rss_mb']:.0f} MB")
    return row


def export_zoo(name: str, folder: Path) -> Path:
    """``models``' ``name`` exported afresh (seed 0) to ``folder``: a file left from before
    would measure the model as it was then."""
    import models
    return models.export(name, folder / f"{name}.onnx", seed=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-resnet50", action="store_true")
    args = ap.parse_args()
    import models
    tmp = RESULTS / "onnx"
    tmp.mkdir(parents=True, exist_ok=True)
    run_timing_engine(compile_model(mlp_onnx([8, 8]), "puma"))   # warm numba's cache
    rows = [measure("puma_mlp", mlp_onnx([1024, 1024, 2048, 1024, 10]), (1, 1024))]
    for name in ("vgg8", "vgg16", "resnet18"):
        rows.append(measure(name, export_zoo(name, tmp), models.input_shape(name)))
    if not args.skip_resnet50:
        import onnx
        light = os.path.dirname(onnx.__file__) + "/backend/test/data/light/"
        r50 = glob.glob(light + "light_resnet50.onnx")[0]
        rows.append(measure("resnet50", r50, (1, 3, 224, 224), values=False,
                            input_name="gpu_0/data_0"))
    out = {"machine": machine(), "preset": "puma", "rows": rows, "peers": PEERS}
    p = write("sim_speed", out)
    plot(rows)
    print(f"-> {p}")


def plot(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["model"] for r in rows]
    ours = [r["end_to_end_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(names, ours, color="tab:blue", label="xbarsim: compile + cycle-level simulate")
    peer_x = {"puma_mlp": ("PUMA sim", 239.0), "vgg8": ("MNSIM 2.0", 21.0)}
    for i, n in enumerate(names):
        if n in peer_x:
            lbl, v = peer_x[n]
            ax.bar(i + 0.3, v, width=0.3, color="tab:gray")
            ax.text(i + 0.3, v, lbl, ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("wall time (s, log scale)")
    ax.set_title("End-to-end wall time per inference (2-core CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (RESULTS / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "plots" / "sim_speed.png", dpi=120)


if __name__ == "__main__":
    main()
