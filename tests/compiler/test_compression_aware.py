"""Compression-aware mapping: zero blocks take no crossbar, pruned rows are compacted, and
adaptive ADC bits follow the weights."""
import warnings

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.reference import run_onnxruntime
from simulator import load_config, simulate


def mlp(weights, name="mlp"):
    nodes, inits = [], []
    x = "input"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        out = "logits" if i == len(weights) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [out if i == len(weights) - 1
                                                                 else f"m{i}"]))
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        x = out
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, weights[0].shape[0]])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, weights[-1].shape[1]])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def block_pruned(rng, shape, keep, block=128):
    w = rng.standard_normal(shape) * 0.05
    rb, cb = -(-shape[0] // block), -(-shape[1] // block)
    mask = rng.random((rb, cb)) < keep
    mask[0, 0] = True
    full = np.kron(mask, np.ones((block, block)))[:shape[0], :shape[1]]
    return w * full, int(mask.sum()), rb * cb


def test_80_percent_zero_blocks_use_fewer_crossbars_conversions_and_energy():
    rng = np.random.default_rng(0)
    dense = [rng.standard_normal((1024, 1024)) * 0.05, rng.standard_normal((1024, 512)) * 0.05]
    pruned, kept = [], 0
    for w in dense:
        p, k, _ = block_pruned(rng, w.shape, 0.2)
        pruned.append(p)
        kept += k
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    cfg = load_config("puma")
    reps, progs = [], []
    for ws in (dense, pruned):
        prog = compile_model(mlp(ws), cfg, calibration={"input": x})
        progs.append(prog)
        reps.append(simulate(prog, {"input": x}))
    d, p = reps
    assert len(progs[0].mvmu_loc) == 64 + 32
    assert len(progs[1].mvmu_loc) == kept             # exactly the non-zero blocks
    assert kept <= 0.3 * 96
    assert p.crossbars == kept * cfg.arrays * cfg.slices
    assert p.adc_conversions < 0.35 * d.adc_conversions
    assert p.energy_j["total"] < d.energy_j["total"]
    assert p.energy_j["adc"] < 0.35 * d.energy_j["adc"]
    assert p.area_mm2["total"] < d.area_mm2["total"]
    ort = run_onnxruntime(mlp(pruned), {"input": x})["logits"]
    out = p.outputs["logits"]
    assert np.linalg.norm(out - ort) / np.linalg.norm(ort) < 1e-2


def test_pruned_rows_are_compacted():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 64)) * 0.1
    w[::2] = 0                                      # half the input rows pruned
    prog = compile_model(mlp([w]), "puma", calibration={"input": rng.standard_normal((2, 256))
                                                        .astype(np.float32)})
    assert len(prog.mvmu_loc) == 1                   # 128 live rows fit one crossbar
    assert int(prog.mvmu_rows_used[0]) == 128


def test_adaptive_adc_bits_follow_sparsity_and_stay_exact():
    rng = np.random.default_rng(2)
    w = np.zeros((128, 64))
    for c in range(64):                              # TinyADC-style: 4 nonzeros per column
        w[rng.choice(128, 4, replace=False), c] = rng.standard_normal(4)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    cfg = load_config("puma", ["adc.adaptive=true", "xbar.mapping=differential"])
    prog = compile_model(mlp([w]), cfg, calibration={"input": x})
    bits = int(prog.mvmu_adc_bits[0])
    assert bits == int(np.ceil(np.log2(4 * 3 + 1)))  # 4 rows x top level 3
    rep = simulate(prog, {"input": x})
    ideal = simulate(compile_model(mlp([w]), load_config("puma", ["adc.bits=none",
                                                                  "xbar.mapping=differential"]),
                                   calibration={"input": x}), {"input": x})
    np.testing.assert_array_equal(rep.outputs["logits:int"], ideal.outputs["logits:int"])
    dense = simulate(compile_model(mlp([w]), load_config("puma", ["xbar.mapping=differential"]),
                                   calibration={"input": x}), {"input": x})
    assert rep.energy_j["adc"] < dense.energy_j["adc"] * bits / 8 + 1e-15


