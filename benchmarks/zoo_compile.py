"""ImageNet-scale ONNX model-zoo graphs (the ``light`` models shipped inside the onnx
package: weights made by ConstantOfShape) on the puma preset: compile time, timing+energy
simulation time (``simulate(prog, values=False)``), peak resident memory, and the mapping.

Each model runs in a fresh process (peak RSS is per model, numba's JIT included in the
first simulation). A model that does not fit the preset's 138 tiles is compiled again on
the smallest node it fits (``node.tiles`` from the placement's exact count).

    python benchmarks/zoo_compile.py [model ...]    # writes benchmarks/results/zoo_compile.json

Goals (ResNet-50, 224x224): compile < 30 s, simulation < 60 s, peak RSS < 4 GB.
"""
import _common  # noqa: F401  (pins threads before numpy loads BLAS)
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, write

MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]
GOALS = {"resnet50": {"compile_s": 30.0, "simulate_s": 60.0, "peak_rss_gb": 4.0}}


def zoo_path(name: str) -> Path:
    import onnx
    return Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"


def _peak_rss_gb() -> float:
    """This process's peak resident set size (VmHWM), GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def measure_one(name: str, overrides: list[str]) -> dict:
    """Compile and simulate once; a model too big for the node returns the tiles it needs."""
    from compiler import ModelTooBigError, compile_model
    from simulator import load_config, simulate
    t = time.perf_counter()
    try:
        prog = compile_model(zoo_path(name), load_config("puma", overrides))
    except ModelTooBigError as e:
        if e.tiles_needed is None:
            raise
        return {"model": name, "tiles_needed": e.tiles_needed}
    compile_s = time.perf_counter() - t
    rss_compile = _peak_rss_gb()
    t = time.perf_counter()
    rep = simulate(prog, values=False)
    sim_s = time.perf_counter() - t
    t = time.perf_counter()
    simulate(prog, values=False)
    sim_warm_s = time.perf_counter() - t
    m = prog.mapping
    return {"model": name, "overrides": overrides, "node_tiles": prog.config.node.tiles,
            "compile_s": round(compile_s, 2), "simulate_s": round(sim_s, 2),
            "simulate_warm_s": round(sim_warm_s, 2),
            "peak_rss_gb_after_compile": round(rss_compile, 2),
            "peak_rss_gb": round(_peak_rss_gb(), 2),
            "mvmus": int(m["mvmus"]), "crossbars": int(m["crossbars"]),
            "tiles": int(m["tiles"]), "cores": int(m["cores"]),
            # the placement kept: own cores for VFU layers, or shared where those do not fit
            "vfu_cores": m["vfu_cores"],
            "utilization": round(float(m["utilization"]), 4),
            "instructions": int(prog.n_instructions),
            "instructions_executed": int(rep.instructions_executed),
            # maps that outgrow tile.edram_kb are costed as if they fit
            "words_per_tile_max": rep.memory["words_per_tile_max"],
            "tiles_over_edram": rep.memory["tiles_over_edram"],
            "latency_ms": rep.latency_s * 1e3,
            "energy_mj": rep.energy_j["total"] * 1e3,
            "dynamic_energy_mj": (rep.energy_j["total"] - rep.energy_j.get("leakage", 0.0)) * 1e3}


def child_row(out: subprocess.CompletedProcess) -> tuple[dict | None, str]:
    """A ``--one`` child's row and, without one, why: its row is the last stdout line that
    is a JSON object (output may follow it); a failure's reason is stderr's last line, else
    its exit status (a killed child can leave both streams empty)."""
    if out.returncode == 0:
        for line in reversed(out.stdout.splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                return row, ""
        return None, "exit status 0 but no result row on stdout"
    lines = out.stderr.strip().splitlines()
    return None, lines[-1] if lines else f"exit status {out.returncode}, no error output"


def main(argv):
    if argv[:1] == ["--one"]:
        print(json.dumps(measure_one(argv[1], argv[2:])))
        return 0
    names = argv or MODELS
    rows = []
    for name in names:
        overrides = []
        while True:        # the preset first; then the smallest node the placement fits on
            out = subprocess.run([sys.executable, __file__, "--one", name, *overrides],
                                 capture_output=True, text=True)
            r, err = child_row(out)
            if r is None or "tiles_needed" not in r or overrides:
                break
            overrides = [f"node.tiles={r['tiles_needed']}"]
        if r is None or "tiles_needed" in r:
            err = err if r is None else "does not fit"
            rows.append({"model": name, "error": err})
            print(f"{name:14s} FAILED: {err}", flush=True)
            continue
        rows.append(r)
        print(f"{name:14s} compile {r['compile_s']:6.1f} s  simulate {r['simulate_s']:5.1f} s "
              f"(warm {r['simulate_warm_s']:4.1f})  peak RSS {r['peak_rss_gb']:4.2f} GB  "
              f"MVMUs {r['mvmus']:5d}  tiles {r['tiles']:3d}/{r['node_tiles']}  "
              f"VFU cores {r['vfu_cores']}  instructions {r['instructions']}", flush=True)
    checks = {}
    for r in rows:
        for k, lim in GOALS.get(r["model"], {}).items():
            checks[f"{r['model']}.{k}"] = {"value": r.get(k), "goal": lim,
                                           "met": r.get(k) is not None and r[k] < lim}
    p = write("zoo_compile", {"preset": "puma", "machine": machine(), "models": rows,
                              "goals": checks})
    print(f"wrote {p}")
    return 0 if all(c["met"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
