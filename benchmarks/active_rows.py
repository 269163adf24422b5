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
    python benchmarks/active_rows.py [--images 1000] [--adc-models puma,isaac]  # about 5-10 min

Writes ``benchmarks/results/active_rows.json`` and ``benchmarks/results/plots/
active_rows.png``, and prints a markdown table. Accuracy is the chip's on the first
``--images`` test images.
"""
import _common  # noqa: F401  (pins BLAS/numba threads before numpy loads)

import argparse
import functools
import itertools
import sys
import time

from _common import RESULTS, machine, write

FRACTIONS = (1, 2, 4, 8, 16)          # rows per read: R / fraction


def adc_model_list(text: str) -> list[str]:
    """``--adc-models``: distinct ADC cost models, each one ``adc.model`` accepts, checked
    before the minutes of work that would otherwise end in its error."""
    from simulator import load_config
    from simulator.errors import ConfigError
    names = [m.strip() for m in text.split(",")]
    for m in names:
        if not m:
            raise argparse.ArgumentTypeError(f"{text!r}: an empty name; give ADC models "
                                             f"separated by commas, e.g. puma,isaac")
        try:
            load_config("puma", [f"adc.model={m}"])
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r}: {', '.join(twice)} given more than "
                                         f"once; give each ADC model once")
    return names


def arg_parser() -> argparse.ArgumentParser:
    from simulator.cli import positive_int
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=positive_int, default=1000,
                    help="test images on the chip [1000]")
    ap.add_argument("--adc-models", type=adc_model_list, default="puma,isaac",
                    help="ADC cost models to cost every point with, comma separated "
                         "[puma,isaac]: PUMA's is linear in bits, ISAAC's doubles per bit")
    return ap


def main():
    args = arg_parser().parse_args()
    adc_models = args.adc_models

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

    def measure(adc_model, mname, preset, label, kind, active, variant, overrides,
                check=True) -> dict:
        t0 = time.perf_counter()
        onnx = cache / f"{mname}_{variant}.onnx"
        cfg = (preset, overrides + [f"adc.model={adc_model}"])
        hw = evaluate_hardware(onnx, cfg, x, y, calibration=cal, vfu_cores=C.VFU_CORES)
        # values do not depend on the cost model: check losslessness under the first only
        check = check and adc_model == adc_models[0]
        lossless = adc_lossless_check(onnx, cfg, x[:50], calibration=cal) if check else None
        return _row(mname, label, kind, active, cfg, hw, lossless, time.perf_counter() - t0,
                    adc_model)

    out_rows = []
    for adc_model, (mname, (rows, (preset, dense))) in itertools.product(adc_models,
                                                                          models.items()):
        point = functools.partial(measure, adc_model, mname, preset)
        tiny_ov = dense + C.compressed_machine(C.TINY_BITS) + ["adc.adaptive=true"]
        tiny = point("TinyADC (seed 0)", "tinyadc", rows, "admm_tinyadc", tiny_ov)
        per_read, half = [], rows // 2
        if (cache / f"{mname}_admm_tinyadc_r{half}.onnx").is_file():  # compression.py
            per_read.append(point(f"TinyADC per read of {half} rows (seed 0)",  # --context
                                  "tinyadc_reads", half, f"admm_tinyadc_r{half}",
                                  tiny_ov + [f"xbar.active_rows={half}"]))
        bits = tiny["adc_bits_max"]        # the width the clipping ADC gets
        out_rows += [point(f"dense, {rows // f} rows per read", "rows", rows // f, "dense",
                           dense + ["adc.adaptive=true", f"xbar.active_rows={rows // f}"])
                     for f in FRACTIONS]
        out_rows += [point(f"dense, {bits}-bit clipping ADC", "clip", rows, "dense",
                           dense + [f"adc.bits={bits}"], check=False), tiny, *per_read]
    out = {"images": int(len(x)), "rows": out_rows, "machine": machine(),
           "wall_s": round(time.perf_counter() - t_start, 1)}
    path = write("active_rows", out)
    print(table(out_rows))
    print(f"-> {path}\n-> {plot(out_rows, RESULTS / 'plots' / 'active_rows.png')}")


def _row(mname, label, kind, active, cfg, hw, check, seconds, adc_model) -> dict:
    row = {"model": mname, "variant": label, "kind": kind, "active_rows": active,
           "adc_model": adc_model,
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
    print(f"{mname} {label} ({adc_model} ADC): {bits} bits, {row['latency_us']:.0f} us, "
          f"{row['energy_uj']:.1f} uJ, chip {100 * row['accuracy_sim']:.1f} %, lossless "
          f"{row.get('lossless', '-')} ({seconds:.0f} s)", flush=True)
    return row


def table(rows) -> str:
    head = ("| ADC model | model | variant | ADC bits | chip acc. | latency | energy (ADC, "
            "leakage) | area | lossless |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        bits = r["adc_bits_max"] if r["kind"] != "clip" else f"{r['adc_bits_config']} (clips)"
        lines.append(
            f"| {r['adc_model']} | {r['model']} | {r['variant']} | {bits} | "
            f"{100 * r['accuracy_sim']:.1f} % | "
            f"{r['latency_us']:,.0f} µs | {r['energy_uj']:.1f} µJ ({r['energy_adc_uj']:.1f}, "
            f"{r['energy_leakage_uj']:.1f}) | {r['area_mm2']:.3f} mm² | "
            f"{ {True: 'yes', False: 'NO'}.get(r.get('lossless'), '—')} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = list(dict.fromkeys((r["model"], r["adc_model"]) for r in rows))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax_row, (m, adc_model) in zip(axes, panels):
        mr = [r for r in rows if r["model"] == m and r["adc_model"] == adc_model]
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
            ax.set_title(f"{m}, {adc_model} ADC model", fontsize=9)
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
