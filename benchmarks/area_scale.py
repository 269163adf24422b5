"""Why whole-chip area falls less than crossbars: the same kept crossbar blocks as the
compression benchmark's VGG-style block variant (35 blocks, 3-bit levels), in models whose
classifier is 1024, 1536 or 2048 (the benchmark's model) wide. Hardware only: the weights
are seeded random ones, block-pruned and quantized by the compressor's joint projection
(its scale found by a search; one ADMM round, no retraining), so no accuracy is claimed --
this measures what a chip pays for a model of that size and for the blocks kept, on the
machines of ``compression.py``.

    python benchmarks/area_scale.py          # about 15 s on 2 cores
    -> benchmarks/results/area_scale.json, a markdown table on stdout
"""
import _common  # noqa: F401  (pins threads first)

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine, write

WIDTHS = (1024, 1536, 2048)
# Blocks kept per classifier layer (as VGG_BLOCKS keeps at 2048 wide): 6 of the first
# layer's column blocks, 12 of the square layer's, 6 of the last layer's row blocks.
KEPT = {"classifier.1": 6, "classifier.3": 12, "classifier.5": 6}


def rules_for(width: int):
    import compression as C
    n = width // 128
    total = {"classifier.1": n, "classifier.3": n * n, "classifier.5": n}
    return [{**r, "sparsity": {**r["sparsity"], "keep": KEPT[r["match"]] / total[r["match"]]}}
            if r["match"] in KEPT else r for r in C.VGG_BLOCKS]


def main():
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch

    import compression as C
    from compressor import compress, export_qdq
    from compressor.hardware import evaluate_hardware
    from models.onnx_export import export
    torch.set_num_threads(2)
    train, val, test = C.load_data(quick=True)
    x, y, cal = test[0][:8], test[1][:8], train[0][:64]
    out_dir = Path(tempfile.mkdtemp(prefix="xbarsim_area_scale_"))
    rows = []
    for width in WIDTHS:
        t0 = time.perf_counter()
        model = C.vgg_fmnist(width)
        rules = rules_for(width)
        sched = {**C.SCHEDULE, "admm": {**C.SCHEDULE["admm"], "rounds": 1},
                 "retrain": {"epochs": 0}}
        rec = C.recipe(f"area_scale_{width}", C.geometry(C.GEOM128, rules), rules, sched)
        res = compress(copy.deepcopy(model), rec, (train[0][:256], train[1][:256]), val,
                       progress=False)
        dense = evaluate_hardware(export(model, out_dir / f"dense_{width}.onnx", 19,
                                         dynamic_batch=True),
                                  "puma", x, y, calibration=cal, vfu_cores=C.VFU_CORES)
        comp = evaluate_hardware(export_qdq(res, out_dir / f"blocks_{width}.onnx"),
                                 ("puma", C.compressed_machine(C.BLOCK_BITS)),
                                 x, y, calibration=cal, vfu_cores=C.VFU_CORES)
        row = {"width": width, "weights": dense["weights"], "compression": comp["compression"]}
        for k in ("crossbars", "cores", "tiles", "energy_uj", "area_mm2"):
            row[k] = {"dense": dense[k], "blocks": comp[k],
                      "reduction_pct": 100 * (1 - comp[k] / dense[k])}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"width {width}: {row['weights']} weights, crossbars "
              f"-{row['crossbars']['reduction_pct']:.1f} %, energy "
              f"-{row['energy_uj']['reduction_pct']:.1f} %, area "
              f"-{row['area_mm2']['reduction_pct']:.1f} % ({row['seconds']:.0f} s)", flush=True)
    shutil.rmtree(out_dir)
    path = write("area_scale", {"machine": machine(), "protocol": __doc__, "rows": rows})
    print("\n| classifier width | weights | storage | crossbars | energy | area | tiles |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['weights'] / 1e6:.2f} M | {r['compression']:.0f}× | "
              + " | ".join(f"{r[k]['dense']:.4g} → {r[k]['blocks']:.4g} "
                           f"(−{r[k]['reduction_pct']:.1f} %)"
                           for k in ("crossbars", "energy_uj", "area_mm2"))
              + f" | {r['tiles']['dense']} → {r['tiles']['blocks']} |")
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
