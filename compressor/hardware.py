"""The hardware loop: compile a (compressed) model for a machine, simulate it, and judge the
compression by what the chip pays: crossbars, energy, area, latency and ADC bits.

>>> from compressor.hardware import evaluate_hardware, compare
>>> dense = evaluate_hardware("lenet5.onnx", "puma", x, y)
>>> small = evaluate_hardware(result, ("puma", ["weight_bits=8", "xbar.mapping=differential"]),
...                           x, y, calibration=x_train[:64])
>>> print(compare(dense, {"admm": small}).to_markdown())

Weight storage (:func:`storage_bits`) counts what must be stored to rebuild every Conv/Gemm/
MatMul weight and every LSTM/GRU/RNN's W and R, biases excluded (they stay in digital memory
either way):

* a float initializer: 32 bits per entry (the dense baseline: ``32 · weights``);
* a QDQ weight of ``b``-bit levels, on the crossbar matrix tiled ``rows × cols``
  (:mod:`compressor.geometry`): 1 bit per tile (is it stored at all?), 32 bits per scale
  (one, or one per output channel),
  and for every tile holding a nonzero ``min(E·b, nnz·b + E)`` bits, ``E`` its real entries
  and ``nnz`` its nonzeros: the tile's levels as they are (zeros included), or only its
  nonzeros plus a 1-bit-per-entry presence mask, whichever is smaller. An all-zero tile
  costs only its 1 bit.

A recurrent layer's QDQ weights count ``E·b`` bits plus 32 per scale (the compressor does
not prune them). The compression ratio is ``32 · weights / storage bits``.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CompressionError
from .geometry import CrossbarGeometry, to_crossbar

#: Rows of :func:`compare`'s table: (key in the evaluate_hardware dict, label, lower is better)
METRICS = (
    ("accuracy_sim", "accuracy, simulated chip", False),
    ("accuracy_onnx", "accuracy, onnxruntime (same images)", False),
    ("weights", "weights (count)", None),
    ("nonzero_weights", "nonzero weights", True),
    ("storage_bits", "weight storage (bits)", True),
    ("compression", "compression (32-bit dense / stored)", False),
    ("crossbars", "crossbars", True),
    ("mvmus", "MVMUs (crossbar blocks)", True),
    ("cores", "cores", True),
    ("tiles", "tiles", True),
    ("vfu_cores", "VFU layers' cores (placement)", None),
    ("energy_uj", "energy / inference (uJ)", True),
    ("area_mm2", "area (mm^2)", True),
    ("latency_us", "latency (us)", True),
    ("adc_conversions", "ADC conversions / inference", True),
    ("adc_bits_max", "lossless ADC bits, max", True),
    ("adc_bits_mean", "lossless ADC bits, mean", True),
    ("adc_bits_worst_case", "ADC bits lossless for any weights", None),
    ("adc_bits_promised", "ADC bits TinyADC's N promises", None),
    ("tinyadc_promise", "TinyADC's promise on the chip", None),
)


def evaluate_hardware(model, cfg="puma", x: np.ndarray | None = None,
                      y: np.ndarray | None = None, *, overrides: Iterable[str] = (),
                      calibration: np.ndarray | None = None,
                      geometry: CrossbarGeometry | None = None, replicate: int = 1,
                      vfu_cores: str = "own") -> dict:
    """Compile ``model`` for a machine, simulate ``x``, and measure it.

    ``model``: an ONNX path, or a :class:`compressor.pipeline.CompressionResult` (exported
    to a temporary QDQ file first). ``cfg``: a ``MachineConfig``, a preset name or YAML path,
    or ``(preset, overrides)``; ``overrides`` are applied on top (``KEY=VALUE``).
    ``x``/``y``: images (batch first) and labels; the simulated top-1 accuracy is over all of
    ``x``, compared with onnxruntime's on the same images. ``calibration``: inputs that set
    the activation ranges (default: ``x[:64]``; pass training images to keep test images
    out of every choice). ``geometry``: the tiling :func:`storage_bits` counts in (default:
    the QDQ metadata's, else the machine's crossbars). ``replicate``: the compiler's weight
    copies for pipeline balance (``compile_model(..., replicate=N)``). ``vfu_cores``: "own"
    or "shared" cores for pooling and other VFU layers (:mod:`compiler.place`).

    Returns a JSON-ready dict: ``agreement`` (fraction of images where chip and onnxruntime
    pick the same class), ``replicate`` (the copies placement made of the most copied layer;
    it gives some up where they do not fit), ``vfu_cores`` (the VFU layers' placement),
    ``weights``, ``nonzero_weights``, ``storage_bits``, ``dense_bits`` (32 bits a weight),
    ``compression``, ``layers`` (per weight initializer, :func:`storage_bits`'s counts),
    ``crossbars``, ``mvmus``,
    ``tiles``, ``cores``, ``energy_uj`` (one inference), ``energy_breakdown_uj``,
    ``area_mm2``, ``area_breakdown_mm2``, ``latency_us``, ``adc_conversions``,
    ``adc_bits_max`` / ``adc_bits_mean`` (lossless bits over crossbar blocks, as
    ``adc.adaptive`` would give them), ``adc_bits_worst_case`` (what an ADC of this machine
    needs to be lossless for any weights, the width TinyADC's bound is measured against),
    ``adc_bits_config`` (the ADC the machine has;
    ``"adaptive"`` or ``"ideal"`` where so), ``images``, ``config`` (its overrides); with
    ``y``, also ``accuracy_sim`` and ``accuracy_onnx`` (chip and onnxruntime). A model
    with TinyADC bounds adds ``adc_bits_promised`` (the widest :func:`promised_adc_bits`)
    and ``tinyadc_promise``: ``"kept"`` where no MVMU of a bounded layer needs more than its
    layer's promise, else how many do (``"n/a: ..."`` on crossbars the bound was not made
    for). A static count over the compiled cells; :func:`adc_lossless_check` simulates it.
    """
    from compiler import compile_model
    from simulator import simulate
    from simulator.costs import worst_case_adc_bits

    machine, label = _machine(cfg, overrides)
    if x is None or len(x) == 0:
        raise CompressionError("x: need at least one input image to simulate")
    if geometry is not None and not isinstance(geometry, CrossbarGeometry):
        raise CompressionError(f"geometry: a CrossbarGeometry (or None: the model's own), "
                               f"not {type(geometry).__name__}")
    if y is not None:   # checked before any work
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise CompressionError(f"y: {len(y)} labels for {len(x)} images")
    with _as_onnx(model, x) as path:
        x = _fit_input(path, x)
        cal = _fit_input(path, x[:64] if calibration is None else calibration)
        # the storage count first: a malformed metadata entry fails before any simulation
        geom = geometry or _geometry_of(path) or CrossbarGeometry.from_config(machine)
        store = storage_bits(path, geom)
        inp, outp = _io_names(path)
        prog = compile_model(path, machine, calibration={inp: cal},
                             replicate=replicate, vfu_cores=vfu_cores)
        rep = simulate(prog, {inp: x})
        logits = rep.outputs[outp].reshape(len(x), -1)
        ort = onnx_logits(path, x)
        bits = _lossless_bits(prog)
        promise = _promise_on_chip(path, machine, prog, bits)
    out = {
        "images": int(len(x)),
        "config": label,
        # copies placement actually made (it gives some up when they would not fit)
        "replicate": max((L["copies"] for L in prog.mapping["layers"]), default=1),
        "vfu_cores": prog.mapping["vfu_cores"],
        "agreement": float(np.mean(logits.argmax(1) == ort.argmax(1))),
        **store,
        "crossbars": int(rep.crossbars), "mvmus": int(rep.mvmus), "tiles": int(rep.tiles),
        "cores": int(rep.cores),
        "energy_uj": rep.energy_j["total"] * 1e6,
        "energy_breakdown_uj": {k: v * 1e6 for k, v in rep.energy_j.items() if k != "total"},
        "area_mm2": rep.area_mm2["total"],
        "area_breakdown_mm2": {k: v for k, v in rep.area_mm2.items() if k != "total"},
        "latency_us": rep.latency_s * 1e6,
        "adc_conversions": int(rep.adc_conversions),
        "adc_bits_max": int(bits.max()) if bits.size else 0,
        "adc_bits_mean": float(bits.mean()) if bits.size else 0.0,
        "adc_bits_worst_case": worst_case_adc_bits(machine),
        "adc_bits_config": ("adaptive" if machine.adc.adaptive else
                            "ideal" if machine.adc.bits is None else int(machine.adc.bits)),
    }
    out.update(promise)
    if y is not None:
        out["accuracy_sim"] = float(np.mean(logits.argmax(1) == y))
        out["accuracy_onnx"] = float(np.mean(ort.argmax(1) == y))
    return out


def _promise_on_chip(path, machine, prog, need: np.ndarray) -> dict:
    """``evaluate_hardware``'s TinyADC entries: ``{}`` without a bound in the model."""
    try:
        layer_bits = promised_adc_bits(path, machine)
    except _NotMadeFor as e:          # not the crossbars the bound was stated for
        return {"tinyadc_promise": f"n/a: {e.reason}"}
    if not layer_bits:
        return {}
    over = _over_promise(_layer_mvmus(prog, layer_bits), need)
    return {"adc_bits_promised": max(layer_bits.values()),
            "tinyadc_promise": "kept" if not over else
            f"{sum(over.values())} MVMUs need more"}


def adc_lossless_check(model, cfg="puma", x: np.ndarray | None = None, *,
                       overrides: Iterable[str] = (),
                       calibration: np.ndarray | None = None,
                       uniform: bool = False, promised: bool = False) -> dict:
    """Simulate ``x`` with each MVMU's lossless ADC bits (``adc.adaptive=true``) and with
    an ideal ADC (``adc.bits=none``) on the same machine; their integer logits
    (``logits:int``) must be equal, which is what "lossless by construction" means. The
    adaptive side runs the bit-serial ADC path (``exact_shortcut=False``): the simulator's
    shortcut skips the ADC exactly where its bits are lossless, which is every crossbar at
    its adaptive bits, so with it the comparison could not fail.

    Adaptive bits are each MVMU's exact need, computed from its own cells, so they are
    lossless for any input: the comparison tests the ADC path, not a model's column bound.
    ``uniform``: also simulate one ADC width for every crossbar, the widest adaptive one
    (``adc.bits=adc_bits_max``), against the ideal ADC (``equal_uniform``): that a chip
    with one ADC width, the model's widest need, is lossless too. It holds by the same
    construction (no crossbar needs more than the widest), so it checks the uniform-ADC
    path, not TinyADC's promise from its ``n``; one bit less is what can clip.

    ``promised``: test TinyADC's promise itself. Each MVMU of a layer with a column
    bound (:data:`compressor.projections.PER_SEGMENT`) gets the ADC width its ``n`` alone
    promises (:func:`promised_adc_bits`, from the metadata, not from the cells); the other
    MVMUs keep their adaptive bits. ``promise_kept``: no such MVMU needs more than its
    layer's promise (a static count over every column of the compiled chip:
    ``crossbars_over_promise``, MVMUs per layer; the compiler's packing of kept rows is
    what can break it, as with plain ``tinyadc``); ``equal_promised``: that chip's integer
    logits equal the ideal ADC's.

    Noise (``noise.*``) is switched off on both sides: an analog error through a clipping
    ADC would otherwise read as a lossy ADC.

    Returns ``{"equal": bool, "adc_bits_max", "adc_bits_mean", "adc_bits_hist": {bits:
    crossbar blocks}, "max_abs_diff"}`` (and ``"equal_uniform"`` with ``uniform``;
    ``"adc_bits_promised"`` ({layer: bits}), ``"promise_kept"``, ``"crossbars_over_promise"``
    and ``"equal_promised"`` with ``promised``; for a model with no TinyADC bound those are
    ``{}``, None, ``{}`` and None: no promise, nothing simulated for it).
    """
    from compiler import compile_model
    from simulator import load_config, simulate

    machine, label = _machine(cfg, overrides)
    if x is None or len(x) == 0:
        raise CompressionError("x: need at least one input image to simulate")
    outs, bits = {}, None
    with _as_onnx(model, x) as path:
        x = _fit_input(path, x)
        cal = _fit_input(path, x[:64] if calibration is None else calibration)
        inp, outp = _io_names(path)
        # before any simulation: a machine the bound was not made for is refused at once
        layer_bits = _promised_bits(path, machine, label) if promised else {}
        for name, ov in (("adaptive", ["adc.adaptive=true"]), ("ideal", ["adc.bits=none",
                                                                         "adc.adaptive=false"])):
            prog = compile_model(path, load_config(machine, ov + NOISELESS),
                                 calibration={inp: cal})
            outs[name] = simulate(prog, {inp: x}, exact_shortcut=name == "ideal"
                                  ).outputs[outp + ":int"]
            if name == "adaptive":
                bits = np.asarray(prog.mvmu_adc_bits, np.int64)
                adaptive_prog = prog
        if uniform and bits.size:
            prog = compile_model(path, load_config(machine, [
                f"adc.bits={int(bits.max())}", "adc.adaptive=false", "adc.mode=clip",
                *NOISELESS]), calibration={inp: cal})
            outs["uniform"] = simulate(prog, {inp: x}, exact_shortcut=False
                                       ).outputs[outp + ":int"]
        if layer_bits:      # no bound: no promise to simulate (kept/equal stay None)
            prog, over = _at_promised_bits(adaptive_prog, layer_bits)
            outs["promised"] = simulate(prog, {inp: x}, exact_shortcut=False
                                        ).outputs[outp + ":int"]
    a, b = outs["adaptive"], outs["ideal"]
    values, counts = np.unique(bits, return_counts=True)
    extra = {} if "uniform" not in outs else {
        "equal_uniform": bool(np.array_equal(outs["uniform"], b))}
    if "promised" in outs:
        extra.update(adc_bits_promised=layer_bits, promise_kept=not over,
                     crossbars_over_promise=over,
                     equal_promised=bool(np.array_equal(outs["promised"], b)))
    elif promised:
        extra.update(adc_bits_promised={}, promise_kept=None, crossbars_over_promise={},
                     equal_promised=None)
    return {"equal": bool(np.array_equal(a, b)), **extra,
            "max_abs_diff": int(np.abs(a.astype(np.int64) - b).max(initial=0)),
            "adc_bits_max": int(bits.max()) if bits.size else 0,
            "adc_bits_mean": float(bits.mean()) if bits.size else 0.0,
            "adc_bits_hist": {int(v): int(c) for v, c in zip(values, counts)}}


def promised_adc_bits(model, cfg="puma", input_shape=None) -> dict[str, int]:
    """``{layer: ADC bits}`` that TinyADC's column bound promises on ``cfg``'s crossbars,
    for each layer of the compressed ONNX ``model`` with a
    :data:`compressor.projections.PER_SEGMENT` structure (keyed by the Conv/Gemm node's
    name, as the compiler names its layers).

    Derived from the metadata alone, not from any cell: at most ``n`` nonzero weights per bit
    line of one read, in each array of a differential crossbar, each conducting at most the
    largest cell level a weight in the layer's ``levels`` can take (``min(max |q|,
    2**cell_bits - 1)``), times the widest input digit (``2**step_bits - 1``), through the
    simulator's own lossless-bits formula. The promise needs the crossbars it was made for:
    a differential mapping (offset stores a zero weight as a conducting cell), the
    geometry's rows, reads that each lie within one of the geometry's reads, and for the
    packed structures the geometry's columns (their rows are packed per column strip, as
    the compiler packs them); anything else is a one-line error saying which.
    ``input_shape``: one sample's shape, to export a CompressionResult whose model carries
    no ``sample_shape``.
    """
    machine, label = _machine(cfg, ())
    from models.onnx_export import is_sample_shape
    if input_shape is not None and not is_sample_shape(input_shape):
        raise CompressionError(f"input_shape = {input_shape!r}: one sample's shape, a tuple of "
                               f"sizes >= 1 without the batch, e.g. (1, 28, 28)")
    with _as_onnx(model, None if input_shape is None else np.empty((1, *input_shape))) as path:
        return _promised_bits(path, machine, label)


def _promised_bits(path: Path, machine, label: str) -> dict[str, int]:
    """:func:`promised_adc_bits` of an ONNX file on ``machine`` (``label``: how the caller
    named it, overrides included, for the errors)."""
    from simulator.crossbar import lossless_adc_bits, weight_range

    from .projections import PACKED, PER_SEGMENT

    proto = onnx.load(str(path), load_external_data=False)
    layers = [(where, meta, sparsity) for where, meta in _layer_metas(proto)
              for sparsity in [(meta.get("constraint") or {}).get("sparsity") or {}]
              if sparsity.get("structure") in PER_SEGMENT]
    if not layers:
        return {}
    geom = _geometry_of(proto, str(path))
    if geom is None:
        raise CompressionError(f"{layers[0][0]}: a TinyADC bound without the model's "
                               f"xbarsim.compressor geometry")
    x = machine.xbar
    read, geom_read = x.active_rows or x.rows, geom.active_rows or geom.rows
    if x.mapping != "differential":
        raise _NotMadeFor(label, f"xbar.mapping={x.mapping}",
                          "TinyADC's column bound holds on differential crossbars only "
                          "(offset stores a zero weight as a conducting cell)")
    if x.rows != geom.rows or geom_read % read:
        raise _NotMadeFor(
            label, f"crossbars of {x.rows} rows read {read} at a time",
            f"the model's TinyADC bound is stated for {geom.rows} rows read {geom_read} at a "
            f"time (compile on xbar.rows={geom.rows} with xbar.active_rows dividing "
            f"{geom_read})")
    packed = sorted({s["structure"] for _, _, s in layers} & set(PACKED))
    if packed and x.cols != geom.cols:
        raise _NotMadeFor(
            label, f"crossbars of {x.cols} columns",
            f"{packed[0]} packs kept rows per {geom.cols}-column strip, as the compiler does on "
            f"crossbars that wide; other strips shift its packing windows (compile on "
            f"xbar.cols={geom.cols})")
    by_weight = {n.input[1]: n.name or f"{n.op_type}_{n.output[0]}"
                 for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and len(n.input) > 1}
    out = {}
    for where, meta, sparsity in layers:
        init = _meta_field(meta, "initializer", where)
        # a bound without quantization: the compiler's own levels, any the machine stores
        lo, hi = (int(v) for v in meta["levels"]) if meta.get("levels") else weight_range(
            machine.weight_bits, x.mapping)
        n = int(_meta_field(sparsity, "n", where))
        if init not in by_weight:
            raise CompressionError(f"{where}: no Conv/Gemm/MatMul reads {init!r}")
        top = min(max(-lo, hi), (1 << x.cell_bits) - 1)    # largest cell level of a weight
        worst = np.full((1, min(n, read), 1), top, np.int64)  # n of them on one bit line
        out[by_weight[init]] = lossless_adc_bits(worst, machine.step_bits)
    return out


def _at_promised_bits(prog, layer_bits: dict[str, int]):
    """``prog`` (compiled with ``adc.adaptive``) with the MVMUs of ``layer_bits``'s layers
    at those ADC widths (copies included), and ``{layer: MVMUs that need more}`` (their
    adaptive bits, each MVMU's exact need, are above the promise)."""
    layers = _layer_mvmus(prog, layer_bits)
    over = _over_promise(layers, prog.mvmu_adc_bits)
    bits = np.array(prog.mvmu_adc_bits, np.int32)
    for _, mine, b in layers:
        bits[mine] = b
    prog.mvmu_adc_bits = bits
    return prog, over


class _NotMadeFor(CompressionError):
    """A machine whose crossbars a model's TinyADC bound was not stated for (``reason``:
    what differs, in a few words)."""

    def __init__(self, label: str, reason: str, detail: str):
        super().__init__(f"{label}: {reason}; {detail}")
        self.reason = reason


def _layer_mvmus(prog, layer_bits: dict[str, int]) -> list[tuple[str, np.ndarray, int]]:
    """``(layer, mask of its MVMUs, its promised bits)`` for each layer of ``layer_bits``."""
    names = {L["name"]: i for i, L in enumerate(prog.layers)}
    missing = sorted(set(layer_bits) - set(names))
    if missing:
        raise CompressionError(f"layer {missing[0]!r}: has a TinyADC bound in the metadata but "
                               f"the compiled program has no such layer")
    return [(name, prog.mvmu_layer == names[name], b) for name, b in layer_bits.items()]


def _over_promise(layers, need) -> dict[str, int]:
    """``{layer: MVMUs whose lossless need is above the layer's promise}`` (where any), for
    :func:`_layer_mvmus`' ``layers``."""
    need = np.asarray(need)
    counts = {name: int((need[mine] > b).sum()) for name, mine, b in layers}
    return {k: v for k, v in counts.items() if v}


#: Overrides that switch every device non-ideality off (the lossless check compares ADCs).
NOISELESS = ["noise.program_sigma=0", "noise.read_sigma=0", "noise.stuck_on=0",
             "noise.stuck_off=0", "noise.on_off_ratio=none"]


def accuracy_under_variation(model, cfg="puma", x: np.ndarray | None = None,
                             y: np.ndarray | None = None,
                             sigmas: Sequence[float] = (0.0, 0.02, 0.05, 0.1),
                             seeds: Sequence[int] = (0,), *, overrides: Iterable[str] = (),
                             calibration: np.ndarray | None = None) -> list[dict]:
    """Simulated top-1 accuracy under conductance programming variation.

    For each ``sigma`` (the simulator's ``noise.program_sigma``: with the default normal
    distribution, the relative std of the programmed conductance) and each ``seed``
    (``noise.seed``: which devices deviate how) the model is simulated on ``x``. Returns
    one record per sigma: ``sigma``, ``accuracy`` (mean over seeds),
    ``accuracy_min``/``accuracy_max``, ``per_seed``.
    """
    from compiler import compile_model
    from simulator import load_config, simulate
    from simulator.config import ConfigError, NoiseConfig

    machine, _ = _machine(cfg, overrides)
    if x is None or y is None or len(x) == 0:
        raise CompressionError("accuracy_under_variation needs images x (at least one) and "
                               "labels y")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise CompressionError(f"y: {len(y)} labels for {len(x)} images")
    # all checked before anything is simulated: a late refusal would waste the runs before it
    sigmas, seeds = _sequence("sigmas", sigmas), _sequence("seeds", seeds)
    if not seeds:
        raise CompressionError("seeds: need at least one device seed")
    for seed in seeds:     # a fractional seed would be truncated into another seed's run
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise CompressionError(f"seed={seed!r}: must be an integer >= 0")
    for sigma in sigmas:
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) \
                or not math.isfinite(sigma) or sigma < 0:
            raise CompressionError(f"sigma={sigma!r}: must be a finite number >= 0")
        try:               # the machine's own limits (lognormal's cap)
            NoiseConfig(program_sigma=float(sigma), program_dist=machine.noise.program_dist)
        except ConfigError as e:
            raise CompressionError(f"sigma={sigma!r}: {e}") from None
    records = []
    nz = machine.noise
    # with no other seeded effect (read noise, stuck cells) sigma 0 is one deterministic run
    seeded = bool(nz.read_sigma or nz.stuck_on or nz.stuck_off)
    with _as_onnx(model, x) as path:
        x = _fit_input(path, x)
        cal = _fit_input(path, x[:64] if calibration is None else calibration)
        inp, outp = _io_names(path)
        for sigma in sigmas:
            accs = []
            for seed in (seeds if sigma > 0 or seeded else seeds[:1]):
                prog = compile_model(path, load_config(machine, [
                    f"noise.program_sigma={float(sigma)}", f"noise.seed={int(seed)}"]),
                    calibration={inp: cal})
                logits = simulate(prog, {inp: x}).outputs[outp].reshape(len(x), -1)
                accs.append(float(np.mean(logits.argmax(1) == y)))
            records.append({"sigma": float(sigma), "accuracy": float(np.mean(accs)),
                            "accuracy_min": min(accs), "accuracy_max": max(accs),
                            "per_seed": accs})
    return records


def _sequence(name: str, values) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise CompressionError(f"{name}={values!r}: give a sequence of numbers, e.g. (0, 1)")
    return list(values)


def compare(dense: dict, compressed: dict, *, names: Sequence[str] | None = None,
            show: bool = True):
    """Dense vs compressed side by side, as a pandas DataFrame (one row per metric).

    ``dense``: an :func:`evaluate_hardware` dict. ``compressed``: one such dict, or a mapping
    ``{name: dict}`` for several variants. Each compressed column is followed by its change
    vs dense: a percentage reduction for costs, a point difference for accuracies, a factor
    for the compression ratio. ``show`` prints the table.
    """
    import pandas as pd

    variants = compressed if _is_mapping_of_dicts(compressed) else {"compressed": compressed}
    if names is not None:
        names = list(names)
        if len(names) != len(variants):    # zip would drop the extra variants unsaid
            raise CompressionError(f"names: {len(names)} for {len(variants)} compressed "
                                   f"variants; give one per variant")
        variants = dict(zip(names, variants.values()))
    rows = []
    for key, label, lower in METRICS:
        if key not in dense and not any(key in v for v in variants.values()):
            continue
        row = {"metric": label, "dense": _fmt(key, dense.get(key))}
        for name, v in variants.items():
            row[name] = _fmt(key, v.get(key))
            row[f"{name} vs dense"] = _change(key, dense.get(key), v.get(key), lower)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("metric")
    if show:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.rename_axis(None).to_string())   # no line of its own for "metric"
    return table


