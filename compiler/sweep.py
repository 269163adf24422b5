"""Design-space sweeps: compile + simulate every (model, config) point of a grid, in parallel,
resumably, into one tidy table.

    xbarsim sweep --models lenet5_fmnist,vgg8:width=0.25 --grid xbar.rows=64,128,256 \\
                  --grid adc.bits=4,5,6,7,8 --data demo -o results.csv

API: :func:`run_sweep` (returns a pandas DataFrame). One row per point: ``model``, ``data``,
``samples``, one column per grid key (named by its dotted config key), the metrics
(:data:`METRIC_COLUMNS`), ``status`` (``ok``/``failed``), ``error`` (one line), the wall times
(:data:`WALL_COLUMNS`) and ``point`` (the point's key).

How it is built:

- *Models*: ONNX files, shipped pretrained models (``lenet5_fmnist``) or zoo names with
  builder options (``vgg8:width=0.25``); zoo models are exported once (torch, seed 0) into
  ``RESULTS.models/`` next to the results, and again after ``models/`` or torch changes.
- *Grid*: ``KEY=V1,V2`` per config key; ``K1=K2=V1,V2`` sets both keys to each value
  (``xbar.rows=xbar.cols=64,128`` for square crossbars). Points are the product, models
  outermost, in the order given; the table keeps that order whatever order points finish in.
- *Compile options*: ``compile.replicate`` (weight copies) and ``compile.vfu_cores`` (own or
  shared cores for VFU layers; both :mod:`compiler.place`) are grid keys like config keys,
  passed to ``compile_model``.
- *Data* (optional): a batch whose outputs are compared with onnxruntime (relative error,
  top-1 agreement) and, with labels, top-1 accuracy. A model whose input does not take the
  data's samples gets seeded standard-normal inputs instead (``data`` column: ``random``).
- *Resume*: every finished point is written at once to ``RESULTS.points/KEY.json`` (atomic
  rename), KEY a hash of the model file's bytes, the resolved config, the input batch and
  the code (:func:`code_fingerprint`). A rerun loads what is there and computes only the
  rest; after a change to the simulator or the compiler, every point afresh. Failures that
  follow from the point itself (a :class:`~simulator.errors.XbarsimError`: invalid config,
  model too big) are stored as failed rows; anything else (a crashed worker, a bug) is
  reported but retried next run. A local worker that dies takes only its own point with it.
- *Executors*: ``local`` (concurrent.futures ProcessPoolExecutor, spawned workers),
  ``dask`` (dask.distributed: a cluster at ``address`` or a LocalCluster for the run) and
  ``ray`` (when installed). Workers run with BLAS/OpenMP pinned to one thread each.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.config import (MachineConfig, load_config, names_preset_file,
                              one_string_refused, with_overrides)
from simulator.errors import ConfigError, XbarsimError
from simulator.fileio import atomic_write, check_writable_folder, names_a_folder
from simulator.cli import positive_int

from .errors import CompilerError
from .place import check_vfu_cores

#: Bump when a stored point's layout changes; old points are then recomputed. (A change
#: of the code that computes points changes every key by itself: see code_fingerprint.)
POINT_FORMAT = 1
EXECUTORS = ("local", "dask", "ray")
DATA_SETS = ("demo", "fashion-mnist", "digits", "random")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")
CALIBRATION_SAMPLES = 32

ENERGY_PARTS = ("crossbar", "dac", "adc", "shift_add", "vfu", "edram", "noc", "leakage")
AREA_PARTS = ("crossbar", "adc", "dac", "sample_hold", "shift_add", "mvmu_registers", "vfu",
              "core_other", "edram", "router")
#: Metric columns of every table, in order (NaN where a point failed or has no data).
METRIC_COLUMNS = (
    ("latency_s", "latency_cycles", "throughput_per_s", "energy_j")
    + tuple(f"energy_{p}_j" for p in ENERGY_PARTS) + ("area_mm2",)
    + tuple(f"area_{p}_mm2" for p in AREA_PARTS)
    + ("crossbars", "mvmus", "cores", "tiles", "utilization", "mvm_ops", "adc_conversions",
       "adc_bits", "instructions", "words_per_tile_max", "tiles_over_edram", "edram_kib",
       "accuracy",
       "accuracy_onnx", "top1_agreement", "rel_err", "max_abs_err"))
INT_COLUMNS = ("latency_cycles", "crossbars", "mvmus", "cores", "tiles", "mvm_ops",
               "adc_conversions", "adc_bits", "instructions", "words_per_tile_max",
               "tiles_over_edram", "edram_kib")
#: Wall-clock columns: the only ones that differ between two runs of the same sweep.
WALL_COLUMNS = ("wall_s", "compile_s", "simulate_s")


class SweepError(XbarsimError, ValueError):
    """A sweep request that cannot run: bad grid, unknown model or executor, no data."""


# --------------------------------------------------------------------------- the request

@dataclass(frozen=True)
class GridAxis:
    """One grid dimension: the keys it sets (usually one) and its values."""

    keys: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass
class ModelEntry:
    """A model of the sweep, resolved to a file, with the inputs its points are fed."""

    label: str
    path: Path
    sha: str
    input_shapes: dict[str, tuple[int, ...]]
    data_name: str | None = None
    data: dict | None = None  # {"inputs": {name: x}, "labels": y|None, "reference": {..}}
    data_sha: str = ""


def parse_grid(grid: dict | Sequence[str] | None) -> list[GridAxis]:
    """Grid axes from ``{"adc.bits": [4, 6]}`` / ``{("xbar.rows", "xbar.cols"): [...]}`` or
    from CLI strings ``"adc.bits=4,6"`` / ``"xbar.rows=xbar.cols=64,128"``."""
    from simulator.config import _parse_value
    axes: list[GridAxis] = []
    items: list[tuple[tuple[str, ...], list]] = []
    if isinstance(grid, str):
        raise SweepError(one_string_refused("grid", grid, "KEY=V1,V2,..."))
    if isinstance(grid, dict):
        for k, vs in grid.items():
            keys = tuple(k) if isinstance(k, (tuple, list)) else tuple(str(k).split("="))
            if isinstance(vs, np.ndarray):
                vs = vs.tolist()                     # Python scalars; a 0-d array: one value
            if not isinstance(vs, Iterable) or isinstance(vs, (str, bytes)):
                vs = [vs]
            # text as the CLI strings' ("none" is none); numpy scalars as Python ones: the
            # table, the stored points and their keys
            value_type = _value_type(tuple(str(k).strip() for k in keys))
            try:
                vals = [_parse_value(v, value_type) if isinstance(v, str)
                        else v.item() if isinstance(v, np.generic) else v for v in vs]
            except ConfigError as e:
                raise SweepError(f"grid {'='.join(map(str, keys))}: {e}") from None
            items.append((keys, vals))
    else:
        for text in grid or ():
            parts = str(text).split("=")
            if len(parts) < 2 or not parts[-1].strip():
                raise SweepError(f"grid {text!r}: expected KEY=V1,V2,... e.g. adc.bits=4,6,8")
            value_type = _value_type(tuple(k.strip() for k in parts[:-1]))
            try:
                vals = [_parse_value(v, value_type) for v in parts[-1].split(",")]
            except ConfigError as e:
                raise SweepError(f"grid {text!r}: {e}") from None
            items.append((tuple(parts[:-1]), vals))
    seen: set[str] = set()
    for keys, vals in items:
        keys = tuple(k.strip() for k in keys)
        if not all(keys):
            raise SweepError(f"grid key {'='.join(keys)!r}: empty key")
        for k in keys:
            if k in seen:
                raise SweepError(f"grid key {k!r} given twice")
            seen.add(k)
        if not vals:
            raise SweepError(f"grid {'='.join(keys)}: no values")
        dup = [v for i, v in enumerate(vals) if v in vals[:i]]
        if dup:
            raise SweepError(f"grid {'='.join(keys)}: value {dup[0]!r} given twice")
        axes.append(GridAxis(keys, tuple(vals)))
    return axes


# Grid keys that are compiler options rather than machine config: key -> compile_model
# keyword. They go to the table like config keys and into the point's hash.
COMPILE_KEYS = {"compile.replicate": "replicate", "compile.vfu_cores": "vfu_cores"}


def _value_type(keys: tuple[str, ...]) -> str:
    """The declared type a grid axis' text values are read as, as --set reads them
    (adc.model=ideal is the name, not none): "" (untyped) for compile options, unknown keys
    (refused later, by name) and keys of different types."""
    from simulator.config import _field_type
    types = set()
    for key in keys:
        try:
            types.add("" if key in COMPILE_KEYS else _field_type(key))
        except ConfigError:
            types.add("")
    return types.pop() if len(types) == 1 else ""


def split_point(pt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(machine config overrides, compile_model keywords) of one grid point."""
    return ({k: v for k, v in pt.items() if k not in COMPILE_KEYS},
            {COMPILE_KEYS[k]: v for k, v in pt.items() if k in COMPILE_KEYS})


