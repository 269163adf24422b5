"""Three ways to a smaller ADC, judged on the chip: read fewer rows at once
(``xbar.active_rows``, any model), prune so every column sums less (TinyADC, trained by
``compression.py``), or fit a smaller ADC and let it clip.

A column's ADC must resolve the largest sum its read can produce, so the lossless bits grow
with the rows read at once: ``ceil(log2(rows x (2**dac_bits - 1) x top level + 1))``.
Reading ``r`` of the ``R`` rows per read bounds the sum by ``r`` rows at the cost of
``ceil(R / r)`` reads and conversions per input step (the partial parallel read of
NeuroSim-style designs). TinyADC bounds it by the nonzeros per column instead, at full
parallelism, with the accuracy its pruning costs. For each model of the compression
benchmark (the dense VGG-style model on ``puma``, LeNet-5 on 32 x 32 crossbars) this
compiles and simulates:

- the dense model read ``R, R/2, ..., R/16`` rows at a time, each crossbar with its lossless
  ADC bits (``adc.adaptive=true``), checked equal to an ideal ADC;
- the dense model with a clipping ADC of TinyADC's bits, reading every row;
- the seed-0 TinyADC model (lossless, adaptive), as ``compression.py`` measures it;
- where ``compression.py --context`` has trained it, TinyADC per read of R/2 rows on a chip
  that reads R/2 rows at once (the same ADC bits, up to twice the weights per column).

    python benchmarks/compression.py          # first: trains and caches the models
    python benchmarks/active_rows.py [--images 1000]   # about 2 min on 2 cores

Writes ``benchmarks/results/active_rows.json`` and ``benchmarks/results/plots/
active_rows.png``, and prints a markdown table. Accuracy is the chip's on the first
``--images`` test images.
"""
import _common  # noqa: F401  (pins BLAS/numba threads before numpy loads)

import argparse
import sys
import time

from _common import RESULTS, machine, write

FRACTIONS = (1, 2, 4, 8, 16)          # rows per read: R / fraction


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000,
                    help="test images on the chip [1000]")
    args = ap.parse_args()

    import compression as C
    from compressor.hardware import adc_lossless_check, evaluate_hardware
    cache = C.CACHE / "full"
    models = {"vgg_fmnist": (128, ("puma", [])),
              "lenet5": (32, ("puma", ["xbar.rows=32", "xbar.cols=32"]))}
    missing = [f"{m}_{v}.onnx" for m in models for v in ("dense", "admm_tinyadc")
               if not (cache / f"{m}_{v}.onnx").is_file()]
    if missing:
        sys.exit(f"error: {cache}: no {', '.join(missing)}; run python "
                 f"benchmarks/compression.py first (it trains and caches these models)")
    train, _, test = C.load_data(quick=False)
    x, y, cal = test[0][:args.images], test[1][:args.images], train[0][:64]
    t_start = time.perf_counter()

    def measure(mname, label, kind, active, variant, cfg, check=True) -> dict:
        t0 = time.perf_counter()
        onnx = cache / f"{mname}_{variant}.onnx"
        hw = evaluate_hardware(onnx, cfg, x, y, calibration=cal)
        lossless = adc_lossless_check(onnx, cfg, x[:50], calibration=cal) if check else None
        return _row(mname, label, kind, active, cfg, hw, lossless, time.perf_counter() - t0)

    out_rows = []
    for mname, (rows, (preset, dense)) in models.items():
        tiny_cfg = (preset, dense + C.compressed_machine(C.TINY_BITS) + ["adc.adaptive=true"])
        tiny = measure(mname, "TinyADC (seed 0)", "tinyadc", rows, "admm_tinyadc", tiny_cfg)
        per_read, half = [], rows // 2
        if (cache / f"{mname}_admm_tinyadc_r{half}.onnx").is_file():   # compression.py
            per_read.append(measure(                                    # --context trains it
                mname, f"TinyADC per read of {half} rows (seed 0)", "tinyadc_reads", half,
                f"admm_tinyadc_r{half}", (preset, tiny_cfg[1] + [f"xbar.active_rows={half}"])))
        bits = tiny["adc_bits_max"]        # the width the clipping ADC gets
        out_rows += [measure(mname, f"dense, {rows // f} rows per read", "rows", rows // f,
                             "dense", (preset, dense + ["adc.adaptive=true",
                                                        f"xbar.active_rows={rows // f}"]))
                     for f in FRACTIONS]
        out_rows += [measure(mname, f"dense, {bits}-bit clipping ADC", "clip", rows, "dense",
                             (preset, dense + [f"adc.bits={bits}"]), check=False), tiny,
                     *per_read]
    out = {"images": int(len(x)), "rows": out_rows, "machine": machine(),
           "wall_s": round(time.perf_counter() - t_start, 1)}
    path = write("active_rows", out)
    print(table(out_rows))
    print(f"-> {path}\n-> {plot(out_rows, RESULTS / 'plots' / 'active_rows.png')}")