def storage_bits(onnx_path, geometry: CrossbarGeometry) -> dict:
    """Weight storage of an ONNX model by the formula in the module doc.

    Returns ``{"weights", "nonzero_weights", "storage_bits", "dense_bits" (32 · weights),
    "compression", "layers": {initializer: {...}}}``.
    """
    from compiler.frontend import integer_levels
    proto = onnx.load(str(onnx_path), load_external_data=True)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    bits_meta, views = _layer_meta(proto)
    folded: dict = {}   # the compiler frontend's constants, computed once when needed

    def stored_weight(name):
        """``(weight, bits, scales)``: a QDQ weight's levels (q minus its zero point:
        another tool's uint8, say) with their bits and scale count, or a float weight
        (``bits`` None) from an initializer or constant nodes; None for a computed one."""
        if name in dq and dq[name].input[0] in inits:
            node = dq[name]
            zp = node.input[2] if len(node.input) > 2 else ""
            w = integer_levels(numpy_helper.to_array(inits[node.input[0]]),
                               numpy_helper.to_array(inits[zp]) if zp in inits else None,
                               next((a.i for a in node.attribute if a.name == "axis"), 1))
            scales = (numpy_helper.to_array(inits[node.input[1]]).size
                      if node.input[1] in inits else 1)
            return w, bits_meta.get(name) or _bits_of_levels(w), scales
        if name in inits:
            return numpy_helper.to_array(inits[name]), None, 0
        w = _folded_constant(proto, name, folded)   # ConstantOfShape...: still stored floats
        return None if w is None else (w, None, 0)

    # Conv/Gemm/MatMul weights are tiled on the crossbars; a recurrent layer's W and R (the
    # compressor leaves them as they are) count E*b bits plus its scales
    weights = [(n, n.input[1]) for n in g.node
               if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) >= 2]
    weights += [(n, name) for n in g.node if n.op_type in ("LSTM", "GRU", "RNN")
                for name in n.input[1:3]]
    total = nnz_total = stored = 0
    layers = {}
    for n, name in weights:
        found = stored_weight(name)
        if found is None:
            continue  # a computed weight: not a stored parameter
        w, bits, scales = found
        if n.op_type in ("LSTM", "GRU", "RNN"):
            entries, nonzero = int(w.size), int(np.count_nonzero(w))
            cost = 32 * entries if bits is None else entries * bits + 32 * scales
        else:
            # Crossbar matrix (inputs x outputs) of the torch-layout weight: Conv and
            # Gemm(transB) hold that layout, Gemm without transB and MatMul hold (in, out).
            # A TinyADC Linear after Flatten of a map is tiled in the chip's row order.
            trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                  for a in n.attribute)
            torch_w = w if (n.op_type == "Conv" or trans_b) else w.reshape(w.shape[0], -1).T
            m = to_crossbar(torch_w, views.get(name))
            entries, nonzero = int(m.size), int(np.count_nonzero(m))
            if bits is None:
                cost = 32 * entries
            else:
                nz = geometry.blocks(m != 0).sum(axis=(1, 3))
                real = geometry.blocks(np.ones(m.shape, bool)).sum(axis=(1, 3))
                cost = (int(nz.size) + 32 * scales
                        + int(np.minimum(real * bits, nz * bits + real)[nz > 0].sum()))
        layers[name] = {"op": n.op_type, "weights": entries, "nonzero": nonzero,
                        "bits": bits or 32, "storage_bits": int(cost)}
        total, nnz_total, stored = total + entries, nnz_total + nonzero, stored + cost
    if total == 0:
        raise CompressionError(f"{onnx_path}: no Conv/Gemm/MatMul/LSTM/GRU/RNN weight to "
                               f"count")
    return {"weights": total, "nonzero_weights": nnz_total, "storage_bits": int(stored),
            "dense_bits": 32 * total, "compression": 32 * total / stored, "layers": layers}