def _check_compile_options(options: dict) -> None:
    """A point's compile options are valid, or a ConfigError (that point fails, and a
    sweep where no point is valid stops, as with config values)."""
    rep = options.get("replicate", 1)
    if isinstance(rep, bool) or not isinstance(rep, int) or rep < 1:
        shown = "none" if rep is None else repr(rep)
        raise ConfigError(f"compile.replicate = {shown}: must be an integer >= 1 (the "
                          f"weight copies per layer)")
    try:
        check_vfu_cores(options.get("vfu_cores", "own"))
    except CompilerError as e:        # a point's config error, named by its grid key
        raise ConfigError(f"compile.{e}") from None


def _check_keys(base: MachineConfig, keys: Iterable[str]) -> None:
    """An unknown key is a typo for the whole sweep (an error now); a bad value is one
    point's failure (a failed row later)."""
    flat = base.to_dict()
    for key in keys:
        if key.partition(".")[0] == "compile":   # not a config section: name the options
            raise ConfigError(f"{key}: unknown compile option; use {', '.join(COMPILE_KEYS)}")
        node: Any = flat
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                with_overrides(base, {key: 0})  # raises ConfigError naming the key
                raise ConfigError(f"{key}: unknown config key")
            node = node[part]
        if isinstance(node, dict):
            raise ConfigError(f"{key}: a config section, not a key; use {key}.FIELD")


def grid_points(axes: list[GridAxis]) -> list[dict[str, Any]]:
    """The product of the axes as ``{dotted key: value}`` dicts, first axis outermost."""
    points = []
    for combo in itertools.product(*(ax.values for ax in axes)):
        pt: dict[str, Any] = {}
        for ax, v in zip(axes, combo):
            for k in ax.keys:
                pt[k] = v
        points.append(pt)
    return points


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split_models(text: str) -> list[str]:
    """``--models`` split at its commas, except those inside brackets, which belong to a
    zoo option: ``lenet5_fmnist,mlp:hidden=(64,32)`` is two models."""
    return [m for m in re.split(r",(?![^()\[\]]*[)\]])", text) if m.strip()]


