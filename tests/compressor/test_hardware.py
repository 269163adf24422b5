"""The hardware loop: a compressed model costs fewer crossbars and less energy on the
simulated chip than its dense start, TinyADC's lowered ADC is lossless bit for bit, the
storage formula counts what it says, and a bad recipe fails before any training."""
import re

import numpy as np
import pytest
import torch

from compressor import CompressionError, compress, export_qdq, parse_recipe
from compressor.geometry import CrossbarGeometry
from compressor.hardware import (
    accuracy_under_variation,
    adc_lossless_check,
    compare,
    evaluate_hardware,
    storage_bits,
)

GEOM = {"rows": 16, "cols": 16, "cell_bits": 2, "weight_bits": 8, "mapping": "differential"}
# puma's costs on the crossbars the recipes compress for
MACHINE = ("puma", ["xbar.rows=16", "xbar.cols=16", "weight_bits=8", "xbar.mapping=differential"])
SCHEDULE = {"admm": {"rounds": 1}, "retrain": {"epochs": 1}, "pretrain": {"epochs": 2}}


def _recipe(name, rule):
    return parse_recipe({"name": name, "geometry": GEOM, **SCHEDULE,
                         "layers": [{"match": ["features.3", "classifier.1", "classifier.3"],
                                     **rule},
                                    {"match": ["features.0", "classifier.5"],
                                     "quant": {"bits": 8}}]})


@pytest.fixture(scope="module")
def digits():
    from models.data import load_splits
    return load_splits("digits", limit=300)


def _run(recipe, digits, tmp_path_factory):
    from models import build
    (xtr, ytr), (xte, yte) = digits
    torch.manual_seed(0)
    model = build("lenet5", seed=0)
    res = compress(model, recipe, (xtr, ytr), (xte, yte), progress=False)
    out = tmp_path_factory.mktemp(recipe.name)
    dense = build("lenet5", seed=0)
    dense.load_state_dict(res.dense_state)
    from models.onnx_export import export
    return (export(dense, out / "dense.onnx", 19, dynamic_batch=True),
            export_qdq(res, out / "compressed.onnx"))


@pytest.fixture(scope="module")
def blocks(digits, tmp_path_factory):
    return _run(_recipe("blocks", {"sparsity": {"structure": "blocks", "keep": 0.25},
                                   "quant": {"bits": 4}}), digits, tmp_path_factory)


@pytest.fixture(scope="module")
def tinyadc(digits, tmp_path_factory):
    return _run(_recipe("tiny", {"sparsity": {"structure": "tinyadc", "n": 2},
                                 "quant": {"bits": 8}}), digits, tmp_path_factory)


def test_compressed_model_costs_fewer_crossbars_and_less_energy(blocks, digits, capsys):
    dense_path, comp_path = blocks
    (xtr, _), (xte, yte) = digits
    x, y = xte[:24], yte[:24]
    dense = evaluate_hardware(dense_path, MACHINE, x, y, calibration=xtr[:32])
    comp = evaluate_hardware(comp_path, MACHINE, x, y, calibration=xtr[:32])
    assert comp["crossbars"] < 0.5 * dense["crossbars"]
    assert comp["energy_uj"] < dense["energy_uj"]
    assert comp["area_mm2"] < dense["area_mm2"]
    assert comp["compression"] > 8 * dense["compression"] and dense["compression"] == 1.0
    assert comp["weights"] == dense["weights"] == 61_470 - 0  # LeNet-5's Conv/Gemm weights
    for r in (dense, comp):  # the chip agrees with onnxruntime on (nearly) every image
        assert r["agreement"] >= 0.9 and 0 <= r["accuracy_sim"] <= 1
    table = compare(dense, {"admm": comp}, show=False)
    capsys.readouterr()
    compare(dense, {"admm": comp})
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("accuracy")   # no "metric" line under the head
    assert table.loc["crossbars", "admm vs dense"].endswith("%")
    assert table.loc["crossbars", "admm vs dense"].startswith("-")


def test_hardware_loop_with_weight_copies_keeps_outputs_and_cuts_latency(blocks, digits):
    """``replicate`` reaches the compiler: copies of the convolutions' crossbars compute the
    same logits (same accuracy, same agreement) sooner, with more MVMUs."""
    _, comp_path = blocks
    (xtr, _), (xte, yte) = digits
    one = evaluate_hardware(comp_path, MACHINE, xte[:8], yte[:8], calibration=xtr[:32])
    four = evaluate_hardware(comp_path, MACHINE, xte[:8], yte[:8], calibration=xtr[:32],
                             replicate=4)
    assert (one["replicate"], four["replicate"]) == (1, 4)
    assert four["accuracy_sim"] == one["accuracy_sim"]
    assert four["agreement"] == one["agreement"]
    assert four["mvmus"] > one["mvmus"]
    assert four["latency_us"] < 0.8 * one["latency_us"]
    assert four["storage_bits"] == one["storage_bits"]   # copies are hardware, not storage