def test_wide_layer_on_one_core_reloads_constants_instead_of_failing():
    # 1000 output channels from 100 inputs: 8 strips of one block each, 6 on one core,
    # whose bias/multiplier vectors do not all fit the 2048 registers.
    rng = np.random.default_rng(4)
    w = rng.standard_normal((100, 1000)) * 0.1
    x = rng.standard_normal((2, 100)).astype(np.float32)
    prog = compile_model(mlp([w]), load_config("puma", ["adc.bits=none"]),
                         calibration={"input": x})
    out = simulate(prog, {"input": x}).outputs["logits"]
    ort = run_onnxruntime(mlp([w]), {"input": x})["logits"]
    assert np.linalg.norm(out - ort) / np.linalg.norm(ort) < 1e-2


def _qdq_matmul(q: np.ndarray, scale: float):
    k, n = q.shape
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
         helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.float32(scale), "s")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_integers_are_kept_where_the_mapping_stores_them():
    """int8 -128 fits offset mapping (two's complement), not differential (symmetric):
    offset keeps the QDQ lattice exactly, differential re-quantizes within +-127."""
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (20, 12)).astype(np.int8)
    q[0, 0] = -128
    model = _qdq_matmul(q, 0.01)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    for mapping, kept in (("offset", True), ("differential", False)):
        cfg = load_config("small", ["weight_bits=8", f"xbar.mapping={mapping}"])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _, lp, _ = compile_model(model, cfg, calibration={"input": x}, return_ir=True)
        # re-quantizing was silent: the chip ran other weights than the file's
        said = [str(w.message) for w in seen if "re-quantized" in str(w.message)]
        assert (said == []) == kept
        if not kept:
            assert said[0].startswith("MatMul") and "2 of 12 columns hold levels -128..127, " \
                "past the -127..127 that 8-bit weights store with differential" in said[0]
        (layer,) = [L for L in lp.layers if getattr(L, "weight", None) is not None]
        assert np.array_equal(layer.weight, q.astype(np.int64)) == kept
        assert layer.weight.min() >= (-128 if kept else -127)


def test_qdq_levels_of_a_tiny_scale_column_are_said_to_be_coarsened():
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, (20, 4)).astype(np.int8)
    scale = np.array([1.0, 1.0, 1.0, 1e-3], np.float32)   # column 3 far below 1/64
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], axis=1),
         helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((4, 20)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"1 of 4 columns are scaled below 1/64 of the "
                                         r"layer's largest; their exported levels are coarsened"):
        compile_model(model, load_config("small", ["weight_bits=8"]), calibration={"input": x})


def test_layer_pruned_to_few_of_many_strips_fits_the_registers():
    """128 -> 2048 with 3 of 16 column blocks kept: the 13 empty strips reduce on the
    layer's first core; they share one accumulator window there (16 windows of 128 plus
    the constants' slot would outgrow the core's 2048 registers), and the outputs stay
    exact: the kept strips as onnxruntime has them, the empty ones zero."""
    rng = np.random.default_rng(5)
    w = np.zeros((128, 2048))
    kept = (0, 7, 15)
    for j in kept:
        w[:, 128 * j:128 * (j + 1)] = rng.standard_normal((128, 128)) * 0.1
    x = rng.standard_normal((2, 128)).astype(np.float32)
    prog = compile_model(mlp([w]), load_config("puma", ["adc.bits=none"]),
                         calibration={"input": x})
    assert len(prog.mvmu_loc) == len(kept)
    out = simulate(prog, {"input": x}).outputs["logits"]
    ort = run_onnxruntime(mlp([w]), {"input": x})["logits"]
    assert np.linalg.norm(out - ort) / np.linalg.norm(ort) < 1e-2
    cols = np.concatenate([np.arange(128 * j, 128 * (j + 1)) for j in kept])
    assert not np.any(np.delete(out, cols, axis=1))