def _parse_model_spec(spec: str) -> tuple[str, dict]:
    from simulator.config import _parse_value
    name, *opts = spec.split(":")
    kw = {}
    for o in opts:
        if "=" not in o:
            raise SweepError(f"model {spec!r}: options go as NAME:KEY=VALUE, e.g. vgg8:width=0.25")
        k, v = o.split("=", 1)
        try:     # Python literals as xbarsim train --opt reads them: hidden=(64,32)
            kw[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            kw[k.strip()] = _parse_value(v.strip())
    return name.strip(), kw


def _unique_labels(entries: list[ModelEntry]) -> None:
    """Files of one name in different folders (dense/lenet5.onnx, pruned/lenet5.onnx) are
    labelled with their folder, as the table and the plots group rows by label; the same
    model given twice is refused, also under two names (a zoo model's options in another
    order, one file by two paths)."""
    first: dict[Path, ModelEntry] = {}
    for e in entries:
        other = first.setdefault(e.path.resolve(), e)
        if other is not e and other.label != e.label:
            raise SweepError(f"models {other.label!r} and {e.label!r} are the same model "
                             f"({e.path.name}); list it once")
    labels = [e.label for e in entries]
    clash = [e for e in entries if labels.count(e.label) > 1 and e.path.suffix == ".onnx"]
    paths = {e.path.resolve() for e in clash}
    for depth in range(1, max((len(p.parts) for p in paths), default=1)):
        # as few folders as tell them apart: a/out/m.onnx and b/out/m.onnx -> a/out/m
        tails = {p: "/".join(p.with_suffix("").parts[-depth - 1:]) for p in paths}
        if len(set(tails.values())) == len(paths):
            for e in clash:
                e.label = tails[e.path.resolve()]
            break
    labels = [e.label for e in entries]
    twice = sorted(x for x in set(labels) if labels.count(x) > 1)
    if twice:
        raise SweepError(f"model {twice[0]!r} is given twice; list it once")


def resolve_model(spec: str | os.PathLike, cache: Path) -> tuple[str, Path]:
    """(label, ONNX path) for an ONNX file, a shipped pretrained name or a zoo name (exported
    once into ``cache``)."""
    import models
    from models.demo import PRETRAINED
    p = Path(spec)
    if p.suffix == ".onnx" or p.is_file():
        if not p.is_file():
            raise SweepError(f"model file {str(spec)!r} does not exist")
        return p.stem, p
    name, kw = _parse_model_spec(str(spec))
    if name in PRETRAINED and not kw:
        return name, models.pretrained_path(name)
    if name not in models.MODEL_NAMES:
        raise SweepError(f"model {str(spec)!r}: not an ONNX file, a pretrained model "
                         f"({', '.join(PRETRAINED)}) or a zoo name "
                         f"({', '.join(models.MODEL_NAMES)})")
    label = name + "".join(f"-{k}={v}" for k, v in sorted(kw.items()))
    path = cache / f"{label}.{export_fingerprint()}.onnx"
    if not path.is_file():
        try:
            export = models.export
        except ImportError as e:
            raise SweepError(f"zoo model {name!r} needs torch to export ({e}); pass an ONNX "
                             f"file instead") from e
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:     # parallel workers may export the same model
            export(name, tmp, **kw)
    return (name if not kw else f"{name}:" + ":".join(f"{k}={v}" for k, v in kw.items()),
            path)


def _input_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from .frontend import load_model   # the compiler's checks and one-line errors
    m = load_model(path)
    inits = {t.name for t in m.graph.initializer}
    shapes = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1
                for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = tuple(dims)
    return shapes


def load_data(spec: str | os.PathLike | None, samples: int) -> tuple[np.ndarray, Any] | None:
    """(images, labels) of a data set (test split) or None for ``random``/no data."""
    if spec is None:
        return None
    if samples < 1:      # random inputs too: a batch of none is no batch
        raise SweepError(f"samples = {samples}: must be >= 1")
    if str(spec) == "random":
        return None
    if str(spec) == "demo":
        import models
        return models.load_demo_images(samples)
    from models.data import load
    from models.errors import DataError
    try:
        return load(spec, "test", limit=samples)
    except DataError as e:
        msg = str(e)
        if "; use fashion-mnist" not in msg:   # a data set that is there but unreadable
            raise
        # an unknown name: the data sets load() lists, and the two the sweep adds
        raise SweepError(msg.replace("; use ", "; use demo, random, ", 1)) from None


def _attach_data(entry: ModelEntry, batch, data_name: str | None, samples: int) -> None:
    from .reference import run_onnxruntime
    if data_name is None:
        return
    if not entry.input_shapes:   # nothing to feed: each point reports what compiling says
        return
    shape = next(iter(entry.input_shapes.values()))[1:]
    sample = tuple(batch[0].shape[1:]) if batch is not None else None
    if len(entry.input_shapes) == 1 and batch is not None and (
            sample == shape or sample == (1,) + shape
            or (len(shape) == 1 and int(np.prod(sample)) == shape[0])):
        # images go to a vector model (an MLP) flattened, and to a sequence model (rows of
        # pixels, LSTM/GRU) without their one channel, as their training fed them
        x = np.asarray(batch[0], np.float32).reshape((len(batch[0]),) + shape)
        inputs = {next(iter(entry.input_shapes)): x}
        labels, name = np.asarray(batch[1]), data_name
    else:
        rng = np.random.default_rng(0)
        inputs = {n: rng.standard_normal((samples,) + s[1:]).astype(np.float32)
                  for n, s in entry.input_shapes.items()}
        labels, name = None, "random"
        if data_name != "random":
            takes = ", ".join(str(s[1:]) for s in entry.input_shapes.values())
            print(f"note: {entry.label} takes samples {takes}, not {data_name} samples "
                  f"{sample}; it gets {samples} random inputs", file=sys.stderr)
    entry.data_name = name
    entry.data = {"inputs": inputs, "labels": labels,
                  "reference": run_onnxruntime(entry.path, inputs)}
    entry.data_sha = _sha_arrays(*inputs.values(), labels)


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code that computes a point: the sources (``*.py``) and presets
    (``*.yaml``) of the simulator and compiler packages, by path within them, read once per
    process. It is part of every point's key, so a rerun after a change to the cost model
    or the compiler recomputes instead of mixing old numbers with new ones; each worker
    computes it too and refuses a point of a sweep whose code differs from its own. (Model
    files, exported zoo models included, are hashed by their bytes; models/ is not here.)"""
    import compiler
    import simulator
    h = hashlib.sha256()
    for pkg in (simulator, compiler):
        _hash_package(h, pkg, ("*.py", "*.yaml"))
    return h.hexdigest()[:16]


def _hash_package(h, pkg, patterns) -> None:
    """Feed ``h`` the files of package ``pkg`` matching ``patterns``, by path within it."""
    root = Path(pkg.__file__).parent
    files = {p.relative_to(root).as_posix(): p for pattern in patterns
             for p in root.rglob(pattern)}
    for rel in sorted(files):
        h.update(f"{pkg.__name__}/{rel}\0{_sha_file(files[rel])}\0".encode())


@functools.cache
def export_fingerprint() -> str:
    """A hash of what a zoo export depends on: the ``models`` package's sources and the
    installed torch. Part of an exported model's file name in ``RESULTS.models/``, so an
    edited model definition or another torch exports afresh instead of reusing a stale
    graph (the points then follow the new file's bytes)."""
    import importlib.metadata

    import models
    h = hashlib.sha256()
    _hash_package(h, models, ("*.py",))
    try:
        h.update(importlib.metadata.version("torch").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    return h.hexdigest()[:10]


def point_key(entry: ModelEntry, config: dict, options: dict) -> str:
    """The hash a point is stored under: model bytes + ``config`` (the resolved config; for
    an invalid one, the preset and the overrides) + compile options + input batch + the
    code (:func:`code_fingerprint`)."""
    spec = {"format": POINT_FORMAT, "code": code_fingerprint(), "model": entry.sha,
            "config": config, "compile": options, "data": [entry.data_name, entry.data_sha]}
    blob = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- one point

def _pin_threads() -> None:
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    return msg if isinstance(e, (XbarsimError, ValueError)) and msg else \
        f"{type(e).__name__}: {msg}"


def evaluate_point(task: dict, data: dict | None = None) -> dict:
    """Compile + simulate one point (runs in a worker). Never raises: a failure comes back
    as ``status: failed`` with the error's first line; ``store`` says whether the failure is
    the point's own (kept) or an accident (retried on the next run)."""
    from simulator.report import error_metrics
    from simulator.simulate import simulate

    from .pipeline import compile_model
    _pin_threads()
    t0 = time.perf_counter()
    row: dict[str, Any] = {}
    if task.get("code", code_fingerprint()) != code_fingerprint():
        # a worker of a cluster started before an edit, or on another checkout: its numbers
        # would be stored under the sweep's key, as if this code had computed them
        return _crashed(RuntimeError(
            f"the worker's code (fingerprint {code_fingerprint()}) differs from the sweep's "
            f"({task['code']}): the source was edited during the sweep, or a cluster's "
            f"workers run another checkout; rerun the sweep (restart the workers)"))
    elsewhere = _files_missing_here(task)
    if elsewhere:   # the worker's setup, not the point: not stored, retried by a rerun
        return _crashed(FileNotFoundError(
            f"{elsewhere} does not exist on this worker (a cluster's workers need the "
            f"sweep's files at the same paths, e.g. on a shared file system)"))
    try:
        cfg = load_config(task["preset"], task["overrides"])
        calib = None
        if data is not None:
            calib = {k: v[:CALIBRATION_SAMPLES] for k, v in data["inputs"].items()}
        prog = compile_model(task["model_path"], cfg, calibration=calib,
                             **task.get("compile", {}))
        t1 = time.perf_counter()
        rep = simulate(prog, data["inputs"] if data else None, values=data is not None)
        t2 = time.perf_counter()
        d = rep.to_dict()
        row.update({k: d[k] for k in ("latency_s", "latency_cycles", "throughput_per_s",
                                      "crossbars", "mvmus", "cores", "tiles", "mvm_ops",
                                      "adc_conversions", "instructions")})
        row["utilization"] = prog.mapping.get("utilization")
        # tiles whose maps outgrow tile.edram_kb are costed as if they fit: say how many
        row.update({k: d["memory"][k] for k in ("words_per_tile_max", "tiles_over_edram",
                                                "edram_kib")})
        # the placement kept ("own" falls back to "shared" when the node is too small)
        row["vfu_cores"] = prog.mapping.get("vfu_cores")
        # the widest ADC on the chip (with adc.adaptive: what its weights need); none if ideal
        row["adc_bits"] = max((L["adc_bits"] for L in d["layers"] if L["adc_bits"]),
                              default=None)
        row["energy_j"] = d["energy_j"]["total"]
        row.update({f"energy_{k}_j": v for k, v in d["energy_j"].items() if k != "total"})
        row["area_mm2"] = d["area_mm2"]["total"]
        row.update({f"area_{k}_mm2": v for k, v in d["area_mm2"].items() if k != "total"})
        if data is not None:
            out = prog.outputs[0].name
            y, ref = rep.outputs[out], data["reference"][out]
            row.update({k: v for k, v in error_metrics({out: y}, {out: ref}).items()})
            if data.get("labels") is not None and y.ndim == 2:
                labels = np.asarray(data["labels"])
                row["accuracy"] = float((y.argmax(1) == labels).mean())
                row["accuracy_onnx"] = float((ref.argmax(1) == labels).mean())
        row.update(status="ok", error=None, compile_s=t1 - t0, simulate_s=t2 - t1)
        store = True
    except Exception as e:  # noqa: BLE001 -- one point's failure must not end the sweep
        row.update(status="failed", error=_one_line(e))
        store = isinstance(e, XbarsimError)
        row["_traceback"] = traceback.format_exc(limit=8)
    row["wall_s"] = time.perf_counter() - t0
    return {"row": _plain(row), "store": store}


def _plain(o):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


# --------------------------------------------------------------------------- executors

@contextlib.contextmanager
def _pinned_env():
    """BLAS/OpenMP/numba at one thread in every worker started inside this block (they
    inherit the environment): N workers on N cores, no oversubscription."""
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


#: In a local worker: one flag per job, set when the worker starts that job's point.
_STARTED = None


def _init_local_worker(started) -> None:
    global _STARTED
    _STARTED = started
    _pin_threads()
    # spawned with Ctrl-C ignored (_spawned_deaf); from here on it stops the worker at once
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _spawned_deaf():
    """Processes started inside begin with Ctrl-C ignored: one that lands while a worker
    is still importing would print a traceback there (Python installs its handler only
    where SIGINT is not ignored). The parent's Ctrl-C is off only while it submits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _evaluate_local(fn, i: int, task: dict, data):
    _STARTED[i] = 1     # a point started and never returned is one its worker died on
    return fn(task, data)


def _run_local(jobs, workers, points_dir):
    """Yield ``(job index, result)`` from spawned worker processes. A worker that dies
    (a crash in native code, killed for memory) breaks the pool and every point in it: the
    points not yet started go to a fresh pool, and those that had started are run again,
    each alone, to tell the one that killed its worker (a crashed row, not stored) from
    those that died with it."""
    todo = list(range(len(jobs)))
    while todo:
        started, todo = yield from _local_pool(jobs, todo, workers, points_dir)
        for i in started:
            if len(started) > 1:
                again, _ = yield from _local_pool(jobs, [i], 1, points_dir)
                if not again:
                    continue
            yield i, _crashed(BrokenProcessPool(
                "its worker process died on this point (killed: out of memory? or a crash "
                "in native code)"))


def _local_pool(jobs, todo, workers, points_dir):
    """Run ``jobs[todo]`` in one process pool, yielding ``(i, result)``; returns the indices
    a dead worker left unfinished: (those started, those not)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("spawn")   # not fork: the parent runs onnxruntime's and BLAS's threads
    started = ctx.RawArray("b", len(jobs))
    broken, finished = [], 0
    with _pinned_env(), ProcessPoolExecutor(workers, mp_context=ctx,
                                            initializer=_init_local_worker,
                                            initargs=(started,)) as pool:
        with _spawned_deaf():   # submit spawns the workers
            futs = {pool.submit(_evaluate_local, evaluate_point, i, *jobs[i]): i for i in todo}
        try:
            for f in as_completed(futs):
                try:
                    res = f.result()
                except BrokenProcessPool:
                    broken.append(futs[f])
                    continue
                except Exception as e:  # noqa: BLE001 -- e.g. the task failed to pickle
                    res = _crashed(e)
                finished += 1
                yield futs[f], res
        except BaseException:
            # Ctrl-C (or an error storing a row): stop the workers now instead of letting
            # them finish their point and the one queued behind it (the parent stores each
            # finished row, so nothing kept is lost), and wait for the pool with further
            # Ctrl-C ignored: a wait cut short left the pool to the interpreter's exit, where
            # multiprocessing closed the task queue before the workers' stop message was
            # sent, and the exit hung for ever (a second Ctrl-C, or `timeout -s INT`).
            with _spawned_deaf():
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()    # Python 3.14: pool.terminate_workers()
                pool.shutdown(wait=True, cancel_futures=True)
            raise
    # the pool's processes are gone now: the flags are final
    broken.sort()
    if broken and not finished and not any(started[i] for i in broken):
        # no progress at all (a fresh pool would die the same way)
        raise SweepError(
            f"a worker process died before it ran a point; the points finished so far "
            f"are kept in {points_dir}/ and a rerun resumes from them. (Out of memory? Fewer "
            f"--workers. From a script: its code must sit under if __name__ == '__main__':)")
    return [i for i in broken if started[i]], [i for i in broken if not started[i]]


def _run_dask(jobs, workers, address, processes):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as e:
        raise SweepError("--executor dask: dask.distributed is not installed "
                         "(pip install 'dask[distributed]')") from e
    with contextlib.ExitStack() as stack:
        if address:
            client = stack.enter_context(Client(address))
        else:
            stack.enter_context(_pinned_env())
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=processes,
                dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        scattered: dict[int, Any] = {}
        futs = {}
        for i, (task, data) in enumerate(jobs):
            if data is not None and id(data) not in scattered:
                # one copy of a model's batch on the cluster, shared by its points
                scattered[id(data)] = client.scatter([data], hash=False)[0]
            arg = scattered.get(id(data)) if data is not None else None
            f = client.submit(evaluate_point, task, arg, pure=False, key=f"point-{task['key']}"
                              f"-{i}")
            futs[f] = i
        for f in as_completed(futs):
            try:
                yield futs[f], f.result()
            except Exception as e:  # noqa: BLE001 -- KilledWorker and the like
                yield futs[f], _crashed(e)


def _run_ray(jobs, workers, address):
    try:
        import ray
    except ImportError as e:
        raise SweepError("--executor ray: ray is not installed (pip install 'ray[default]'); "
                         "use --executor local or --executor dask") from e
    ours = not ray.is_initialized()     # a session the caller started stays theirs
    if ours:
        with _pinned_env():
            ray.init(address=address or None, num_cpus=None if address else workers,
                     log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(evaluate_point)
        refs_of_data: dict[int, Any] = {}
        pending = {}
        for i, (task, data) in enumerate(jobs):
            if data is not None and id(data) not in refs_of_data:
                refs_of_data[id(data)] = ray.put(data)
            pending[remote.remote(task, refs_of_data.get(id(data)) if data is not None
                                  else None)] = i
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    yield i, ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- a worker died
                    yield i, _crashed(e)
    finally:
        if ours:
            ray.shutdown()


def _files_missing_here(task: dict) -> str | None:
    """The task's model or preset file, if it is not where the task says on this machine."""
    preset = task["preset"]
    if not Path(task["model_path"]).is_file():
        return f"model file {task['model_path']}"
    if names_preset_file(preset) and not Path(preset).is_file():
        return f"preset file {preset}"
    return None


def _crashed(e: BaseException) -> dict:
    return {"row": {"status": "failed", "error": f"worker failed: {_one_line(e)}",
                    "wall_s": float("nan")}, "store": False}


# --------------------------------------------------------------------------- the sweep

def results_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where a sweep writing ``out`` keeps its files: ``csv``, ``parquet``, ``points`` (one
    JSON per finished point) and ``models`` (exported zoo models)."""
    if names_a_folder(out) or Path(out).name in ("", ".", ".."):
        raise SweepError(f"-o {os.fspath(out)!r}: name the results table, e.g. -o sweep.csv "
                         f"(its .parquet and .points/ go beside it)")
    out = Path(out)
    # results.CSV is the table too (its .parquet beside it, not results.CSV.csv)
    stem = out.with_suffix("") if out.suffix.lower() in (".csv", ".parquet") else out
    # with_name, not with_suffix: "sweep.adc" must give sweep.adc.csv, not sweep.csv
    return {"csv": stem.with_name(stem.name + ".csv"),
            "parquet": stem.with_name(stem.name + ".parquet"),
            "points": stem.with_name(stem.name + ".points"),
            "models": stem.with_name(stem.name + ".models")}


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, a container's or a batch job's CPU
    set), not every CPU of the machine: the default worker count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _check_results_paths(paths: dict[str, Path], out) -> None:
    """The results can be written where ``-o`` says: refused now, not after every point."""
    flag = f"-o {out}"
    out = Path(out)
    if out.is_dir():   # its table would go beside it, as FOLDER.csv
        raise SweepError(f"{flag}: {out} is a folder; name a results file to write, "
                         f"e.g. -o {out / 'sweep.csv'}")
    if out.is_file() and out.suffix.lower() not in ("", ".csv", ".parquet"):
        # a model or another file given by mistake: its table would go beside it
        raise SweepError(f"{flag}: {out} is an existing file, not a results table; name a "
                         f"results file (.csv or .parquet), e.g. -o sweep.csv")
    for kind in ("csv", "parquet"):
        if paths[kind].is_dir():
            raise SweepError(f"{flag}: {paths[kind]} is a folder; name a results file to "
                             f"write, e.g. -o sweep.csv")
    for kind in ("points", "models"):
        if paths[kind].exists() and not paths[kind].is_dir():
            raise SweepError(f"{flag}: {paths[kind]} is a file, where the sweep keeps its "
                             f"{kind} folder; choose another name or move the file")
    check_writable_folder(paths["csv"].parent, flag, SweepError)


def _write_point(folder: Path, key: str, record: dict) -> None:
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, folder / f"{key}.json")   # a kill leaves the old file or the new one


def _read_point(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None   # unreadable: recompute it
    # a damaged file (a list, null, no row): recompute it, so a rerun heals the folder
    if not (isinstance(rec, dict) and rec.get("format") == POINT_FORMAT
            and isinstance(rec.get("row"), dict)):
        return None
    return rec


def run_sweep(models: Sequence[str | os.PathLike] | str, grid: dict | Sequence[str] | None,
              out: str | os.PathLike, *, preset: str | MachineConfig = "puma",
              overrides: Iterable[str] | dict = (), data: str | None = None,
              samples: int = 64, executor: str = "local", workers: int | None = None,
              address: str | None = None, progress: bool = True, retry_failed: bool = False,
              dask_processes: bool = True):
    """Run (or finish) a sweep and write ``out`` as CSV and Parquet; returns the table.

    ``models``: ONNX paths, pretrained names or zoo names with options (``vgg8:width=0.25``).
    ``grid``: see :func:`parse_grid`. ``preset`` + ``overrides``: the machine every point
    starts from. ``data``: ``demo``, ``fashion-mnist``, ``digits``, ``random``, a data file
    or folder, or None (timing/energy/area only); ``samples`` its batch size. ``executor``:
    ``local`` / ``dask`` / ``ray``; ``workers`` per executor (default: the CPUs this
    process may use);
    ``address``: an existing Dask scheduler or Ray cluster. ``retry_failed``: recompute
    stored failed points. ``dask_processes``: False runs a LocalCluster's workers as threads.
    ``overrides`` resolve with each point's values: a combination that is invalid makes that
    point a failed row (and a SweepError when no point is valid).
    The table names the ``preset`` (its name) and, where given, the ``overrides`` (``set``,
    space separated) in each row. Its ``attrs`` hold ``computed``, ``cached`` and ``failed`` counts,
    ``unstored``: failed points that were accidents (a crashed worker), retried next run,
    and ``grid``: the grid's keys.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    import multiprocessing as mp
    if getattr(mp.current_process(), "_inheriting", False):   # spawn child bootstrapping
        raise SweepError("run_sweep() was called while a worker process re-imported the main "
                         "script (multiprocessing's spawn does that); put the script's code "
                         "under if __name__ == '__main__':")
    if executor not in EXECUTORS:
        raise SweepError(f"executor {executor!r}: choose from {', '.join(EXECUTORS)}")
    needs = {"dask": "distributed", "ray": "ray"}.get(executor)
    if needs and importlib.util.find_spec(needs) is None:
        pip = {"dask": "'dask[distributed]'", "ray": "'ray[default]'"}[executor]
        raise SweepError(f"--executor {executor}: {needs} is not installed (pip install {pip});"
                         f" use --executor local")
    if workers is not None and workers < 1:
        raise SweepError(f"--workers {workers}: must be >= 1")
    if address and executor == "local":
        raise SweepError(f"--address {address}: a cluster address needs --executor dask or "
                         f"ray (the local executor starts its own workers)")
    if address and workers is not None:
        raise SweepError(f"--workers {workers} with --address {address}: an existing "
                         f"cluster runs as many points at once as it has workers; drop "
                         f"--workers (it sizes the cluster a sweep starts itself)")
    if isinstance(models, (str, os.PathLike)):
        models = split_models(str(models))
    if not models:
        raise SweepError("no models to sweep")
    base = load_config(preset)
    if isinstance(overrides, str):
        raise SweepError(one_string_refused("overrides", overrides, "KEY=VALUE"))
    fixed = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) \
        else list(overrides or ())
    bad = [o for o in fixed if "=" not in o]
    if bad:
        raise SweepError(f"override {bad[0]!r}: expected KEY=VALUE, e.g. adc.bits=6")
    axes = parse_grid(grid)
    set_keys = [o.split("=", 1)[0].strip() for o in fixed]
    fixed_compile = [k for k in set_keys if k in COMPILE_KEYS]
    if fixed_compile:     # compile options are grid values (one value is an axis too)
        raise SweepError(f"--set {fixed_compile[0]}: a compile option; give it as --grid "
                         f"{fixed_compile[0]}=VALUE (one value fixes it for every point)")
    both = sorted(set(set_keys) & {k for ax in axes for k in ax.keys})
    if both:   # the grid's value would win while the table's set column said otherwise
        raise SweepError(f"{both[0]}: given to both --set and --grid; give it in one place")
    _check_keys(base, set_keys + [k for ax in axes for k in ax.keys if k not in COMPILE_KEYS])
    # The fixed overrides resolve together with each point's values, not before them:
    # --set xbar.active_rows=200 is valid beside --grid xbar.rows=256, not beside the
    # preset's 128 rows. A point whose config is invalid is a failed row.
    cases = []   # (point values, overrides, compile options, config or its ConfigError)
    for pt in grid_points(axes) or [{}]:
        config_pt, options = split_point(pt)
        ov = fixed + _overrides_of(config_pt)
        try:
            cfg: MachineConfig | ConfigError = with_overrides(base, ov)
            _check_compile_options(options)
        except ConfigError as err:
            cfg = err
        cases.append((pt, ov, options, cfg))
    if all(isinstance(c[3], ConfigError) for c in cases):
        pt, _, _, err = cases[0]
        raise SweepError(f"no point of the sweep has a valid config; the first "
                         f"({_point_text(pt)}): {_one_line(err)}" if pt else _one_line(err))
    paths = results_paths(out)
    _check_results_paths(paths, out)
    batch = load_data(data, samples)

    entries: list[ModelEntry] = []
    for spec in models:
        label, path = resolve_model(str(spec).strip(), paths["models"])
        e = ModelEntry(label, path, _sha_file(path), _input_shapes(path))
        _attach_data(e, batch, None if data is None else str(data), samples)
        entries.append(e)
    _unique_labels(entries)

    preset_arg = preset if isinstance(preset, MachineConfig) else str(preset)
    if names_preset_file(preset_arg):
        preset_arg = str(Path(preset_arg).resolve())   # a cluster's workers run elsewhere
    slots = []   # (entry, case, key) in table order
    for e in entries:
        for case in cases:
            _, ov, options, cfg = case
            # an invalid config still gets a stable key: the preset and the bad values
            config = ({"base": base.to_dict(), "invalid": ov} if isinstance(cfg, ConfigError)
                      else cfg.to_dict())
            slots.append((e, case, point_key(e, config, options)))

    paths["points"].mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    for _, _, key in slots:
        if key not in done and (paths["points"] / f"{key}.json").is_file():
            rec = _read_point(paths["points"] / f"{key}.json")
            if rec and not (retry_failed and rec["row"].get("status") != "ok"):
                done[key] = rec["row"]
    cached = len({k for _, _, k in slots if k in done})

    jobs, job_keys = [], []
    invalid = 0
    for e, (_, ov, options, cfg), key in slots:
        if key in done or key in job_keys:
            continue
        if isinstance(cfg, ConfigError):   # invalid point: a failed row, no worker needed
            row = {"status": "failed", "error": _one_line(cfg), "wall_s": 0.0}
            _write_point(paths["points"], key, {
                "format": POINT_FORMAT, "key": key, "model": e.label,
                "model_path": str(e.path), "overrides": ov, "row": row})
            done[key] = row
            invalid += 1
            continue
        jobs.append(({"key": key, "model_path": str(Path(e.path).resolve()),
                      "preset": preset_arg,
                      "overrides": ov, "compile": options, "label": e.label,
                      "code": code_fingerprint()}, e.data))
        job_keys.append(key)

    nworkers = max(1, min(workers or usable_cpus(), max(len(jobs), 1)))
    failed_now: dict[str, dict] = {}
    # every point counts: computed by a worker, found invalid here, or reused
    bar = tqdm(total=len(job_keys) + invalid + cached, initial=cached + invalid, desc="sweep",
               unit="pt",
               disable=not progress, file=sys.stderr)
    try:
        if jobs:
            runner = {"local": lambda: _run_local(jobs, nworkers, paths["points"]),
                      "dask": lambda: _run_dask(jobs, nworkers, address, dask_processes),
                      "ray": lambda: _run_ray(jobs, nworkers, address)}[executor]
            for i, res in runner():
                key = job_keys[i]
                row = res["row"]
                tb = row.pop("_traceback", None)
                if res["store"]:
                    _write_point(paths["points"], key, {
                        "format": POINT_FORMAT, "key": key, "model": jobs[i][0]["label"],
                        "model_path": jobs[i][0]["model_path"],
                        "overrides": jobs[i][0]["overrides"], "row": row,
                        "traceback": tb})
                    done[key] = row
                else:
                    failed_now[key] = row
                    print(f"\nwarning: point {jobs[i][0]['label']} {jobs[i][0]['overrides']} "
                          f"failed and will be retried next run: {row['error']}",
                          file=sys.stderr)
                bar.update(1)
    finally:
        bar.close()

    rows = []
    for e, (pt, *_), key in slots:
        r = done.get(key) or failed_now.get(key) or {"status": "failed",
                                                     "error": "not computed"}
        row = {"model": e.label, "data": e.data_name, "preset": base.name}
        if fixed:     # what every point started from besides the preset, as given
            row["set"] = " ".join(fixed)
        row["samples"] = len(next(iter(e.data["inputs"].values()))) if e.data else None
        row.update(pt)
        row.update({c: r.get(c) for c in METRIC_COLUMNS})
        row.update({k: v for k, v in r.items() if k not in row and k not in WALL_COLUMNS
                    and k not in ("status", "error")})
        row.update(status=r.get("status"), error=r.get("error"))
        row.update({c: r.get(c) for c in WALL_COLUMNS})
        row["point"] = key
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in METRIC_COLUMNS + WALL_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce")
        if c in INT_COLUMNS:
            df[c] = df[c].round().astype("Int64")   # counts stay integers beside failed rows
    grid_keys = list(cases[0][0])
    for c in grid_keys:
        # an integer axis with a none value (adc.bits=none,4) stays integers, not 4.0
        vals = [pt[c] for pt, *_ in cases if pt[c] is not None]
        if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[c] = df[c].astype("Int64")
    write_table(df, paths)
    n_failed = int((df["status"] != "ok").sum())
    df.attrs.update(computed=len(job_keys) + invalid, cached=cached, failed=n_failed,
                    unstored=len(failed_now), grid=grid_keys)
    return df


def write_table(df, paths: dict[str, Path]) -> None:
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(paths["csv"]) as tmp:
        df.to_csv(tmp, index=False)
    try:
        with atomic_write(paths["parquet"]) as tmp:
            try:
                df.to_parquet(tmp, index=False)
            except (TypeError, ValueError):
                # A grid axis that mixes types (adc.bits=6,x: the x point is a failed row)
                # cannot be a typed Parquet column: store such a column's values as text,
                # missing ones stay.
                mixed = _mixed_columns(df)
                df.assign(**{c: df[c].map(lambda v: v if _missing(v) else str(v))
                             for c in mixed}).to_parquet(tmp, index=False)
    except ImportError:
        # an earlier run's Parquet would stay beside a newer CSV, named as this run's
        # results; the table is the CSV and the points, so the stale copy goes
        stale = paths["parquet"].is_file()
        paths["parquet"].unlink(missing_ok=True)
        print("note: pyarrow is not installed; no Parquet file written"
              + (f" (an earlier run's {paths['parquet'].name} removed: it no longer matched)"
                 if stale else "") + " (pip install pyarrow)", file=sys.stderr)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _overrides_of(pt: dict) -> list[str]:
    """A point's values as ``KEY=VALUE`` overrides, as the command line gives them."""
    return [f"{k}={'none' if v is None else v}" for k, v in pt.items()]


def _point_text(pt: dict) -> str:
    """A point's grid values in one line: ``xbar.rows=64 adc.bits=none``."""
    return " ".join(_overrides_of(pt))


def _mixed_columns(df) -> list[str]:
    return [c for c in df.columns if df[c].dtype == object
            and len({type(v) for v in df[c] if not _missing(v)}) > 1]


def read_table(path: str | os.PathLike):
    """A results table from its CSV or Parquet file."""
    import pandas as pd
    p = Path(path)
    if p.is_dir():
        raise SweepError(f"results file {str(path)!r} is a folder; give the .csv or .parquet "
                         f"that xbarsim sweep -o wrote")
    if not p.is_file():
        raise SweepError(f"results file {str(path)!r} does not exist")
    try:
        return pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p)
    except ImportError as e:      # no Parquet engine (pyarrow): the sweep wrote a CSV too
        raise SweepError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); or "
                         f"give the .csv beside it") from e
    except (ValueError, OSError) as e:
        raise SweepError(f"{path}: not a readable results table ({e})") from e