def test_hardware_loop_places_pools_as_asked(blocks, digits):
    """``vfu_cores`` reaches the compiler: LeNet-5's pools on cores of their own finish
    sooner than on the MVM layers' cores, with the same logits and more cores."""
    _, comp_path = blocks
    (xtr, _), (xte, yte) = digits
    own = evaluate_hardware(comp_path, MACHINE, xte[:8], yte[:8], calibration=xtr[:32])
    shared = evaluate_hardware(comp_path, MACHINE, xte[:8], yte[:8], calibration=xtr[:32],
                               vfu_cores="shared")
    assert (own["vfu_cores"], shared["vfu_cores"]) == ("own", "shared")
    assert own["agreement"] == shared["agreement"] and own["mvmus"] == shared["mvmus"]
    assert own["cores"] == shared["cores"] + 2
    assert own["latency_us"] < 0.95 * shared["latency_us"]


@pytest.fixture(scope="module")
def three_bit(digits, tmp_path_factory):
    """Every layer on 3-bit levels (|q| <= 3: one 2-bit cell per differential array)."""
    recipe = parse_recipe({
        "name": "three_bit", "geometry": {**GEOM, "weight_bits": 3}, **SCHEDULE,
        "layers": [{"match": ["features.3", "classifier.1", "classifier.3"],
                    "sparsity": {"structure": "blocks", "keep": 0.25}, "quant": {"bits": 3}},
                   {"match": ["features.0", "classifier.5"], "quant": {"bits": 3}}]})
    return _run(recipe, digits, tmp_path_factory)


def test_three_bit_levels_take_one_slice_and_compute_the_same_logits(three_bit, digits):
    """The benchmark's block machine: 3-bit levels on 2-bit cells are 1 slice x 2 arrays
    per block (an 8-bit machine spends 4 x 2 on the same integers), and with ideal ADCs
    both machines compute the same logits bit for bit."""
    from compiler import compile_model
    from simulator import load_config, simulate
    _, comp_path = three_bit
    (xtr, _), (xte, _) = digits
    rep = {}
    for bits, xbars in ((3, 2), (8, 8)):   # one ADC per crossbar on both
        cfg = load_config("puma", ["xbar.rows=16", "xbar.cols=16", f"weight_bits={bits}",
                                   "xbar.mapping=differential", "adc.bits=none",
                                   f"adc.per_mvmu={xbars}"])
        assert cfg.slices * cfg.arrays == xbars
        prog = compile_model(comp_path, cfg, calibration={"input": xtr[:32]})
        rep[bits] = simulate(prog, {"input": xte[:8]})
    assert rep[3].mvmus == rep[8].mvmus
    np.testing.assert_array_equal(rep[3].outputs["logits"], rep[8].outputs["logits"])
    assert rep[3].area_mm2["adc"] == pytest.approx(rep[8].area_mm2["adc"] / 4)
    assert rep[3].energy_j["leakage"] < rep[8].energy_j["leakage"] / 2


def test_tinyadc_lowers_adc_bits_and_stays_lossless(tinyadc, digits):
    dense_path, comp_path = tinyadc
    (xtr, _), (xte, _) = digits
    check = adc_lossless_check(comp_path, MACHINE, xte[:16], calibration=xtr[:32],
                               uniform=True)
    assert check["equal"] and check["max_abs_diff"] == 0
    # one ADC width for every crossbar, the widest the model's crossbars need: lossless too
    # (by construction: it shows the uniform-ADC path, not TinyADC's n; one bit less below)
    assert check["equal_uniform"]
    # a noisy machine is checked without its noise (an analog error would read as lossy)
    noisy = (MACHINE[0], MACHINE[1] + ["noise.program_sigma=0.3", "noise.read_sigma=0.05"])
    assert adc_lossless_check(comp_path, noisy, xte[:4], calibration=xtr[:32])["equal"]
    dense = adc_lossless_check(dense_path, MACHINE, xte[:4], calibration=xtr[:32])
    # the dense model's widest crossbar, on every crossbar of the TinyADC model: lossless;
    # one bit below the TinyADC model's widest: it clips (the check can fail)
    narrow = (MACHINE[0], MACHINE[1] + [f"adc.bits={check['adc_bits_max'] - 1}"])
    from compiler import compile_model
    from simulator import load_config, simulate
    import onnx as _onnx
    inp = _onnx.load(str(comp_path)).graph.input[0].name
    ideal = simulate(compile_model(comp_path, load_config(MACHINE[0], MACHINE[1] + [
        "adc.bits=none"]), calibration={inp: xtr[:32]}), {inp: xte[:16]})
    clipped = simulate(compile_model(comp_path, load_config(*narrow),
                                     calibration={inp: xtr[:32]}), {inp: xte[:16]},
                       exact_shortcut=False)
    out = [k for k in ideal.outputs if k.endswith(":int")][0]
    assert not np.array_equal(ideal.outputs[out], clipped.outputs[out])
    # The TinyADC layers' crossbars sum at most 2 rows x level 3 per bit line: 3 bits; the
    # two full-precision layers keep theirs, so the mean falls while the max may not.
    assert check["adc_bits_mean"] <= dense["adc_bits_mean"] - 1.0
    assert min(check["adc_bits_hist"]) <= 3
    # reading 4 of the 16 rows at a time lowers the dense model's lossless bits too
    full = evaluate_hardware(dense_path, MACHINE, xte[:4], calibration=xtr[:32])
    quarter = evaluate_hardware(dense_path, (MACHINE[0], MACHINE[1] + ["xbar.active_rows=4"]),
                                xte[:4], calibration=xtr[:32])
    assert quarter["adc_bits_max"] < full["adc_bits_max"]
    assert quarter["latency_us"] > full["latency_us"]