def _folded_constant(proto, name: str, cache: dict):
    """``name``'s value when constant nodes compute it (as the compiler folds them), else
    None."""
    if "consts" not in cache:
        from compiler.errors import CompilerError
        from compiler.frontend import frontend
        try:
            cache["consts"] = frontend(proto).consts
        except CompilerError:   # compiling it gives that one-line error, with its context
            cache["consts"] = {}
    v = cache["consts"].get(name)
    return None if v is None else np.asarray(v)


def onnx_logits(path, x: np.ndarray, chunk: int = 500) -> np.ndarray:
    """onnxruntime logits of ``x`` (batched when the model's batch is symbolic)."""
    from compiler.reference import onnxruntime_session
    sess = onnxruntime_session(path, threads=2)
    inp = sess.get_inputs()[0]
    fixed = isinstance(inp.shape[0], int)
    step = int(inp.shape[0]) if fixed else chunk
    x = np.asarray(x, np.float32)
    outs = []
    for i in range(0, len(x), step):
        part = x[i:i + step]
        if fixed and len(part) < step:   # a fixed batch: pad the last chunk, keep its rows
            part = np.concatenate([part, np.zeros((step - len(part),) + part.shape[1:],
                                                  np.float32)])
        outs.append(sess.run(None, {inp.name: part})[0][:len(x) - i])
    return np.concatenate(outs).reshape(len(x), -1)