def test_each_layers_area_and_leakage_are_its_own_mvmus_and_add_up(tmp_path):
    """A layer's area is its MVMUs' (crossbars, ADCs at their adaptive bits, DACs, sample
    and holds, shift-adds, registers) and its leakage its ADCs' over the run; summed over
    layers they give the totals, less what cores and tiles share (and eDRAM leakage)."""
    from simulator import costs
    rng = np.random.default_rng(4)
    sparse = np.zeros((256, 128))
    for c in range(128):   # 2 nonzeros per 128-row segment (3 per crossbar column at most
        #                    once the compiler packs the kept rows: 4 bits, fewer than dense)
        for seg in (0, 128):
            sparse[seg + rng.choice(128, 2, replace=False), c] = rng.standard_normal(2)
    dense = rng.standard_normal((128, 10)) * 0.1
    x = rng.standard_normal((2, 256)).astype(np.float32)
    cfg = load_config("puma", ["adc.adaptive=true", "xbar.mapping=differential",
                               "adc.model=isaac"])
    prog = compile_model(mlp([sparse, dense]), cfg, calibration={"input": x})
    rep = simulate(prog, {"input": x})
    mvm = [L for L in rep.layers if L["crossbars"]]
    assert [L["crossbars"] for L in mvm] == [2 * cfg.arrays * cfg.slices, cfg.arrays * cfg.slices]
    parts = ("crossbar", "adc", "dac", "sample_hold", "shift_add", "mvmu_registers")
    assert sum(L["area_mm2"] for L in rep.layers) == pytest.approx(
        sum(rep.area_mm2[k] for k in parts), rel=1e-12)
    assert 0 < sum(L["area_mm2"] for L in rep.layers) < rep.area_mm2["total"]
    # per crossbar the sparse layer is smaller: its ADCs convert 3 bits (isaac: 2**(b-8))
    per_xbar = [L["area_mm2"] / L["crossbars"] for L in mvm]
    assert per_xbar[0] < per_xbar[1]
    # each layer's widest ADC: what its crossbars' levels need (adaptive)
    from simulator.crossbar import lossless_adc_bits
    need = [max(lossless_adc_bits(prog.mvmu_levels[i], cfg.step_bits)
                for i in np.flatnonzero(prog.mvmu_layer == k))
            for k, L in enumerate(rep.layers) if L["crossbars"]]
    assert [L["adc_bits"] for L in mvm] == need and need[0] < need[1]
    # the area at those widths, from ISAAC's table restated: an 8-bit ADC is 0.0012 mm^2,
    # halving per bit less, 8 per MVMU
    bits = np.asarray(prog.mvmu_adc_bits)
    assert rep.area_mm2["adc"] == pytest.approx(8 * 0.0012 * np.sum(2.0 ** (bits - 8)),
                                                rel=1e-12)
    assert all(L["adc_bits"] is None for L in rep.layers if not L["crossbars"])
    ns = rep.latency_cycles * cfg.cycle_ns
    edram_leak = (rep.tiles * costs.TABLE["edram_leak_mw"] * cfg.tile.edram_kb / 64
                  * ns * 1e-12)
    assert sum(L["energy_j"]["leakage"] for L in rep.layers) == pytest.approx(
        rep.energy_j["leakage"] - edram_leak, rel=1e-9)
    assert all(L["energy_j"]["leakage"] == 0 for L in rep.layers if not L["crossbars"])
    for comp in ("crossbar", "dac", "adc", "shift_add", "vfu", "edram", "noc"):
        assert sum(L["energy_j"][comp] for L in rep.layers) == pytest.approx(
            rep.energy_j[comp], rel=1e-9, abs=1e-18), comp
    frame = rep.layers_frame()
    assert {"area_mm2", "energy_leakage_j"} <= set(frame.columns)
    plots = rep.plot(tmp_path)
    assert [p.name for p in plots] == ["energy_breakdown.png", "layer_latency.png",
                                       "layer_costs.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


def test_partial_reads_lower_the_adaptive_bits_and_stay_lossless():
    """``xbar.active_rows``: a dense layer read 32 rows at a time needs fewer lossless ADC
    bits per crossbar; with those (``adc.adaptive``) the chip's integers equal the ideal
    ADC's, and the extra reads cost latency and conversions."""
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((200, 64)) * 0.1, rng.standard_normal((64, 10)) * 0.1
    x = rng.standard_normal((3, 200)).astype(np.float32)
    model = mlp([w1, w2])
    base = ["adc.adaptive=true", "xbar.mapping=differential"]
    runs = {}
    for active in ("none", "32"):
        cfg = load_config("puma", base + [f"xbar.active_rows={active}"])
        prog = compile_model(model, cfg, calibration={"input": x})
        ideal = compile_model(model, load_config("puma", base[1:] + [
            "adc.bits=none", f"xbar.active_rows={active}"]), calibration={"input": x})
        rep = simulate(prog, {"input": x})
        # through the bit-serial ADC: the shortcut skips it wherever its bits are lossless
        bit_serial = simulate(prog, {"input": x}, exact_shortcut=False)
        np.testing.assert_array_equal(bit_serial.outputs["logits:int"],
                                      simulate(ideal, {"input": x}).outputs["logits:int"])
        np.testing.assert_array_equal(rep.outputs["logits:int"],
                                      bit_serial.outputs["logits:int"])
        runs[active] = (prog, rep)
    (p_all, r_all), (p32, r32) = runs["none"], runs["32"]
    assert p32.mvmu_adc_bits.max() < p_all.mvmu_adc_bits.max()
    assert r32.latency_cycles > r_all.latency_cycles
    assert r32.adc_conversions > r_all.adc_conversions
    assert "(model puma, 32 rows per read)" in r32.summary()
    assert "rows per read" not in r_all.summary()


def test_adaptive_bits_count_only_what_an_adc_converts():
    """Under offset mapping a zero weight is stored as the bias level, so the rows a layer
    leaves undriven and the columns it leaves unconverted are far from empty; the adaptive
    ADC bits must come from the driven rows and converted columns alone."""
    from simulator.crossbar import lossless_adc_bits
    rng = np.random.default_rng(6)
    w = rng.standard_normal((20, 10)) * 0.1
    x = rng.standard_normal((2, 20)).astype(np.float32)
    cfg = load_config("puma", ["adc.adaptive=true", "xbar.mapping=offset", "weight_bits=8"])
    prog = compile_model(mlp([w]), cfg, calibration={"input": x})
    lv = prog.mvmu_levels[0]
    used = lossless_adc_bits(lv[:, :20, :10], cfg.step_bits)
    assert int(prog.mvmu_adc_bits[0]) == used < lossless_adc_bits(lv, cfg.step_bits)
    ideal = compile_model(mlp([w]), load_config(cfg, ["adc.bits=none", "adc.adaptive=false"]),
                          calibration={"input": x})
    np.testing.assert_array_equal(simulate(prog, {"input": x}).outputs["logits:int"],
                                  simulate(ideal, {"input": x}).outputs["logits:int"])


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_adaptive_bits_hold_the_off_state_current(mapping):
    """With a finite on/off ratio every driven cell conducts G_off on top of its level; an
    adaptive ADC sized on the integer levels alone clipped it. Sized on the nominal
    currents, a clipping adaptive ADC gives the ideal ADC's integers on the same chip."""
    rng = np.random.default_rng(7)
    w = np.zeros((128, 16))
    for c in range(16):                              # sparse columns: G_off dominates
        w[rng.choice(128, 6, replace=False), c] = rng.standard_normal(6)
    x = np.abs(rng.standard_normal((4, 128))).astype(np.float32)
    base = [f"xbar.mapping={mapping}", "weight_bits=8", "noise.on_off_ratio=10",
            "adc.mode=clip"]
    prog = compile_model(mlp([w]), load_config("puma", base + ["adc.adaptive=true"]),
                         calibration={"input": x})
    exact = compile_model(mlp([w]), load_config("puma", base[:2] + ["adc.adaptive=true"]),
                          calibration={"input": x})
    # offset's zero weights already hold the bias level, so G_off may not add a bit there
    more = prog.mvmu_adc_bits.max() - exact.mvmu_adc_bits.max()
    assert more > 0 if mapping == "differential" else more >= 0
    ideal = compile_model(mlp([w]), load_config("puma", base + ["adc.bits=none"]),
                          calibration={"input": x})
    np.testing.assert_array_equal(
        simulate(prog, {"input": x}).outputs["logits:int"],
        simulate(ideal, {"input": x}).outputs["logits:int"])


def test_adaptive_adc_wider_than_any_adc_is_refused_at_compile_time():
    """16-bit DAC steps on 8-bit cells, 512 rows at the top level: 33 lossless bits. The
    compiler names the layer and the knobs instead of emitting a program the validator
    refuses."""
    from compiler import CompilerError
    cfg = load_config("puma", ["adc.adaptive=true", "weight_bits=8", "input_bits=32",
                               "dac.bits=16", "xbar.cell_bits=8", "xbar.rows=512",
                               "xbar.mapping=offset"])
    x = np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)
    with pytest.raises(CompilerError, match="needs a 33-bit ADC.*at most 32.*xbar.rows"):
        compile_model(mlp([np.ones((512, 4))]), cfg, calibration={"input": x})