def _qdq_matmul(q, path, structure=None, n=None, geometry=None):
    """``input @ (q · 0.05)`` as QDQ ONNX; with ``structure``, the compressor's metadata for
    a column bound of ``n`` on ``geometry``'s crossbars (what :func:`promised_adc_bits`
    reads)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
         helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, q.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, q.shape[1]])],
        [numpy_helper.from_array(q.astype(np.int8), "wq"),
         numpy_helper.from_array(np.float32(0.05), "ws")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    if structure is not None:
        lim = int(np.abs(q).max())
        onnx.helper.set_model_props(model, {
            "xbarsim.compressor": json.dumps({"format": 1, "geometry": geometry}),
            "xbarsim.layer.w": json.dumps({
                "initializer": "w", "op": "MatMul", "levels": [-lim, lim],
                "constraint": {"sparsity": {"structure": structure, "n": n}}})})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("key,value,msg", [
    ("xbarsim.layer.w", "{not json", r"metadata xbarsim.layer.w: not valid JSON"),
    ("xbarsim.layer.w", '{"bits": 3}', r"metadata xbarsim.layer.w: no 'initializer' key"),
    ("xbarsim.layer.w", '{"initializer": "wq", "bits": "three"}',
     r"metadata xbarsim.layer.w: bits must be an integer"),
    ("xbarsim.compressor", '{"format": 1}', r"xbarsim.compressor: no 'geometry' key"),
    ("xbarsim.compressor", '{"geometry": {"rows": 8, "colz": 8}}',
     r"xbarsim.compressor.geometry.colz: unknown field"),
])
def test_malformed_compressor_metadata_is_one_line_naming_the_entry(tmp_path, key, value,
                                                                      msg, monkeypatch):
    import onnx

    import simulator
    path = _qdq_matmul(np.ones((16, 4), np.int64), tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {key: value})
    onnx.save(proto, path)
    monkeypatch.setattr(simulator, "simulate", lambda *a, **k: pytest.fail("simulated"))
    with pytest.raises(CompressionError, match=msg) as e:
        evaluate_hardware(path, "puma", np.zeros((1, 16), np.float32))
    assert "\n" not in str(e.value)


def test_tinyadc_per_read_holds_on_a_chip_that_reads_fewer_rows(tmp_path):
    """``geometry.active_rows``: n nonzeros per bit line per read of 32 rows, at least four
    times the weights per column that n per whole 128-row crossbar keeps. On a chip that reads 32
    rows at a time each read sums <= 8 x level 3 = 24: at most 5 bits, lossless; the same
    weights read 128 rows at once need more."""
    from compressor.projections import project_matrix
    rng = np.random.default_rng(1)
    m = rng.normal(size=(512, 6))
    x = rng.normal(size=(8, 512)).astype(np.float32)
    g = CrossbarGeometry(rows=128, cols=128, weight_bits=8, active_rows=32)
    p, scale, _ = project_matrix(m, g, "tinyadc_packed", 8, (3, "differential", None, False))
    whole, _, _ = project_matrix(m, CrossbarGeometry(rows=128, cols=128, weight_bits=8),
                                 "tinyadc_packed", 8, (3, "differential", None, False))
    # whole crossbars: the kept rows pack into one crossbar, 8 per column; reads of 32 rows
    # let each packed crossbar hold 8 per read
    assert np.count_nonzero(whole) == 8 * 6 and np.count_nonzero(p) >= 4 * 8 * 6
    path = _qdq_matmul(np.rint(p / scale).astype(np.int64), tmp_path / "per_read.onnx")
    bits = {}
    for active in ("32", "none"):
        check = adc_lossless_check(path, ("puma", ["weight_bits=8", "xbar.mapping=differential",
                                                   f"xbar.active_rows={active}"]), x)
        assert check["equal"]
        bits[active] = check["adc_bits_max"]
    assert bits["32"] <= 5 < bits["none"]


def test_packed_tinyadc_holds_on_the_compilers_packed_crossbars(tmp_path):
    """With ``tinyadc`` the compiler packs the rows a strip uses into fewer crossbars, which
    then straddle segments and need an ADC bit more; ``tinyadc_packed`` keeps its bound."""
    from compressor.projections import project_matrix
    rng = np.random.default_rng(0)
    m = rng.normal(size=(512, 6))                 # 512 inputs x 6 outputs: one column strip
    g = CrossbarGeometry(rows=128, cols=128, weight_bits=8)
    x = rng.normal(size=(8, 512)).astype(np.float32)
    # and one input at the largest value on every row: every input bit drives every row,
    # the widest column sum the cells allow
    x = np.vstack([x, np.full((1, 512), np.abs(x).max(), np.float32)])
    bits = {}
    nnz = {}
    promise = {}
    for structure in ("tinyadc", "tinyadc_packed", "tinyadc_packed_signed"):
        p, scale, _ = project_matrix(m, g, structure, 8, (3, "differential", None, False))
        nnz[structure] = np.count_nonzero(p)
        q = np.rint(p / scale).astype(np.int64)   # 3-bit levels: one 2-bit slice
        path = _qdq_matmul(q, tmp_path / f"{structure}.onnx", structure, 8, g.to_dict())
        check = adc_lossless_check(path, ("puma", ["weight_bits=8", "xbar.mapping=differential"]),
                                   x, promised=True)
        assert check["equal"]
        bits[structure] = check["adc_bits_max"]
        promise[structure] = check
    assert bits["tinyadc_packed"] == 5            # <= 8 rows x level 3 = 24: 5 bits
    assert bits["tinyadc"] > bits["tinyadc_packed"]  # up to 32 per packed crossbar: 7 bits
    # what n promises, from the metadata alone: 8 x level 3 = 24, 5 bits. The packed
    # structures keep it on the compiled chip; plain tinyadc's packed crossbars break it, and
    # the chip at the promised width then clips (the check can fail, and does here)
    for structure, kept in (("tinyadc", False), ("tinyadc_packed", True),
                            ("tinyadc_packed_signed", True)):
        check = promise[structure]
        assert check["adc_bits_promised"] == {"MatMul_logits": 5}
        assert check["promise_kept"] is kept and check["equal_promised"] is kept
        assert bool(check["crossbars_over_promise"]) is not kept
        # the hardware loop's table says the same, from the compiled cells alone
        hw = evaluate_hardware(tmp_path / f"{structure}.onnx", ("puma", [
            "weight_bits=8", "xbar.mapping=differential"]), x)
        assert hw["adc_bits_promised"] == 5
        assert (hw["tinyadc_promise"] == "kept") is kept
        assert kept or hw["tinyadc_promise"] == (
            f"{sum(check['crossbars_over_promise'].values())} MVMUs need more")
    off = evaluate_hardware(tmp_path / "tinyadc_packed.onnx", ("puma", ["weight_bits=8"]), x)
    assert off["tinyadc_promise"] == "n/a: xbar.mapping=offset"    # puma's offset mapping
    assert "adc_bits_promised" not in off
    # per sign: each differential array's bit line holds <= 8, so the same 5 bits with
    # (nearly) twice the weights
    assert bits["tinyadc_packed_signed"] == 5
    assert nnz["tinyadc_packed_signed"] > 1.5 * nnz["tinyadc_packed"]


@pytest.mark.parametrize("overrides,msg", [
    (["xbar.mapping=offset"], r"differential crossbars only"),
    (["xbar.rows=64", "xbar.mapping=differential"], r"crossbars of 64 rows read 64 .* stated "
                                                    r"for 128 rows read 128"),
    (["xbar.active_rows=48", "xbar.mapping=differential"], r"read 48 at a time"),
    # packed per 128-column strip: wider strips shift the packing windows (2n on a bit line)
    (["xbar.cols=256", "xbar.mapping=differential"], r"crossbars of 256 columns.*"
                                                     r"per 128-column strip"),
])
def test_promised_adc_bits_refuse_crossbars_the_bound_was_not_made_for(tmp_path, overrides,
                                                                       msg):
    from compressor.hardware import promised_adc_bits
    q = np.zeros((128, 4), np.int64)
    q[:8] = 3
    path = _qdq_matmul(q, tmp_path / "m.onnx", "tinyadc_packed", 8,
                       CrossbarGeometry(rows=128, cols=128, weight_bits=8).to_dict())
    assert promised_adc_bits(path, ("puma", ["weight_bits=8", "xbar.mapping=differential",
                                             "xbar.active_rows=32"])) == {"MatMul_logits": 5}
    with pytest.raises(CompressionError, match=msg) as e:
        promised_adc_bits(path, ("puma", ["weight_bits=8", *overrides]))
    assert "\n" not in str(e.value)


def test_promised_bits_of_a_bound_without_quantization(tmp_path):
    """A TinyADC bound on float weights (no ``quant``: no ``levels`` in the metadata): the
    compiler quantizes them to any level the machine stores, so the promise takes the
    top cell level (8-bit differential on 2-bit cells: level 3; 8 x 3 = 24, 5 bits)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compressor.hardware import promised_adc_bits
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((128, 4), np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    onnx.helper.set_model_props(model, {
        "xbarsim.compressor": json.dumps({"format": 1, "geometry": CrossbarGeometry(
            rows=128, cols=128, weight_bits=8).to_dict()}),
        "xbarsim.layer.w": json.dumps({"initializer": "w", "op": "MatMul", "dtype": "float",
                                       "constraint": {"sparsity": {"structure":
                                                                   "tinyadc_packed", "n": 8}}})})
    onnx.save(model, tmp_path / "f.onnx")
    assert promised_adc_bits(tmp_path / "f.onnx", ("puma", [
        "weight_bits=8", "xbar.mapping=differential"])) == {"MatMul_logits": 5}


@pytest.mark.parametrize("zero_point", [None, 128])
def test_storage_formula_counts_blocks_and_masks(tmp_path, zero_point):
    """The same levels stored as int8, or as another tool's uint8 with zero point 128
    (the levels are q - zero point)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    q = np.zeros((8, 40), np.int8)            # Gemm transB: 40 inputs x 8 outputs
    q[:, :16] = 3                             # tile (row 0, col 0) full
    q[0, 16] = 1                              # tile (row 1, col 0): one nonzero
    stored, inputs = [numpy_helper.from_array(q, "wq")], ["wq", "ws"]
    if zero_point is not None:
        stored = [numpy_helper.from_array((q.astype(np.int64) + zero_point).astype(np.uint8),
                                          "wq"),
                  numpy_helper.from_array(np.uint8(zero_point), "wz")]
        inputs.append("wz")
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", inputs, ["w"]),
         helper.make_node("Gemm", ["input", "w"], ["logits"], transB=1)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 40])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])],
        [*stored, numpy_helper.from_array(np.float32(0.1), "ws")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), path)
    s = storage_bits(path, CrossbarGeometry(rows=16, cols=16))
    # 3 tiles (40 rows / 16) x 1: full tile 16*8 entries at 3 bits (levels up to 3); the
    # one-nonzero tile as 1 value + 128-bit mask; the empty tile nothing; + 3 + 32.
    assert s["layers"]["w"]["bits"] == 3
    assert s["storage_bits"] == 128 * 3 + (3 + 128) + 3 + 32
    assert s["weights"] == 320 and s["nonzero_weights"] == 129
    assert s["compression"] == pytest.approx(32 * 320 / s["storage_bits"])


def test_variation_sweep_shape_and_determinism(blocks, digits):
    _, comp_path = blocks
    (xtr, _), (xte, yte) = digits
    recs = accuracy_under_variation(comp_path, MACHINE, xte[:12], yte[:12], sigmas=(0.0, 0.3),
                                    seeds=(0, 1), calibration=xtr[:32])
    assert [r["sigma"] for r in recs] == [0.0, 0.3]
    assert len(recs[0]["per_seed"]) == 1 and len(recs[1]["per_seed"]) == 2
    again = accuracy_under_variation(comp_path, MACHINE, xte[:12], yte[:12], sigmas=(0.3,),
                                     seeds=(0, 1), calibration=xtr[:32])
    assert again[0]["per_seed"] == recs[1]["per_seed"]


def test_variation_sweep_draws_other_devices_per_seed_and_checks_its_inputs(
        blocks, digits, monkeypatch):
    """Each seed programs other deviations (the logits differ between seeds and from the
    exact chip); bad inputs are refused before anything is simulated."""
    import simulator
    _, comp_path = blocks
    (xtr, _), (xte, yte) = digits
    seen, real = [], simulator.simulate
    monkeypatch.setattr(simulator, "simulate", lambda prog, inputs, **kw: seen.append(
        (prog.config.noise.program_sigma, prog.config.noise.seed,
         real(prog, inputs, **kw).outputs["logits"])) or real(prog, inputs, **kw))
    accuracy_under_variation(comp_path, MACHINE, xte[:6], yte[:6], sigmas=(0.0, 0.3),
                             seeds=(0, 1), calibration=xtr[:32])
    assert [(s, d) for s, d, _ in seen] == [(0.0, 0), (0.3, 0), (0.3, 1)]
    exact, s0, s1 = (logits for _, _, logits in seen)
    assert not np.array_equal(s0, s1) and not np.array_equal(s0, exact)
    seen.clear()
    for kwargs, msg in (({"y": yte[:5]}, "5 labels for 6 images"),
                        ({"seeds": ()}, "need at least one device seed"),
                        ({"sigmas": (0.1, -1.0)}, r"sigma=-1.0: must be a finite number"),
                        ({"seeds": (1.2, 1.7)}, r"seed=1.2: must be an integer >= 0"),
                        ({"seeds": (0, -1)}, r"seed=-1: must be an integer >= 0"),
                        ({"seeds": 0}, r"seeds=0: give a sequence"),
                        ({"sigmas": 0.1}, r"sigmas=0.1: give a sequence")):
        args = {"y": yte[:6], **kwargs}
        with pytest.raises(CompressionError, match=msg):
            accuracy_under_variation(comp_path, MACHINE, xte[:6], **args)
    with pytest.raises(CompressionError, match=r"sigma=20.0: .*lognormal"):
        accuracy_under_variation(comp_path, MACHINE, xte[:6], yte[:6], sigmas=(0.1, 20.0),
                                 overrides=["noise.program_dist=lognormal"])
    assert not seen                                     # refused before simulating
    rec = accuracy_under_variation(comp_path, MACHINE, xte[:6], yte[:6],
                                   sigmas=(np.float32(0.0),), calibration=xtr[:32])
    assert rec[0]["sigma"] == 0.0


@pytest.mark.parametrize("rule,match,geom", [
    ({"match": "features.7", "quant": {"bits": 8}}, "features.7.*matches no layer", None),
    ({"match": "classifier.1", "sparsity": {"structure": "tinyadc", "n": 17}},
     "n=17.*1..16", None),
    ({"match": "classifier.1", "sparsity": {"structure": "blocks", "keep": 0.0}},
     "keep=0.0", None),
    ({"match": "classifier.1", "quant": {"bits": 9}}, "bits=9", None),
    ({"match": "classifier.1", "sparsity": {"structure": "tinyadc", "n": 5}},
     r"n=5.*1..4 \(geometry.active_rows, the rows one read drives\)", {"active_rows": 4}),
    ({"match": "classifier.1", "quant": {"bits": 8}}, r"geometry.active_rows=32: must be",
     {"active_rows": 32}),
])
def test_bad_recipe_fails_before_any_training(rule, match, geom, digits, monkeypatch):
    from compressor import pipeline
    from models import build

    def no_training(*a, **k):
        raise AssertionError("training started before the recipe was validated")
    monkeypatch.setattr(pipeline._Run, "_epoch", no_training)
    with pytest.raises(CompressionError, match=match):
        recipe = parse_recipe({"name": "bad", "geometry": {**GEOM, **(geom or {})}, **SCHEDULE,
                               "layers": [rule]})
        compress(build("lenet5", seed=0), recipe, *digits, progress=False)


def test_evaluate_hardware_rejects_what_it_cannot_run(tmp_path):
    with pytest.raises(CompressionError, match="no such ONNX file"):
        evaluate_hardware(tmp_path / "none.onnx", MACHINE, np.zeros((1, 1, 28, 28)))
    with pytest.raises(CompressionError, match="CompressionResult"):
        evaluate_hardware(object(), MACHINE, np.zeros((1, 1, 28, 28)))
    # one string was read character by character ("override 'x': expected KEY=VALUE")
    with pytest.raises(CompressionError, match=r"overrides: a list of KEY=VALUE strings, got "
                                               r"the string 'xbar.rows=16'; wrap it in a list"):
        evaluate_hardware(tmp_path / "none.onnx", "puma", overrides="xbar.rows=16")


def test_packed_tinyadc_on_one_bit_cells_bounds_every_slice_by_n(tmp_path):
    """On 1-bit cells a bit line sums the weights that have that bit set, so ``n`` nonzeros
    per packed column bound every slice's sum by ``n`` whatever the levels: n = 63 of 128
    rows gives 6 lossless bits where the machine's worst case needs 8. Positive weights of
    equal size all land on the top level (both bits set, one array), so the bound is met."""
    from compressor.projections import project_matrix
    rng = np.random.default_rng(1)
    m = rng.uniform(0.9, 1.0, size=(384, 5))
    g = CrossbarGeometry(rows=128, cols=128, cell_bits=1, weight_bits=3)
    cfg = ("puma", ["weight_bits=3", "xbar.mapping=differential", "xbar.cell_bits=1"])
    x = rng.normal(size=(8, 384)).astype(np.float32)
    bits = {}
    for structure, n in (("tinyadc_packed", 63), ("blocks", 1.0)):
        p, scale, _ = project_matrix(m, g, structure, n, (3, "differential", None, False))
        q = np.rint(p / scale).astype(np.int64)
        assert set(np.unique(q)) <= {0, 3}
        path = _qdq_matmul(q, tmp_path / f"{structure}.onnx")
        check = adc_lossless_check(path, cfg, x)
        assert check["equal"]
        bits[structure] = check["adc_bits_max"]
    assert bits == {"tinyadc_packed": 6, "blocks": 8}   # <= 63 vs 128 per bit line
    hw = evaluate_hardware(path, cfg, x)
    assert hw["adc_bits_max"] == 8 and hw["adc_bits_worst_case"] == 8


def _named_mlp(path, inp="x", out="y", batch=None, lstm=False):
    """A float model whose input/output are not xbarsim's ``input``/``logits`` (optionally a
    fixed batch, or an LSTM before the classifier)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    def f(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32),
                                       name)
    if lstm:
        H, T, I = 8, 4, 16
        w, r = f("W", 1, 4 * H, I), f("R", 1, 4 * H, H)
        fc = numpy_helper.from_array((rng.standard_normal((10, H)) * 0.3).astype(np.float32),
                                     "fc")
        nodes = [helper.make_node("Reshape", [inp, "shp"], ["seq"]),
                 helper.make_node("Transpose", ["seq"], ["tm"], perm=[1, 0, 2]),
                 helper.make_node("LSTM", ["tm", w.name, r.name], ["", "yh"], hidden_size=H),
                 helper.make_node("Reshape", ["yh", "flat"], ["h"]),
                 helper.make_node("Gemm", ["h", "fc"], [out], transB=1)]
        inits = [w, r, fc, numpy_helper.from_array(np.array([1, T, I], np.int64), "shp"),
                 numpy_helper.from_array(np.array([1, H], np.int64), "flat")]
        n_in = T * I
    else:
        fc = numpy_helper.from_array((rng.standard_normal((10, 64)) * 0.3).astype(np.float32),
                                     "fc")
        nodes, inits, n_in = [helper.make_node("Gemm", [inp, "fc"], [out], transB=1)], [fc], 64
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        inp, TensorProto.FLOAT, [batch or "N", n_in])], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, [batch or "N", 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_hardware_functions_read_the_models_own_input_and_output_names(tmp_path):
    """They assumed xbarsim's exporter's ``input``/``logits`` (a KeyError after a whole
    simulation)."""
    from compressor.hardware import adc_lossless_check
    rng = np.random.default_rng(2)
    x, cal = rng.standard_normal((6, 64)).astype(np.float32), \
        rng.standard_normal((16, 64)).astype(np.float32)
    yte = rng.integers(0, 10, 6)
    path = _named_mlp(tmp_path / "m.onnx")
    hw = evaluate_hardware(path, "puma", x, yte[:6], calibration=cal)
    assert hw["agreement"] == 1.0 and hw["weights"] == 640
    assert adc_lossless_check(path, "puma", x, calibration=cal)["equal"]
    rec = accuracy_under_variation(path, ("puma", ["noise.read_sigma=0.3"]), x, yte[:6],
                                   sigmas=(0.0,), seeds=(0, 1, 2), calibration=cal)
    assert len(rec[0]["per_seed"]) == 3      # read noise is seeded: sigma 0 is not one run
    with pytest.raises(CompressionError, match="5 labels for 6 images"):
        evaluate_hardware(path, "puma", x, yte[:5], calibration=cal)


def test_onnx_logits_of_a_fixed_batch_model(tmp_path):
    from compressor.hardware import onnx_logits
    path = _named_mlp(tmp_path / "m.onnx", batch=4)
    x = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    got = onnx_logits(path, x)
    import onnx
    from onnx import numpy_helper
    w = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])     # the Gemm's
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-6)   # the padded 2 as well