def _io_names(path) -> tuple[str, str]:
    """The model's (first) graph input and output names (xbarsim's exporter writes
    ``input`` and ``logits``; another tool's may not)."""
    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    if not inputs or not g.output:
        raise CompressionError(f"{path}: the model needs a graph input and an output")
    return inputs[0], g.output[0].name


# ---------------------------------------------------------------------------- internals


def _machine(cfg, overrides):
    """``(MachineConfig, label)`` from a config, a preset/path, or ``(preset, overrides)``."""
    from simulator import MachineConfig, load_config
    from simulator.config import one_string_refused

    if isinstance(overrides, str):   # list() would read it character by character
        raise CompressionError(one_string_refused("overrides", overrides, "KEY=VALUE"))
    extra = list(overrides)
    if isinstance(cfg, tuple):
        cfg, first = cfg
        extra = list(first) + extra
    base = cfg.name if isinstance(cfg, MachineConfig) else str(cfg)
    machine = cfg if isinstance(cfg, MachineConfig) and not extra else load_config(cfg, extra)
    return machine, " ".join([base, *extra])


class _as_onnx:
    """Context manager: the ONNX path of ``model`` (exporting a CompressionResult)."""

    def __init__(self, model, x=None):
        # x: the images the caller simulates; their sample shape exports a model that
        # carries no sample_shape of its own
        self.model, self.tmp = model, None
        self.input_shape = None if x is None else tuple(np.shape(x)[1:]) or None

    def __enter__(self) -> Path:
        if isinstance(self.model, (str, os.PathLike)):
            p = Path(self.model)
            if not p.is_file():
                raise CompressionError(f"model {str(p)!r}: no such ONNX file")
            return p
        if not hasattr(self.model, "layers") or not hasattr(self.model, "recipe"):
            raise CompressionError(f"model: an ONNX path or a CompressionResult, not "
                                   f"{type(self.model).__name__}")
        from .export import export_qdq
        self.tmp = tempfile.TemporaryDirectory(prefix="xbarsim-hw-")
        return export_qdq(self.model, Path(self.tmp.name) / "compressed.onnx",
                          input_shape=None if hasattr(self.model.model, "sample_shape")
                          else self.input_shape)

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


