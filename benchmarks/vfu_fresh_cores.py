"""Why a VFU layer with no idle core by its input takes the next fresh core (maybe on the next
tile) rather than sharing one there: ResNet-18 with 1, 2 and 4 copies allowed and VGG-8 with
8 (32x32, seeded weights) on ``puma``, placed as ``vfu_cores=own`` places them and with that
step forced to the fallback the placer uses when fresh cores do not fit the node (sharing a
core by the input; ``compiler.place._place(..., fresh=False)``). Latency, energy, the VFU
layers that shared and whether the integers agree (batch 2).

    python benchmarks/vfu_fresh_cores.py     -> benchmarks/results/vfu_fresh_cores.json
"""
import _common  # noqa: F401  (pins threads first)
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from _common import machine, write
from compiler import compile_model, place
from simulator import load_config, simulate

POINTS = (("resnet18", 1), ("resnet18", 2), ("resnet18", 4), ("vgg8", 8))


@contextmanager
def sharing_by_the_input():
    """Every placement attempt shares a core by the input where none is idle."""
    real = place._place

    def attempt(prog, strips, cfg, replicate, own_cores=True, fresh=True):
        return real(prog, strips, cfg, replicate, own_cores, False)
    place._place = attempt
    try:
        yield
    finally:
        place._place = real


def main():
    import models
    rows, t_all = [], time.perf_counter()
    cfg = load_config("puma")
    with tempfile.TemporaryDirectory() as d:
        for name, n in POINTS:
            path = Path(d) / f"{name}.onnx"
            if not path.exists():
                models.export(name, path, seed=0)
            x = np.random.default_rng(0).random(
                (2,) + tuple(models.input_shape(name)[1:])).astype(np.float32)
            out = {}
            for policy in ("fresh core", "share by the input"):
                if policy == "fresh core":
                    prog = compile_model(path, cfg, calibration={"input": x}, replicate=n)
                else:
                    with sharing_by_the_input():
                        prog = compile_model(path, cfg, calibration={"input": x}, replicate=n)
                rep = simulate(prog, {"input": x})
                out[policy] = rep
                rows.append({"model": name, "replicate": n, "policy": policy,
                             "vfu_layers_sharing": prog.mapping["vfu_layers_sharing"],
                             "latency_us": rep.latency_s * 1e6,
                             "energy_uj": rep.energy_j["total"] * 1e6,
                             "area_mm2": rep.area_mm2["total"], "tiles": rep.tiles})
            fresh, shared = out["fresh core"], out["share by the input"]
            same = bool(np.array_equal(fresh.outputs["logits:int"],
                                       shared.outputs["logits:int"]))
            gain = 1 - fresh.latency_s / shared.latency_s
            rows[-1]["same_integers"] = rows[-2]["same_integers"] = same
            print(f"{name:9s} replicate {n}: fresh core {fresh.latency_s * 1e6:8.1f} us, "
                  f"sharing by the input {shared.latency_s * 1e6:8.1f} us "
                  f"({rows[-1]['vfu_layers_sharing']} sharing): {gain * 100:+.1f} % faster; "
                  f"same integers {same}")
    write("vfu_fresh_cores", {"machine": machine(), "preset": "puma", "rows": rows,
                              "wall_s": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
