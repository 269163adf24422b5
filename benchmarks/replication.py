"""Placement for pipeline balance: weight replication (``compile_model(..., replicate=N)``,
``xbarsim compile/run --replicate N``) and cores for VFU layers (``vfu_cores``, ``--vfu-cores
own|shared``), and the tile control streams they move data with (``tile.control_streams``).
Latency, energy, area, cores and MVMUs of LeNet-5 (the shipped model), VGG-8, VGG-16 and
ResNet-18 (32x32, seeded weights) on ``puma`` with 1, 2, 4 and 8 copies allowed per
convolution, pools and other VFU layers on cores of their own (the default) and, without
copies, on the MVM layers' cores (``shared``), or with 1 or 4 control streams per tile
instead of the preset's 8. Each point also checks that the simulated integers equal those
of the first point (batch 2, values on).

    python benchmarks/replication.py
    -> benchmarks/results/replication.json, benchmarks/results/plots/replication.png
"""
import _common  # noqa: F401  (pins threads first)
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, machine, write
from compiler import compile_model
from simulator import load_config, simulate

COPIES = (1, 2, 4, 8)
STREAMS = 8   # the puma preset's tile.control_streams
# (vfu_cores, copies, control streams): every copy count with own cores, then the compact
# placement, then fewer control streams
POINTS = ([("own", n, STREAMS) for n in COPIES] + [("shared", 1, STREAMS)]
          + [("own", 1, k) for k in (1, 4)])
ROOT = Path(__file__).resolve().parents[1]


def models_to_run(tmp: Path):
    import models
    yield "lenet5_fmnist", ROOT / "models" / "pretrained" / "lenet5_fmnist.onnx", (1, 1, 28, 28)
    for name in ("vgg8", "vgg16", "resnet18"):
        path = tmp / f"{name}.onnx"
        models.export(name, path, seed=0)
        yield name, path, models.input_shape(name)


def main():
    assert load_config("puma").tile.control_streams == STREAMS
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, path, shape in models_to_run(Path(d)):
            x = np.random.default_rng(0).random((2,) + tuple(shape[1:])).astype(np.float32)
            base = None
            for vfu, n, streams in POINTS:
                t = time.perf_counter()
                cfg = load_config("puma", [f"tile.control_streams={streams}"])
                prog = compile_model(path, cfg, calibration={"input": x}, replicate=n,
                                     vfu_cores=vfu)
                rep = simulate(prog, {"input": x})
                out = rep.outputs["logits:int"]
                base = out if base is None else base
                row = {"model": name, "replicate": n, "vfu_cores_asked": vfu,
                       "control_streams": streams,
                       "vfu_cores": prog.mapping["vfu_cores"],
                       "vfu_layers_sharing": prog.mapping["vfu_layers_sharing"],
                       "copies": [L["copies"] for L in prog.mapping["layers"]],
                       "latency_us": rep.latency_s * 1e6, "energy_uj": rep.energy_j["total"] * 1e6,
                       "leakage_uj": rep.energy_j["leakage"] * 1e6,
                       "area_mm2": rep.area_mm2["total"], "mvmus": rep.mvmus,
                       "cores": rep.cores, "tiles": rep.tiles,
                       # maps that outgrow tile.edram_kb are costed as if they fit
                       "words_per_tile_max": rep.memory["words_per_tile_max"],
                       "tiles_over_edram": rep.memory["tiles_over_edram"],
                       "same_integers": bool(np.array_equal(out, base)),
                       "wall_s": time.perf_counter() - t}
                rows.append(row)
                print(f"{name:14s} {row['vfu_cores']:6s} replicate {n} streams {streams}: "
                      f"{row['latency_us']:9.1f} us {row['energy_uj']:9.1f} uJ "
                      f"{row['area_mm2']:6.3f} mm2 {row['mvmus']:5d} MVMUs {row['cores']:4d} "
                      f"cores {row['tiles']:3d} tiles  copies {row['copies'][:6]}  "
                      f"same integers {row['same_integers']}")
    plot(rows)
    write("replication", {"machine": machine(), "preset": "puma", "rows": rows,
                          "wall_s": time.perf_counter() - t_all})


def plot(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for k, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == name and r["control_streams"] == STREAMS]
        rs = [r for r in mine if r["vfu_cores_asked"] == "own"]
        shared = [r for r in mine if r["vfu_cores_asked"] == "shared"]
        one = [r for r in rows if r["model"] == name and r["control_streams"] == 1]
        n = [r["replicate"] for r in rs]
        for ax, key in zip(axes, ("latency_us", "energy_uj", "area_mm2")):
            base = rs[0][key]
            line, = ax.plot(n, [r[key] / base for r in rs], "o-", label=name)
            ax.plot([r["replicate"] for r in shared], [r[key] / base for r in shared], "x",
                    ms=9, color=line.get_color(),
                    label="VFU layers on shared cores" if k == 0 and key == "latency_us"
                    else None)
            ax.plot([r["replicate"] for r in one], [r[key] / base for r in one], "s",
                    mfc="none", ms=8, color=line.get_color(),
                    label="1 control stream per tile" if k == 0 and key == "latency_us"
                    else None)
    for ax, title in zip(axes, ("latency", "energy / inference", "area")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(COPIES, [str(c) for c in COPIES])
        ax.set_xlabel("copies allowed per convolution (replicate)")
        ax.set_ylabel(f"{title} relative to no copies")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Weight replication on the puma machine (batch of one inference; "
                 "x: VFU layers sharing the MVM layers' cores; square: 1 control stream)")
    fig.tight_layout()
    out = RESULTS / "plots" / "replication.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"plot -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
