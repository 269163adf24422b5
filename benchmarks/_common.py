"""Shared by the benchmark scripts: thread pinning (import this first), ONNX MLPs built
without torch, timing helpers, result writing."""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")   # 2 cores: oversubscription made a peer 10x slower

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def mlp_onnx(sizes, seed=0, relu=True):
    """An ONNX MLP (Gemm with bias [+ Relu]) with seeded random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"],
                                      [out if last or not relu else f"g{i}"]))
        if relu and not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        x = out
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, sizes[0]])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, sizes[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def best_of(fn, repeat=5):
    """(fastest wall time of ``repeat`` calls, that call's result): figures read from the
    result (a report's own timings) then come from the same run as the time."""
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t
        if best is None or t < best[0]:
            best = (t, out)
    return best


def _cpu_model() -> str:
    """The CPU's model name (Linux), which ``platform`` does not give: trained weights, and
    so accuracies, differ in the last digits between CPUs whose kernels round differently."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    info = {"python": platform.python_version(), "cpu": platform.processor() or
            platform.machine(), "cpu_model": _cpu_model(), "cores": os.cpu_count(),
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numpy": np.__version__}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    return info


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(data, indent=1))
    return p