def _fit_input(path, x) -> np.ndarray:
    """``x`` (batch first) reshaped to the model's input (images for a model that takes
    flat vectors), float32 and contiguous."""
    x = np.asarray(x, dtype=np.float32)
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type \
        .shape.dim
    sample = [d.dim_value for d in dims[1:]]
    if sample and all(sample) and int(np.prod(sample)) == int(np.prod(x.shape[1:])):
        x = x.reshape(len(x), *sample)
    return np.ascontiguousarray(x)


def _geometry_of(model, path=None) -> CrossbarGeometry | None:
    """The compressor's crossbar geometry of ``model`` (an ONNX path, or a loaded proto and
    the ``path`` to name), or None."""
    if not isinstance(model, onnx.ModelProto):
        model, path = onnx.load(str(model), load_external_data=False), model
    props = {p.key: p.value for p in model.metadata_props}
    meta = props.get("xbarsim.compressor")
    if not meta:
        return None
    where = f"{path}: metadata xbarsim.compressor"
    geometry = _meta_field(_meta_json(meta, where), "geometry", where)
    if not isinstance(geometry, dict):
        raise CompressionError(f"{where}: geometry must be a JSON object of crossbar fields")
    return CrossbarGeometry.from_dict(geometry, where=f"{where}.geometry")