# --------------------------------------------------------------------------- CLI

def cmd_sweep(args) -> int:
    import pandas as pd
    t0 = time.perf_counter()
    paths = results_paths(args.output)
    if args.samples is not None and args.data is None:   # it was ignored, unsaid
        raise SweepError(f"--samples {args.samples}: needs --data (without data a point "
                         f"measures timing, energy and area only)")
    try:
        df = run_sweep(args.models, args.grid, args.output, preset=args.preset,
                       overrides=args.overrides, data=args.data,
                       samples=64 if args.samples is None else args.samples,
                       executor=args.executor, workers=args.workers, address=args.address,
                       progress=not args.quiet, retry_failed=args.retry_failed)
    except KeyboardInterrupt:       # as compress and train: say how to go on, exit 130
        print(f"interrupted: finished points are kept in {paths['points']}/; rerun the "
              f"same command to resume", file=sys.stderr)
        return 130
    a = df.attrs
    print(f"{len(df)} point{'s' * (len(df) != 1)}: {len(df) - a['failed']} ok, "
          f"{a['failed']} failed; computed "
          f"{a['computed']}, reused {a['cached']} from {paths['points']}/ "
          f"({time.perf_counter() - t0:.1f} s)")
    for _, r in df[df["status"] != "ok"].head(5).iterrows():
        where = _point_text({k: None if pd.isna(r[k]) else r[k] for k in a["grid"]})
        print(f"  failed: {r['model']}{' ' + where if where else ''}: {r['error']} "
              f"[point {r['point']}]")
    print(f"results  -> {paths['csv']}" + (f", {paths['parquet']}"
                                          if paths["parquet"].exists() else ""))
    if a["unstored"]:
        # a point's own failure (invalid config) is a result; a crash leaves the table short
        print(f"error: {a['unstored']} point(s) crashed and are not in the table; rerun "
              f"the same command to retry them", file=sys.stderr)
        return 1
    if len(df) and a["failed"] == len(df):
        print(f"error: all {len(df)} points failed (the reasons above)", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args) -> int:
    from .sweep_plots import plot_results
    for p in plot_results(args.results, args.output):
        print(f"plot     -> {p}")
    return 0