def test_storage_counts_recurrent_weights(tmp_path):
    """The LSTM's W (32 x 16) and R (32 x 8) were left out while its crossbars counted."""
    s = storage_bits(_named_mlp(tmp_path / "m.onnx", lstm=True), CrossbarGeometry(16, 16))
    assert s["weights"] == 32 * 16 + 32 * 8 + 10 * 8
    assert s["storage_bits"] == 32 * s["weights"] and s["compression"] == 1.0


@pytest.mark.parametrize("lo,hi,bits", [(-128, 127, 8), (-8, 7, 4), (-7, 7, 4), (0, 3, 3),
                                        (0, 0, 2)])
def test_bits_of_other_tools_levels_are_twos_complement(lo, hi, bits):
    from compressor.hardware import _bits_of_levels
    assert _bits_of_levels(np.array([lo, hi])) == bits


def test_storage_counts_weights_built_by_constant_nodes():
    """The model-zoo graphs build their weights with ConstantOfShape (no initializers):
    storage_bits refused them ("no weight to count"); it reads them as the compiler folds
    them."""
    import glob
    import os

    import onnx as _onnx
    paths = glob.glob(os.path.join(os.path.dirname(_onnx.__file__), "backend", "test", "data",
                                   "light", "light_squeezenet.onnx"))
    if not paths:
        pytest.skip("the onnx wheel carries no light model-zoo graphs")
    s = storage_bits(paths[0], CrossbarGeometry(rows=128, cols=128))
    assert s["weights"] > 1_000_000 and s["compression"] == 1.0