def _layer_meta(proto) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """``({weight initializer: bits}, {weight initializer: crossbar view})`` from the
    compressor's per-layer metadata; a malformed entry is a one-line error naming it."""
    bits, views = {}, {}
    for where, meta in _layer_metas(proto):
        init = _meta_field(meta, "initializer", where)
        try:
            if meta.get("bits"):
                bits[init] = int(meta["bits"])
            if meta.get("crossbar_view"):
                views[init] = tuple(int(d) for d in meta["crossbar_view"])
        except (TypeError, ValueError) as e:
            raise CompressionError(f"{where}: bits must be an integer and crossbar_view "
                                   f"a list of integers ({e})") from e
    return bits, views


def _layer_metas(proto):
    """``(where, metadata)`` of each compressed layer's ``xbarsim.layer.*`` entry, parsed."""
    for p in proto.metadata_props:
        if p.key.startswith("xbarsim.layer."):
            where = f"metadata {p.key}"
            yield where, _meta_json(p.value, where)


def _meta_json(text: str, where: str) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompressionError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CompressionError(f"{where}: must be a JSON object, got {type(meta).__name__}")
    return meta


def _meta_field(meta: dict, key: str, where: str):
    if key not in meta:
        raise CompressionError(f"{where}: no {key!r} key (written by export_qdq)")
    return meta[key]