def test_tiles_exchanging_more_than_a_receive_buffer_do_not_deadlock():
    """512 outputs on 16-row crossbars over two tiles of 8 cores: each tile sends the other
    more chunks per step than its 4-message receive buffer holds. Sending everything before
    receiving anything deadlocked both; the transfers now run in one global order."""
    from compiler.codegen import may_deadlock
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 512)) * 0.3
    x = rng.standard_normal((2, 16)).astype(np.float32)
    cfg = load_config("small", ["tile.cores=8", "tile.recv_buffer=4", "adc.bits=none"])
    prog = compile_model(mlp([w]), cfg, calibration={"input": x})
    assert prog.n_tiles == 2
    rep = simulate(prog, {"input": x})
    ref = run_onnxruntime(mlp([w]), {"input": x})["logits"]
    assert np.abs(rep.outputs["logits"] - ref).max() < 0.05 * np.abs(ref).max()
    plan = {0: [("send", 1, 0, 16)] * 5 + [("recv", 1, 0, 16)] * 5,
            1: [("send", 0, 0, 16)] * 5 + [("recv", 0, 0, 16)] * 5}
    assert may_deadlock(plan, 4) and not may_deadlock(plan, 5)
    assert not may_deadlock({0: [("send", 1, 0, 16)] * 9, 1: [("recv", 0, 0, 16)] * 9}, 4)