def test_a_result_without_sample_shape_is_exported_at_the_images_shape(digits):
    """A torch model of the user's own has no sample_shape: the hardware loop exported it
    with an error naming input_shape, which it does not take; the images carry the shape.
    Bad replicate and geometry arguments are refused rather than truncated or crashed on."""
    from compiler import CompilerError
    (xtr, ytr), (xte, yte) = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16),
                                    torch.nn.ReLU(), torch.nn.Linear(16, 10))
    rec = parse_recipe({"name": "own", "geometry": GEOM, "admm": {"rounds": 1},
                        "retrain": {"epochs": 1},
                        "layers": [{"match": "1", "sparsity": {"structure": "blocks",
                                                               "keep": 0.5},
                                    "quant": {"bits": 8}}]})
    res = compress(model, rec, (xtr[:100], ytr[:100]), (xte[:50], yte[:50]), progress=False)
    assert not hasattr(res.model, "sample_shape")
    hw = evaluate_hardware(res, MACHINE, xte[:4], yte[:4], calibration=xtr[:16])
    assert hw["images"] == 4 and hw["crossbars"] > 0
    with pytest.raises(CompressionError, match="geometry: a CrossbarGeometry .*not dict"):
        evaluate_hardware(res, MACHINE, xte[:4], geometry={"rows": 16})
    with pytest.raises(CompilerError, match="replicate"):      # was truncated to 2
        evaluate_hardware(res, MACHINE, xte[:4], replicate=2.7)


