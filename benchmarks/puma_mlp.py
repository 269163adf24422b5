"""PUMA's MLP 1024-1024-2048-1024-10 on the puma preset (16-bit, 128x128 crossbars, 2-bit
cells, 1-bit DAC, 8-bit ADC): compile + simulate, bit-exactness, simulator speed against
the BLAS bound of the same bit-plane products, and latency/energy beside PUMA's figures.

    python benchmarks/puma_mlp.py            # writes benchmarks/results/puma_mlp.json
"""
import _common  # noqa: F401  (pins threads before numpy loads BLAS)
import argparse
import time

import numpy as np

from _common import best_of, machine, mlp_onnx, write
from compiler import compile_model
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate
from simulator.simulate import run_timing_engine

PUMA = {"latency_us": 20.8, "energy_uj": 23.2, "cpu_s": 239.0, "mac_per_s": 21e3}
SIZES = [1024, 1024, 2048, 1024, 10]


def blas_bound(prog, batch: int) -> float:
    """Seconds numpy's BLAS needs for every MVMU's bit-plane product of one batch:
    (steps * batch, rows) @ (rows, arrays * slices * cols) per MVMU, float32."""
    cfg = prog.config
    rng = np.random.default_rng(0)
    mats = []
    for i in range(len(prog.mvmu_loc)):
        r, c = int(prog.mvmu_rows_used[i]), int(prog.mvmu_cols_used[i])
        lv = prog.mvmu_levels[i][:, :r, :c]
        mats.append((rng.integers(0, 2, (cfg.input_steps * batch, r)).astype(np.float32),
                     np.ascontiguousarray(np.transpose(lv, (1, 0, 2)).reshape(r, -1)
                                          .astype(np.float32))))

    def run():
        for a, b in mats:
            a @ b
    t, _ = best_of(run, 5)
    return t


def bit_exact(prog, lp, x, shortcut: bool) -> bool:
    """The simulated logits equal the integer reference's (``prog`` needs an ideal ADC);
    ``shortcut`` False checks the bit-serial path, every bit plane through the ADC."""
    r = simulate(prog, {"input": x}, exact_shortcut=shortcut)
    return bool(np.array_equal(r.outputs["logits:int"],
                               run_integer_reference(lp, {"input": x})["logits:int"]))


def main():
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    cfg = load_config("puma")
    model = mlp_onnx(SIZES)
    rng = np.random.default_rng(1000)      # calibration images: not the measured inputs
    out = {"machine": machine(), "model": "MLP " + "-".join(map(str, SIZES)), "preset": "puma",
           "puma_simulator": PUMA, "runs": []}
    t0 = time.perf_counter()
    x1 = rng.standard_normal((8, SIZES[0])).astype(np.float32)
    prog, lp, _ = compile_model(model, cfg, calibration={"input": x1}, return_ir=True)
    t_compile = time.perf_counter() - t0
    run_timing_engine(prog)                         # numba compile (cached), not timed
    # Bit-exact against the integer reference needs the ideal ADC; the puma ADC (8 bits,
    # clip) may saturate -- report both.
    p_ideal, lp_ideal, _ = compile_model(model, load_config("puma", ["adc.bits=none"]),
                                         calibration={"input": x1}, return_ir=True)
    for batch, shortcut in ((1, True), (1, False), (16, True), (16, False)):
        x = np.random.default_rng(batch).standard_normal((batch, SIZES[0])).astype(np.float32)
        t, rep = best_of(lambda x=x, s=shortcut: simulate(prog, {"input": x},
                                                          exact_shortcut=s), 3)
        ref = run_integer_reference(lp, {"input": x})
        ort = run_onnxruntime(model, {"input": x})["logits"]
        bound = blas_bound(prog, batch)
        mvms = rep.mvm_ops * batch
        run = {
            "batch": batch, "lossless_shortcut": shortcut, "sim_wall_s": t,
            "timing_wall_s": rep.timing_wall_s,
            "values_wall_s": rep.values_wall_s, "mvm_ops_simulated": mvms,
            "mvm_per_s": mvms / t, "mac_per_s": mvms * 128 * 128 / t,
            "blas_bound_s": bound, "ratio_to_blas_bound": rep.values_wall_s / bound,
            "bit_exact_ideal_adc": bit_exact(p_ideal, lp_ideal, x, shortcut),
            "rel_err_vs_onnxruntime_puma_adc": float(np.linalg.norm(rep.outputs["logits"] - ort)
                                                     / np.linalg.norm(ort)),
            "max_abs_diff_vs_integer_reference_puma_adc": int(np.abs(
                rep.outputs["logits:int"] - ref["logits:int"]).max()),
        }
        out["runs"].append(run)
    d = rep.to_dict()
    out.update({
        "compile_wall_s": t_compile, "end_to_end_wall_s": t_compile + out["runs"][0]["sim_wall_s"],
        "latency_us": d["latency_s"] * 1e6, "latency_cycles": d["latency_cycles"],
        "energy_uj": d["energy_j"]["total"] * 1e6,
        "energy_uj_by_component": {k: v * 1e6 for k, v in d["energy_j"].items()},
        "crossbars": d["crossbars"], "mvmus": d["mvmus"], "cores": d["cores"],
        "tiles": d["tiles"], "instructions": d["instructions"], "adc_conversions":
        d["adc_conversions"], "mvm_ops": d["mvm_ops"],
    })
    p = write("puma_mlp", out)
    print(f"PUMA MLP {out['model']} on puma: {out['mvmus']} MVMUs ({out['crossbars']} "
          f"crossbars), {out['cores']} cores, {out['tiles']} tiles, {out['instructions']} "
          f"instructions")
    print(f"  latency {out['latency_us']:.2f} us (PUMA sim: {PUMA['latency_us']} us), energy "
          f"{out['energy_uj']:.2f} uJ (PUMA sim: {PUMA['energy_uj']} uJ)")
    print("  energy by component (uJ): " + ", ".join(
        f"{k} {v:.2f}" for k, v in out["energy_uj_by_component"].items() if k != "total"))
    print(f"  compile {t_compile:.3f} s; end to end {out['end_to_end_wall_s']:.3f} s "
          f"(PUMA sim: ~{PUMA['cpu_s']:.0f} s CPU)")
    for r in out["runs"]:
        mode = "x@W where lossless" if r["lossless_shortcut"] else "bit-serial, all steps"
        print(f"  batch {r['batch']:3d} ({mode}): simulate {r['sim_wall_s']:.3f} s (timing "
              f"{r['timing_wall_s']:.3f}, values {r['values_wall_s']:.3f}), "
              f"{r['mvm_per_s']:.0f} MVM/s = {r['mac_per_s'] / 1e6:.1f} M MAC/s; BLAS bound "
              f"{r['blas_bound_s']:.4f} s, values/bound {r['ratio_to_blas_bound']:.2f}x; "
              f"bit-exact (ideal ADC) {r['bit_exact_ideal_adc']}")
    print(f"-> {p}")


if __name__ == "__main__":
    main()