@pytest.mark.parametrize("wshape,xshape,group", [((3, 2, 3), (1, 2, 8), 1),         # 1-D
                                                 ((4, 2, 3, 3), (1, 4, 5, 5), 2),   # grouped
                                                 ((4, 1, 3, 3), (1, 4, 5, 5), 4)])  # depthwise
def test_qdq_integers_of_1d_and_grouped_convolutions_are_kept(wshape, xshape, group):
    """The compiler re-quantized these to the machine's full width (|q| 32767 on puma), so
    the chip ran other weights than the compressed model's levels."""
    rng = np.random.default_rng(3)
    q = rng.integers(-7, 8, wshape).astype(np.int8)
    q.flat[0] = 7
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
         helper.make_node("Conv", ["input", "w"], ["y"], group=group)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(xshape))], [],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.float32(0.05), "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.graph.output.extend([onnx.shape_inference.infer_shapes(model).graph.value_info[-1]])
    x = rng.standard_normal((2,) + xshape[1:]).astype(np.float32)
    _, lp, _ = compile_model(model, load_config("puma"), calibration={"input": x},
                             return_ir=True)
    (layer,) = [L for L in lp.layers if getattr(L, "weight", None) is not None]
    assert np.abs(layer.weight).max() == 7
    np.testing.assert_array_equal(np.sort(layer.weight[layer.weight != 0]),
                                  np.sort(q[q != 0].astype(np.int64)))
    np.testing.assert_allclose(layer.w_scale, 0.05, rtol=1e-7)


def test_memory_runs_split_at_every_gap():
    from compiler.partition import runs
    assert runs(np.array([], np.int64)) == []
    assert runs(np.array([7])) == [(7, 0, 1)]
    assert runs(np.array([3, 4, 5, 9, 10, 2, 1])) == [(3, 0, 3), (9, 3, 2), (2, 5, 1), (1, 6, 1)]