def test_promised_check_refuses_a_foreign_machine_before_simulating(tinyadc, blocks, digits,
                                                                    monkeypatch):
    """The machine check ran after two full simulations, and named the machine without its
    overrides; a model with no bound reported a promise kept that it never made."""
    import simulator
    (xtr, _), (xte, _) = digits
    _, tiny_path = tinyadc
    _, blocks_path = blocks
    seen, real = [], simulator.simulate
    monkeypatch.setattr(simulator, "simulate", lambda *a, **k: seen.append(1) or real(*a, **k))
    with pytest.raises(CompressionError, match=r"^puma xbar.rows=16 .* xbar.rows=32: crossbars of 32 rows"):
        adc_lossless_check(tiny_path, ("puma", list(MACHINE[1]) + ["xbar.rows=32"]), xte[:2],
                           calibration=xtr[:16], promised=True)
    assert not seen
    rec = adc_lossless_check(blocks_path, MACHINE, xte[:2], calibration=xtr[:16],
                             promised=True)
    assert rec["adc_bits_promised"] == {} and rec["promise_kept"] is None \
        and rec["equal_promised"] is None and len(seen) == 2       # no third simulation


def test_compare_refuses_names_that_do_not_match_the_variants(blocks):
    with pytest.raises(CompressionError, match="names: 1 for 2 compressed variants"):
        compare({"crossbars": 4}, {"a": {"crossbars": 2}, "b": {"crossbars": 1}},
                names=["admm"], show=False)


