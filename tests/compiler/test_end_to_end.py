"""Zoo models compiled for the puma machine: the simulated outputs match onnxruntime, and
with ideal ADCs they equal the lowered model's integer reference bit for bit."""
import numpy as np
import pytest

pytest.importorskip("torch")

import models  # noqa: E402
from compiler import compile_model  # noqa: E402
from compiler.reference import run_integer_reference, run_onnxruntime  # noqa: E402
from simulator import load_config, simulate  # noqa: E402
from simulator.isa import Op  # noqa: E402

CASES = [
    ("mlp784", {}),
    ("puma_mlp", {}),
    ("lenet5", {}),
    ("vgg8", {"width": 0.25}),
    ("vgg16", {"width": 0.125}),
    ("resnet18", {"width": 0.25}),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name, kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in cache:
            path = root / f"{name}_{len(cache)}.onnx"
            models.export(name, path, seed=0, **kw)
            cache[key] = (path, models.input_shape(name, **kw))
        return cache[key]
    return get


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime_and_integer_reference(exported, name, kw):
    path, shape = exported(name, kw)
    rng = np.random.default_rng(1)
    x = rng.random((3,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none"])
    prog, lp, _ = compile_model(path, cfg, calibration={"input": x}, return_ir=True)
    rep = simulate(prog, {"input": x})
    ref = run_integer_reference(lp, {"input": x})
    np.testing.assert_array_equal(rep.outputs["logits:int"], ref["logits:int"])
    ort = run_onnxruntime(path, {"input": x})["logits"]
    rel = np.linalg.norm(rep.outputs["logits"] - ort) / np.linalg.norm(ort)
    assert rel <= 1e-2, rel


def test_puma_preset_with_its_8bit_adc_stays_within_1e2(exported):
    # The real puma ADC (8 bits, clip) may lose information on dense 128-row blocks; the
    # end result must still match onnxruntime to 1e-2.
    path, shape = exported("lenet5", {})
    x = np.random.default_rng(2).random((4,) + tuple(shape[1:])).astype(np.float32)
    prog = compile_model(path, "puma", calibration={"input": x})
    out = simulate(prog, {"input": x}).outputs["logits"]
    ort = run_onnxruntime(path, {"input": x})["logits"]
    assert np.linalg.norm(out - ort) / np.linalg.norm(ort) <= 1e-2


def test_program_size_does_not_grow_with_pixels(exported):
    small, _ = exported("resnet18", {"width": 0.25, "image_size": 16})
    big, _ = exported("resnet18", {"width": 0.25, "image_size": 32})
    cfg = load_config("puma")
    n16 = compile_model(small, cfg).n_instructions
    n32 = compile_model(big, cfg).n_instructions
    assert n32 == n16       # 4x the pixels, the same loop nests


def test_multi_tile_and_cross_tile_partial_sums_are_exact(exported):
    # A tiny machine forces strips across tiles and partial sums over the NoC.
    path, shape = exported("mlp784", {})
    x = np.random.default_rng(3).random((2,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "node.tiles=400", "weight_bits=16",
                                "input_bits=16"])
    prog, lp, _ = compile_model(path, cfg, calibration={"input": x}, return_ir=True)
    assert prog.n_tiles > 10
    rep = simulate(prog, {"input": x})
    assert rep.counters["packets"] > 0
    np.testing.assert_array_equal(rep.outputs["logits:int"],
                                  run_integer_reference(lp, {"input": x})["logits:int"])


@pytest.mark.parametrize("name,kw,gain", [("lenet5", {}, 0.5), ("vgg8", {"width": 0.25}, 0.7),
                                          ("resnet18", {"width": 0.25}, 0.95)],
                         ids=["lenet5", "vgg8", "resnet18"])
def test_weight_replication_is_exact_and_faster(exported, name, kw, gain):
    # Copies of a convolution's crossbars each compute a band of output rows: the same
    # integers, more crossbars, less latency (measured: 0.38, 0.61, 0.92 of it; ResNet
    # gains least: its copies push the residual blocks across more tiles).
    path, shape = exported(name, kw)
    x = np.random.default_rng(4).random((2,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none"])
    prog1 = compile_model(path, cfg, calibration={"input": x})
    prog4, lp, _ = compile_model(path, cfg, calibration={"input": x}, replicate=4,
                                 return_ir=True)
    copies = [L["copies"] for L in prog4.mapping["layers"]]
    assert max(copies) == 4 and min(copies) == 1, copies
    r1, r4 = simulate(prog1, {"input": x}), simulate(prog4, {"input": x})
    np.testing.assert_array_equal(r4.outputs["logits:int"], r1.outputs["logits:int"])
    np.testing.assert_array_equal(r4.outputs["logits:int"],
                                  run_integer_reference(lp, {"input": x})["logits:int"])
    assert r4.mvmus > r1.mvmus
    assert r4.latency_cycles < gain * r1.latency_cycles, (r4.latency_cycles,
                                                           r1.latency_cycles)


def test_control_streams_let_layers_move_data_side_by_side(exported):
    """ResNet-18 spans tiles whose control units carry several layers' transfers. With one
    stream per tile a layer's transfers wait for every earlier layer's there; with a stream
    per layer (mod tile.control_streams) they overlap: the same integers, less latency
    (measured 0.75 of it at full width, see README)."""
    path, shape = exported("resnet18", {"width": 0.25})
    x = np.random.default_rng(6).random((2,) + tuple(shape[1:])).astype(np.float32)
    reps = {}
    for k in (1, 8):
        cfg = load_config("puma", ["adc.bits=none", f"tile.control_streams={k}"])
        prog = compile_model(path, cfg, calibration={"input": x})
        per_tile = np.bincount(prog.control_tiles)
        assert per_tile.max() <= k
        assert (per_tile.max() > 1) == (k > 1)
        fifos = {int(f) for code in prog.tile_code
                 for f in code["dst"][np.isin(code["op"], [int(Op.SEND), int(Op.RECV)])]}
        assert fifos <= set(range(k)) and (len(fifos) > 1) == (k > 1)
        reps[k] = simulate(prog, {"input": x})
        assert prog.n_tiles > 1 and reps[k].counters["packets"] > 0
    np.testing.assert_array_equal(reps[8].outputs["logits:int"], reps[1].outputs["logits:int"])
    assert reps[8].latency_cycles < 0.95 * reps[1].latency_cycles, (
        reps[8].latency_cycles, reps[1].latency_cycles)


def test_copies_follow_output_pixels_and_the_room_in_the_tile(exported):
    from compiler import CompilerError
    from compiler.place import wanted_copies
    path, shape = exported("vgg8", {"width": 0.25})
    x = np.random.default_rng(5).random((1,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none"])
    _, lp, _ = compile_model(path, cfg, calibration={"input": x}, return_ir=True)
    want = wanted_copies(lp, 8)
    pixels = {i: lp.layers[i].Ho * lp.layers[i].Wo for i in want}
    top = max(pixels.values())
    assert all(want[i] == max(1, min(8, round(8 * p / top))) for i, p in pixels.items())
    assert wanted_copies(lp, 1) == {}
    # LeNet's first conv takes one core of the small machine's 2-core tiles: room for one
    # more copy, not 7
    l5, l5_shape = exported("lenet5", {})
    x5 = np.random.default_rng(5).random((2,) + tuple(l5_shape[1:])).astype(np.float32)
    small = load_config("small", ["adc.bits=none", "node.tiles=256"])
    prog, lp5, _ = compile_model(l5, small, calibration={"input": x5}, replicate=8,
                                 return_ir=True)
    assert [L["copies"] for L in prog.mapping["layers"]] == [2, 1, 1, 1, 1]
    np.testing.assert_array_equal(simulate(prog, {"input": x5}).outputs["logits:int"],
                                  run_integer_reference(lp5, {"input": x5})["logits:int"])
    with pytest.raises(CompilerError, match="replicate = 0"):
        compile_model(path, cfg, calibration={"input": x}, replicate=0)


def _save_graph(path, nodes, inits, in_shape, out_shape):
    """An opset-17 model from ``nodes`` reading ``input`` and writing ``logits``, saved."""
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, list(in_shape))], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, list(out_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _eight_convs(path, rng, add_after: int | None = None):
    """Eight 1x1 convs (3 -> 8 -> ... -> 8 channels on a 6x6 map), optionally an Add of a
    conv's output with itself (a VFU layer) after conv ``add_after``."""
    from onnx import helper, numpy_helper
    nodes, inits, x = [], [], "input"
    for k in range(8):
        cin = 3 if k == 0 else 8
        inits.append(numpy_helper.from_array(
            rng.standard_normal((8, cin, 1, 1)).astype(np.float32), f"w{k}"))
        out = "logits" if k == 7 else f"c{k}"
        nodes.append(helper.make_node("Conv", [x, f"w{k}"], [out]))
        x = out
        if k == add_after:
            nodes.append(helper.make_node("Add", [x, x], ["twice"]))
            x = "twice"
    return _save_graph(path, nodes, inits, (1, 3, 6, 6), (1, 8, 6, 6))


def test_copies_never_make_a_model_that_fits_too_big(tmp_path):
    # eight 1x1 convs fill the small machine's 4 tiles of 2 cores: no room for copies, so
    # replicate gives them up instead of refusing the model
    rng = np.random.default_rng(6)
    path = _eight_convs(tmp_path / "convs.onnx", rng)
    xs = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none"])
    p1 = compile_model(path, cfg, calibration={"input": xs})
    p2 = compile_model(path, cfg, calibration={"input": xs}, replicate=2)
    assert p2.n_tiles <= cfg.node.tiles
    np.testing.assert_array_equal(simulate(p2, {"input": xs}).outputs["logits:int"],
                                  simulate(p1, {"input": xs}).outputs["logits:int"])


def test_vfu_layers_get_a_core_of_their_own(exported):
    # LeNet's pools used to take the idle core the next conv then also took: the conv
    # waited for each pool's whole pixel loop. Own cores: same outputs, >= 10 % faster.
    from compiler.codegen import generate
    from compiler.partition import partition
    from compiler.pipeline import mapping_summary
    from compiler.place import _place, place
    path, shape = exported("lenet5", {})
    x = np.random.default_rng(8).random((2,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none"])
    _, lp, _ = compile_model(path, cfg, calibration={"input": x}, return_ir=True)
    reports = []
    for own in (True, False):
        strips = partition(lp, cfg)
        pl = place(lp, strips, cfg) if own else _place(lp, strips, cfg, 1, own_cores=False)
        mvm_cores = {b.loc[:2] for b in pl.all_blocks()}
        assert len(pl.vfu_core) == 2 and pl.vfu_cores == ("own" if own else "shared")
        assert bool(set(pl.vfu_core.values()) & mvm_cores) != own, (own, pl.vfu_core)
        if own:
            assert pl.vfu_sharing == []           # both pools found an idle core
        reports.append(simulate(generate(lp, pl, cfg, mapping_summary(lp, strips, pl, cfg)),
                                {"input": x}))
    np.testing.assert_array_equal(reports[0].outputs["logits:int"],
                                  reports[1].outputs["logits:int"])
    assert reports[0].latency_cycles < 0.9 * reports[1].latency_cycles


def test_a_pool_does_not_take_a_bias_only_layers_core(tmp_path):
    # a conv whose weights are all zero holds no crossbar but reduces its bias on a core;
    # the pool after it used to see that core as idle and share it
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(10)
    w = {"w0": rng.standard_normal((4, 1, 3, 3)), "w1": np.zeros((4, 4, 3, 3)),
         "b1": rng.standard_normal(4), "w2": rng.standard_normal((4, 4, 3, 3))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Conv", ["c0", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["logits"], pads=[1] * 4)]
    _save_graph(tmp_path / "b.onnx", nodes, inits, (1, 1, 8, 8), (1, 4, 4, 4))
    xs = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    prog, lp, _ = compile_model(tmp_path / "b.onnx", load_config("puma", ["adc.bits=none"]),
                                calibration={"input": xs}, return_ir=True)
    assert prog.mapping["vfu_layers_sharing"] == 0
    assert len(prog.cores_used()) == 4                       # 3 convs + the pool
    np.testing.assert_array_equal(simulate(prog, {"input": xs}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": xs})["logits:int"])
    # copies of it would share no crossbar, only take cores (found by review)
    rep = compile_model(tmp_path / "b.onnx", load_config("puma", ["adc.bits=none"]),
                        calibration={"input": xs}, replicate=8)
    copies = {L["layer"]: L["copies"] for L in rep.mapping["layers"]}
    assert copies[lp.layers[1].name] == 1 and max(copies.values()) > 1
    np.testing.assert_array_equal(simulate(rep, {"input": xs}).outputs["logits:int"],
                                  simulate(prog, {"input": xs}).outputs["logits:int"])


def test_a_pool_with_no_idle_core_on_its_tile_takes_the_next_fresh_core(tmp_path):
    # small: 2 cores a tile. The two convs fill tile 0, so the pool cannot have a core of
    # its own there: it takes the next fresh core (tile 1), and the last conv the one after
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(11)
    w = {"w0": rng.standard_normal((4, 1, 3, 3)), "w1": rng.standard_normal((4, 4, 1, 1)),
         "w2": rng.standard_normal((4, 4, 1, 1))}          # one 16 x 16 crossbar each
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Conv", ["c0", "w1"], ["c1"]),
             helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["logits"])]
    _save_graph(tmp_path / "f.onnx", nodes, inits, (1, 1, 8, 8), (1, 4, 4, 4))
    xs = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none"])
    prog, lp, _ = compile_model(tmp_path / "f.onnx", cfg, calibration={"input": xs},
                                return_ir=True)
    assert prog.mapping["vfu_layers_sharing"] == 0
    mvm_cores = sorted({(int(t), int(c)) for t, c, _ in prog.mvmu_loc})
    assert mvm_cores == [(0, 0), (0, 1), (1, 1)]
    assert sorted(prog.cores_used()) == [(0, 0), (0, 1), (1, 0), (1, 1)]   # the pool: (1, 0)
    np.testing.assert_array_equal(simulate(prog, {"input": xs}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": xs})["logits:int"])


def test_where_fresh_cores_do_not_fit_a_vfu_layer_shares_a_core_by_its_input(tmp_path):
    # conv, conv (tile 0 full), pool, conv, conv on a 2-tile small node: the pool's fresh
    # core would push the last conv onto a third tile, so the pool shares a core on tile 0
    # (counted), and the rest keep cores of their own; no fallback to "shared", no warning
    import warnings

    from onnx import helper, numpy_helper
    rng = np.random.default_rng(12)
    w = {"w0": rng.standard_normal((4, 1, 3, 3))} | {
        f"w{k}": rng.standard_normal((4, 4, 1, 1)) for k in (1, 2, 3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1] * 4),
             helper.make_node("Conv", ["c0", "w1"], ["c1"]),
             helper.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["c2"]),
             helper.make_node("Conv", ["c2", "w3"], ["logits"])]
    _save_graph(tmp_path / "g.onnx", nodes, inits, (1, 1, 8, 8), (1, 4, 4, 4))
    xs = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "node.tiles=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prog, lp, _ = compile_model(tmp_path / "g.onnx", cfg, calibration={"input": xs},
                                    return_ir=True)
    assert prog.mapping["vfu_cores"] == "own" and prog.mapping["vfu_layers_sharing"] == 1
    assert prog.n_tiles == 2
    np.testing.assert_array_equal(simulate(prog, {"input": xs}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": xs})["logits:int"])


def test_a_placement_retry_forgets_the_failed_attempt(tmp_path):
    # own cores do not fit the small machine here, so placement falls back to shared; the
    # retry saw the failed attempt's crossbar locations as taken cores and put the VFU
    # layers elsewhere than compiling with shared directly does (3 cycles apart)
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array(rng.standard_normal(sh).astype(np.float32) / 4, k)
             for k, sh in (("w4", (6, 18, 3, 3)), ("w6", (7, 6, 1, 1)))]
    nodes = [helper.make_node("Relu", ["input"], ["t1"]),
             helper.make_node("Relu", ["t1"], ["t2"]),
             helper.make_node("Sigmoid", ["t2"], ["t3"]),
             helper.make_node("Conv", ["t3", "w4"], ["t4"], pads=[1] * 4),
             helper.make_node("Relu", ["t4"], ["t5"]),
             helper.make_node("Conv", ["t5", "w6"], ["logits"])]
    _save_graph(tmp_path / "retry.onnx", nodes, inits, (1, 18, 8, 8), (1, 7, 8, 8))
    xs = rng.standard_normal((2, 18, 8, 8)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "node.tiles=4"])
    with pytest.warns(UserWarning, match="vfu_cores = own"):
        own = compile_model(tmp_path / "retry.onnx", cfg, calibration={"input": xs},
                            replicate=4)
    shared = compile_model(tmp_path / "retry.onnx", cfg, calibration={"input": xs},
                           replicate=4, vfu_cores="shared")
    assert own.mapping["vfu_cores"] == "shared"
    for a, b in zip(own.core_code, shared.core_code):
        np.testing.assert_array_equal(a, b)


def test_a_tile_that_only_sends_partial_sums_holds_no_output_buffer(tmp_path):
    # a 1x1 conv over 100 channels spans two tiles of the small machine; the second only
    # sends partial sums, yet got a 4096-word copy of the output nothing read or wrote
    # (counted in the eDRAM figures: 280 of a vgg8's tiles "over eDRAM" instead of 66)
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(12)
    w = numpy_helper.from_array((rng.standard_normal((16, 100, 1, 1)) / 10).astype(
        np.float32), "w")
    _save_graph(tmp_path / "wide.onnx", [helper.make_node("Conv", ["input", "w"], ["logits"])],
                [w], (1, 100, 16, 16), (1, 16, 16, 16))
    xs = rng.standard_normal((2, 100, 16, 16)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "node.tiles=16"])
    prog, lp, _ = compile_model(tmp_path / "wide.onnx", cfg, calibration={"input": xs},
                                return_ir=True)
    x_words, y_words = lp.tensors["input"].words, lp.tensors["logits"].words
    assert sorted(prog.mem_words.tolist())[0] < x_words + y_words    # the sending tile
    assert sorted(prog.mem_words.tolist())[-1] >= x_words + y_words  # the owner
    np.testing.assert_array_equal(simulate(prog, {"input": xs}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": xs})["logits:int"])


def test_vfu_layers_share_cores_when_the_node_is_full(tmp_path):
    # eight 1x1 convs fill the small machine's 8 cores; the Add after the third takes the
    # idle core beside it, which leaves the last conv none: placement shares cores again
    # instead of refusing the model (with a warning)
    rng = np.random.default_rng(9)
    path = _eight_convs(tmp_path / "convs.onnx", rng, add_after=2)
    xs = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none"])
    with pytest.warns(UserWarning, match="vfu_cores = own: VFU layers share cores"):
        prog, lp, _ = compile_model(path, cfg, calibration={"input": xs}, return_ir=True)
    assert len(prog.cores_used()) == 8 and prog.mapping["vfu_cores"] == "shared"
    np.testing.assert_array_equal(simulate(prog, {"input": xs}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": xs})["logits:int"])


def test_copies_leave_other_mvmus_noise_draws_alone(exported):
    # device randomness is keyed by (layer, index in layer): copies added to the first conv
    # keep every other MVMU's key, cells and so its programming-variation draw
    from simulator.noise import conductances
    path, shape = exported("lenet5", {})
    x = np.random.default_rng(7).random((1,) + tuple(shape[1:])).astype(np.float32)
    cfg = load_config("puma", ["noise.program_sigma=0.05"])
    p1 = compile_model(path, cfg, calibration={"input": x})
    p4 = compile_model(path, cfg, calibration={"input": x}, replicate=4)
    g1 = {k: conductances(lv, cfg, k) for k, lv in zip(p1.device_keys(), p1.mvmu_levels)}
    g4 = {k: conductances(lv, cfg, k) for k, lv in zip(p4.device_keys(), p4.mvmu_levels)}
    assert set(g1) < set(g4)
    for k, g in g1.items():
        np.testing.assert_array_equal(g4[k], g)


def _identity_matmul(path):
    from onnx import helper, numpy_helper
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    return _save_graph(path, [helper.make_node("MatMul", ["input", "w"], ["logits"])], [w],
                       (1, 4), (1, 4))


def test_arguments_of_the_wrong_kind_are_one_line_compiler_errors(tmp_path):
    """A model given as 5 or bytes was an AttributeError, calibration as a list numpy's
    "truth value of an array is ambiguous"."""
    from compiler import CompilerError
    for model, kind in ((5, "int"), (b"onnx", "bytes")):
        with pytest.raises(CompilerError, match=f"^model: a path to an .onnx file or an "
                                                f"onnx.ModelProto, got {kind}$"):
            compile_model(model, "small")
    path = _identity_matmul(tmp_path / "mm.onnx")
    with pytest.raises(CompilerError, match=r"^calibration: a dict of graph input name -> "
                                            r"inputs .*; got list$"):
        compile_model(path, "small", calibration=[np.ones((2, 4), np.float32)])


def test_report_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """Report.plot called matplotlib.use("Agg"): a notebook's inline figures went off for
    the rest of the session."""
    import matplotlib
    import matplotlib.pyplot as plt
    path = _identity_matmul(tmp_path / "mm.onnx")
    report = simulate(compile_model(path, "small"))
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert [p.name for p in report.plot(tmp_path / "plots")] == [
            "energy_breakdown.png", "layer_latency.png", "layer_costs.png"]
        assert matplotlib.get_backend() == "svg" and not plt.get_fignums()   # none left open
    finally:
        matplotlib.use(before)


def test_a_layer_on_several_tiles_sends_its_output_only_to_tiles_that_read_it(tmp_path):
    # MatMul 16 -> 80 spans tiles 0 and 1 of the small machine, and the next MatMul reads
    # it on tile 1 only; tile 1 used to send its chunks to tile 0 as well, on every input,
    # where nothing read them (extra packets, NoC energy and control-unit time)
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
              for s, n in (((16, 80), "w1"), ((80, 4), "w2")))
    _save_graph(tmp_path / "wide.onnx", [
        helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"])], [w1, w2], (1, 16), (1, 4))
    x = rng.standard_normal((4, 16)).astype(np.float32)
    prog, lp, _ = compile_model(tmp_path / "wide.onnx", load_config("small", ["node.tiles=8"]),
                                calibration={"input": x}, return_ir=True)
    tiles = {L["layer"]: set(L["tiles"]) for L in prog.mapping["layers"]}
    first, second = (L["layer"] for L in prog.mapping["layers"])
    assert len(tiles[first]) == 2 and not tiles[first] <= tiles[second]
    names = [L["name"] for L in prog.layers]
    for t, code in zip(prog.control_tiles.tolist(), prog.tile_code):
        for r in code[code["op"] == int(Op.SEND)]:
            if names[int(r["layer"])] == first:
                assert int(r["peer"]) in tiles[second], (t, int(r["peer"]))
    np.testing.assert_array_equal(simulate(prog, {"input": x}).outputs["logits:int"],
                                  run_integer_reference(lp, {"input": x})["logits:int"])


def test_the_report_gives_the_share_of_cells_holding_weights(tmp_path):
    # design.md's report lists utilization; only the compiler's mapping held it
    import json
    prog = compile_model(_identity_matmul(tmp_path / "id.onnx"), load_config("small"))
    rep = simulate(prog, values=False)
    assert 0 < rep.utilization <= 1 and rep.utilization == prog.mapping["utilization"]
    assert json.loads(rep.to_json())["utilization"] == rep.utilization


def test_the_tiles_a_too_big_error_asks_for_are_exactly_enough_for_own_cores():
    # past the node, placement folded the extra slots onto tile 0, where later VFU layers
    # found idle cores they would not have had: the count came out one tile short (67 of
    # 68 for LeNet-5 on the small machine), and with that many tiles the pools lost their
    # own cores
    import re
    import warnings

    from compiler import ModelTooBigError
    x = models.load_demo_images(8)[0].astype(np.float32)
    path = str(models.pretrained_path("lenet5_fmnist"))
    with pytest.raises(ModelTooBigError) as e:
        compile_model(path, load_config("small", ["node.tiles=3"]), calibration={"input": x})
    own = int(re.search(r"\((\d+) for VFU layers on cores of their own", str(e.value))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prog = compile_model(path, load_config("small", [f"node.tiles={own}"]),
                             calibration={"input": x})
    assert prog.mapping["vfu_cores"] == "own" and prog.mapping["vfu_layers_sharing"] == 0
    short = compile_model(path, load_config("small", [f"node.tiles={own - 1}"]),
                          calibration={"input": x}).mapping
    assert short["vfu_cores"] == "shared" or short["vfu_layers_sharing"] > 0