def _row(mname, label, kind, active, cfg, hw, check, seconds) -> dict:
    row = {"model": mname, "variant": label, "kind": kind, "active_rows": active,
           "machine": list(cfg[1]), "adc_bits_max": hw["adc_bits_max"],
           "adc_bits_config": hw["adc_bits_config"], "accuracy_sim": hw["accuracy_sim"],
           "latency_us": hw["latency_us"], "energy_uj": hw["energy_uj"],
           "energy_adc_uj": hw["energy_breakdown_uj"]["adc"],
           "energy_leakage_uj": hw["energy_breakdown_uj"]["leakage"],
           "area_mm2": hw["area_mm2"], "crossbars": hw["crossbars"],
           "adc_conversions": hw["adc_conversions"], "seconds": round(seconds, 1)}
    if check is not None:
        row["lossless"] = check["equal"]
    bits = row["adc_bits_config"] if kind == "clip" else row["adc_bits_max"]
    print(f"{mname} {label}: {bits} bits, {row['latency_us']:.0f} us, "
          f"{row['energy_uj']:.1f} uJ, chip {100 * row['accuracy_sim']:.1f} %, lossless "
          f"{row.get('lossless', '-')} ({seconds:.0f} s)", flush=True)
    return row


def table(rows) -> str:
    head = ("| model | variant | ADC bits | chip acc. | latency | energy (ADC, leakage) | "
            "area | lossless |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        bits = r["adc_bits_max"] if r["kind"] != "clip" else f"{r['adc_bits_config']} (clips)"
        lines.append(
            f"| {r['model']} | {r['variant']} | {bits} | {100 * r['accuracy_sim']:.1f} % | "
            f"{r['latency_us']:,.0f} µs | {r['energy_uj']:.1f} µJ ({r['energy_adc_uj']:.1f}, "
            f"{r['energy_leakage_uj']:.1f}) | {r['area_mm2']:.3f} mm² | "
            f"{ {True: 'yes', False: 'NO'}.get(r.get('lossless'), '—')} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for ax_row, m in zip(axes, models):
        mr = [r for r in rows if r["model"] == m]
        for ax, key, unit in zip(ax_row, ("latency_us", "energy_uj"), ("µs", "µJ")):
            line = [r for r in mr if r["kind"] == "rows"]
            ax.plot([r["adc_bits_max"] for r in line], [r[key] for r in line], "o-",
                    color="tab:blue", label=f"dense, fewer rows per read, lossless (chip "
                                            f"{100 * line[0]['accuracy_sim']:.1f} %)")
            for r in line:
                ax.annotate(f"{r['active_rows']} rows", (r["adc_bits_max"], r[key]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
            for r in mr:
                if r["kind"] == "tinyadc":
                    ax.plot(r["adc_bits_max"], r[key], "s", color="tab:red", ms=8,
                            label=f"TinyADC, all rows (chip {100 * r['accuracy_sim']:.1f} %)")
                elif r["kind"] == "tinyadc_reads":
                    ax.plot(r["adc_bits_max"], r[key], "D", color="tab:purple", ms=7,
                            label=f"TinyADC per read of {r['active_rows']} rows (chip "
                                  f"{100 * r['accuracy_sim']:.1f} %)")
                elif r["kind"] == "clip":
                    ax.plot(r["adc_bits_config"], r[key], "x", color="tab:gray", ms=9,
                            label=f"dense, clipping ADC (chip {100 * r['accuracy_sim']:.1f} %)")
            ax.set_xlabel("ADC bits (largest)")
            ax.set_ylabel(f"{key.split('_')[0]} per inference ({unit})")
            ax.set_yscale("log")
            ax.set_title(m, fontsize=9)
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
