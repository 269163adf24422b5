"""``xbarsim run``: compile + simulate + compare with onnxruntime; with no model, the demo on
the bundled LeNet-5 and Fashion-MNIST images."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from simulator.config import load_config
from simulator.errors import XbarsimError
from simulator.simulate import simulate

from .frontend import frontend, load_model
from .pipeline import compile_model
from .reference import run_onnxruntime


class RunError(XbarsimError, ValueError):
    """Bad inputs for ``xbarsim run``."""


def _inputs_for(graph, args, rng) -> dict[str, np.ndarray]:
    names = [n for n, _ in graph.inputs]
    if args.input:
        from simulator.cli import _load_npz
        data = _load_npz(args.input)
        missing = [n for n in names if n not in data]
        if missing:
            raise RunError(f"{args.input} lacks input {missing[0]!r}; the model's inputs are "
                           f"{', '.join(names)}")
        unknown = sorted(set(data) - set(names))
        if unknown:   # as `simulate` refuses it: a misnamed array is a mistake, not extra
            raise RunError(f"{args.input}: unknown input {unknown[0]!r}; the model's inputs "
                           f"are {', '.join(names)}")
        from simulator.functional import check_input
        out = {}
        for n, s in graph.inputs:
            check_input(n, data[n], RunError)
            if tuple(data[n].shape[1:]) != tuple(s[1:]):
                raise RunError(f"input {n!r} in {args.input} has shape {data[n].shape}; "
                               f"expected (N, {', '.join(map(str, s[1:]))})")
            with np.errstate(over="ignore"):
                out[n] = np.asarray(data[n], np.float32)
            if not np.isfinite(out[n]).all():
                raise RunError(f"input {n!r} in {args.input} holds values beyond float32's "
                               f"range (the model computes in float32)")
        return out
    n = 1 if args.random is None else args.random
    if n < 1:
        raise RunError(f"--random {n}: must be >= 1")
    return {n_: rng.standard_normal((n,) + tuple(s[1:])).astype(np.float32)
            for n_, s in graph.inputs}


def run_model(args) -> dict:
    """The ``run`` sub-command; returns the report dict it wrote."""
    t0 = time.perf_counter()
    demo = args.model is None
    labels = None
    out_dir = Path(args.out or "xbarsim-out")
    cfg = load_config(args.preset, args.overrides)   # a bad preset or --set: before anything
    if demo and (args.input or args.random is not None):
        raise RunError("--input/--random need a MODEL; the demo (no MODEL) runs its bundled "
                       "images (--limit N takes the first N)")
    if not demo and (args.limit is not None or args.out is not None):
        raise RunError("--limit and --out are the demo's (no MODEL); with a model use "
                       "--random N or --input, and --json/--trace/--plots")
    if demo:
        import models
        model_path = models.pretrained_path("lenet5_fmnist")
        x, labels = models.load_demo_images(args.limit)
        inputs = {"input": x.astype(np.float32)}
        args.json = args.json or str(out_dir / "report.json")
        args.trace = args.trace or str(out_dir / "trace.json")
        args.plots = args.plots or str(out_dir / "plots")
        capped = (f" (all there are; --limit {args.limit} asked for more)"
                  if args.limit is not None and args.limit > len(x) else "")
        print(f"xbarsim demo: LeNet-5 (Fashion-MNIST) on the '{args.preset}' machine, "
              f"{len(x)} bundled test images{capped}")
    else:
        model_path = args.model
        graph = frontend(load_model(model_path))
        inputs = _inputs_for(graph, args, np.random.default_rng(0))
    from simulator.cli import check_output_files
    check_output_files(args, {model_path: "model", args.input: "--input file"})
    calib = {k: v[:32] for k, v in inputs.items()}
    t1 = time.perf_counter()
    prog = compile_model(model_path, cfg, calibration=calib, progress=not args.quiet,
                         replicate=args.replicate, vfu_cores=args.vfu_cores)
    t2 = time.perf_counter()
    ref = run_onnxruntime(model_path, inputs)
    rep = simulate(prog, inputs, trace=bool(args.trace), trace_cap=args.trace_cap,
                   reference=ref)
    t3 = time.perf_counter()
    batch = len(next(iter(inputs.values())))
    out_name = prog.outputs[0].name
    acc = rep.accuracy if isinstance(rep.accuracy, dict) else {}
    if labels is not None:
        sim_top1 = float((rep.outputs[out_name].argmax(1) == labels).mean())
        ort_top1 = float((ref[out_name].argmax(1) == labels).mean())
        acc = dict(acc, sim_top1_vs_labels=sim_top1, ort_top1_vs_labels=ort_top1)
        rep.accuracy = acc
    print()
    print(rep.summary())
    e_img = rep.energy_j["total"]
    print(f"per image    {rep.latency_s * 1e6:10.3f} us latency, {e_img * 1e6:.3f} uJ "
          f"(one inference" + (f"; the batch of {batch} is {batch} inferences)" if batch > 1
                                else ")"))
    # one graph output: its figures at the top level; several: one entry per output
    per_output = {k: v for k, v in acc.items() if isinstance(v, dict)} or (
        {"": acc} if "max_abs_err" in acc else {})
    for name, a in per_output.items():
        line = (f"accuracy     {name + ': ' if name else ''}max |err| "
                f"{a.get('max_abs_err', float('nan')):.3g}, relative error "
                f"{a.get('rel_err', float('nan')):.2e} vs onnxruntime")
        if a.get("top1_agreement") is not None:
            line += f", top-1 agreement {a['top1_agreement'] * 100:.1f}%"
        if a.get("reference_nonfinite"):
            line += (f" ({a['reference_nonfinite']} onnxruntime value(s) past float32 left "
                     f"out)")
        print(line)
    if labels is not None:
        print(f"top-1        simulated chip {acc['sim_top1_vs_labels'] * 100:.1f}%, "
              f"onnxruntime {acc['ort_top1_vs_labels'] * 100:.1f}% (vs labels)")
    print(f"wall time    compile {t2 - t1:.2f} s, simulate {t3 - t2:.2f} s "
          f"(timing {rep.timing_wall_s:.2f} s, values {rep.values_wall_s:.2f} s), "
          f"total {time.perf_counter() - t0:.2f} s")
    from simulator.cli import _write_outputs
    _write_outputs(rep, args)
    return rep.to_dict()