def _bits_of_levels(q: np.ndarray) -> int:
    """Two's-complement bits an integer tensor needs (a QDQ weight without compressor
    metadata): -128..127 takes 8, -8..7 takes 4."""
    hi, lo = int(np.max(q, initial=0)), int(np.min(q, initial=0))
    return max(2, hi.bit_length() + 1, (-lo - 1).bit_length() + 1)


def _lossless_bits(prog) -> np.ndarray:
    """Lossless ADC bits of every crossbar block of ``prog`` (what ``adc.adaptive`` picks)."""
    from simulator.crossbar import adaptive_adc_bits

    used = zip(prog.mvmu_levels, prog.mvmu_rows_used, prog.mvmu_cols_used)
    return np.array([adaptive_adc_bits(lv[:, :r, :c], prog.config) for lv, r, c in used],
                    np.int64)


def _is_mapping_of_dicts(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, dict) for v in d.values())


def _fmt(key, v):
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if key.startswith("accuracy"):
        return f"{100 * v:.2f} %"
    if key in ("energy_uj", "latency_us", "area_mm2"):
        return f"{v:.4g}"
    if key in ("compression", "adc_bits_mean"):
        return f"{v:.2f}"
    return f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:.4g}"


def _change(key, d, c, lower):
    if d is None or c is None or lower is None:
        return ""
    if key.startswith("accuracy"):
        return f"{100 * (c - d):+.2f} pp"
    if key == "compression":
        return f"x{c / d:.1f}" if d else ""
    if key.startswith("adc_bits"):
        return f"{c - d:+.2f} bits" if key.endswith("mean") else f"{c - d:+d} bits"
    if not d:
        return ""
    return f"{100 * (c - d) / d:+.1f} %"