def register(sub) -> None:
    """Add ``xbarsim sweep`` and ``xbarsim plot`` to the CLI's sub-parsers."""
    p = sub.add_parser("sweep", help="compile + simulate models over a grid of machine "
                                     "configs, in parallel and resumably")
    p.add_argument("--models", required=True, metavar="M1,M2",
                   help="ONNX files, pretrained (lenet5_fmnist) or zoo names with options "
                        "(vgg8:width=0.25), comma separated")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values, e.g. --grid adc.bits=4,6,8; "
                        "K1=K2=V1,V2 sets both keys (xbar.rows=xbar.cols=64,128); "
                        "compile.replicate=1,4 sweeps weight replication, "
                        "compile.vfu_cores=own,shared the VFU layers' cores; repeat for more "
                        "axes")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS.csv",
                   help="results table (CSV; a .parquet beside it); points are kept in "
                        "RESULTS.points/ so a rerun resumes")
    p.add_argument("--preset", default="puma",
                   help="machine preset name or YAML file every point starts from [puma]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed override for every point")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local processes, a Dask cluster or a Ray cluster [local]")
    p.add_argument("--address", help="scheduler address of an existing Dask/Ray cluster "
                                     "(default: start a local one)")
    p.add_argument("--workers", type=int,
                   help="parallel workers, local or of the cluster the sweep starts (not with "
                        "--address) [the CPUs this process may use]")
    p.add_argument("--data", metavar="SET",
                   help="inputs for accuracy: demo, fashion-mnist, digits, random, or an "
                        ".npz / folder (default: none, timing/energy/area only)")
    p.add_argument("--samples", type=positive_int, metavar="N",
                   help="data samples per point, with --data [64]")
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute stored failed points")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="plots (PNG) from a sweep's results table")
    p.add_argument("results", help="RESULTS.csv or .parquet from xbarsim sweep")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the PNGs")
    p.set_defaults(func=cmd_plot)
