"""What the tile memory costs when it is sized to the maps the compiler keeps there: LeNet-5
(the shipped model), VGG-8, VGG-16 and ResNet-18 (32x32, seeded weights) on ``puma``, each
tile's eDRAM at the preset's 64 KiB (costed as if the maps fit) and with
``tile.edram_fit=true`` (each tile's own need, the next power of two KiB). Area, energy (its
leakage) and latency, which the memory's size does not change.

    python benchmarks/edram_fit.py       -> benchmarks/results/edram_fit.json
"""
import _common  # noqa: F401  (pins threads first)
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, write
from compiler import compile_model
from replication import models_to_run
from simulator import load_config, simulate


def main():
    rows, t_all = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, path, shape in models_to_run(Path(d)):
            x = np.random.default_rng(0).random((1,) + tuple(shape[1:])).astype(np.float32)
            for fit in (False, True):
                cfg = load_config("puma", [f"tile.edram_fit={str(fit).lower()}"])
                rep = simulate(compile_model(path, cfg, calibration={"input": x}),
                               values=False)
                rows.append({"model": name, "edram_fit": fit,
                             "edram_kib": rep.memory["edram_kib"],
                             "words_per_tile_max": rep.memory["words_per_tile_max"],
                             "tiles_over_edram": rep.memory["tiles_over_edram"],
                             "tiles": rep.tiles, "area_mm2": rep.area_mm2["total"],
                             "edram_area_mm2": rep.area_mm2["edram"],
                             "energy_uj": rep.energy_j["total"] * 1e6,
                             "leakage_uj": rep.energy_j["leakage"] * 1e6,
                             "latency_us": rep.latency_s * 1e6})
                r = rows[-1]
                print(f"{name:14s} edram_fit={fit!s:5s}: {r['edram_kib']:6d} KiB on "
                      f"{r['tiles']:3d} tiles, area {r['area_mm2']:7.3f} mm2 (eDRAM "
                      f"{r['edram_area_mm2']:6.3f}), energy {r['energy_uj']:8.1f} uJ, "
                      f"latency {r['latency_us']:8.1f} us")
    write("edram_fit", {"machine": machine(), "preset": "puma", "rows": rows,
                        "wall_s": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