@pytest.mark.parametrize("rule,needle", [
    ({"match": "features.0", "sparsity": {"structure": "blocks", "keep": 0.3}},
     "features.0: blocks with keep = 0.3 prunes nothing on its 25 x 6 crossbar matrix"),
    ({"match": "features.0", "sparsity": {"structure": "tinyadc", "n": 64}},
     "features.0: tinyadc with n = 64 per column segment prunes nothing"),
])
def test_a_sparsity_rule_that_prunes_nothing_is_said_before_training(rule, needle, digits,
                                                                     monkeypatch):
    # keep 0.3 of a layer's one crossbar block rounds to 1 of 1: the run trained, reported
    # the layer as block-pruned and left it dense, without a word
    from compressor import pipeline
    from models import build

    def no_training(*a, **k):
        raise KeyboardInterrupt   # stop right after the checks
    monkeypatch.setattr(pipeline._Run, "_epoch", no_training)
    recipe = parse_recipe({"name": "noop", "geometry": {**GEOM, "rows": 64, "cols": 64},
                           **SCHEDULE, "layers": [rule]})
    with pytest.warns(UserWarning, match=re.escape(needle)), pytest.raises(KeyboardInterrupt):
        compress(build("lenet5", seed=0), recipe, *digits, progress=False)


def test_keep_one_is_asked_for_and_not_warned_of(digits, monkeypatch):
    # the benchmark keeps some convolutions whole on purpose (keep: 1.0)
    import warnings

    from compressor import pipeline
    from models import build

    def no_training(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline._Run, "_epoch", no_training)
    recipe = parse_recipe({"name": "whole", "geometry": {**GEOM, "rows": 64, "cols": 64},
                           **SCHEDULE, "layers": [{"match": "features.0", "sparsity": {
                               "structure": "blocks", "keep": 1.0}}]})
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("error")
        compress(build("lenet5", seed=0), recipe, *digits, progress=False)


def test_promised_adc_bits_names_a_bad_input_shape():
    from compressor.hardware import promised_adc_bits
    with pytest.raises(CompressionError, match="input_shape = 784: one sample's shape"):
        promised_adc_bits("x.onnx", input_shape=784)
