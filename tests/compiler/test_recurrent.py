"""LSTM, GRU and RNN: one recurrent crossbar layer with a time loop in the program. The simulated
outputs equal the integer reference bit for bit and onnxruntime within 1e-2; the program does
not grow with the sequence; multi-core / multi-tile mappings are exact too; unsupported
variants are refused with the reason."""
import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import compile_model
from compiler.errors import CompilerError, UnsupportedOpError
from compiler.reference import run_integer_reference, run_onnxruntime
from simulator import load_config, simulate

torch = pytest.importorskip("torch")
import models


def _check(model, x, cfg, outputs, tol=1e-2):
    """Compile, simulate; bit-exact against the integer reference, close to onnxruntime."""
    name = "input" if "input" in x else next(iter(x))
    prog, lp, _ = compile_model(model, cfg, calibration={name: x[name]}, return_ir=True)
    rep = simulate(prog, x)
    ref = run_integer_reference(lp, x)
    ort = run_onnxruntime(model, x)
    for o in outputs:
        np.testing.assert_array_equal(rep.outputs[o + ":int"], ref[o + ":int"])
        rel = np.linalg.norm(rep.outputs[o] - ort[o]) / np.linalg.norm(ort[o])
        assert rel <= tol, (o, rel)
    return prog, rep


@pytest.fixture(scope="module")
def zoo_rnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("rnn")
    return lambda cell, **kw: models.export(cell, root / f"{cell}_{len(kw)}_{kw}.onnx", seed=0,
                                            **kw)


CELLS = ["lstm", "gru", "rnn"]
GATE_COLUMNS = {"lstm": 4, "gru": 4, "rnn": 1}   # crossbar columns per hidden unit


@pytest.fixture(params=CELLS)
def zoo_seq(request, zoo_rnn):
    """The zoo's sequence classifier, each cell in turn (``cell``: its ONNX op)."""
    make = lambda **kw: zoo_rnn(request.param, **kw)  # noqa: E731
    make.cell = request.param.upper()
    return make


def test_zoo_model_matches_reference_and_onnxruntime(zoo_seq):
    path = zoo_seq()                                   # 28 steps x 28 features, hidden 64
    x = np.random.default_rng(1).random((3, 28, 28)).astype(np.float32)
    prog, rep = _check(path, {"input": x}, load_config("puma", ["adc.bits=none"]), ["logits"])
    layer = prog.mapping["layers"][0]
    # 92 rows x 256 columns (an RNN: 64), on 128 x 128 crossbars
    assert layer["op"] == zoo_seq.cell
    assert layer["mvmus"] == -(-64 * GATE_COLUMNS[zoo_seq.cell.lower()] // 128)
    assert rep.latency_cycles > 0


def test_stacked_layers_pipeline_as_a_wavefront(zoo_seq):
    # Layer 2 reads layer 1's h_t from tile memory as soon as it is stored, so two layers
    # take about one step longer than one, not twice as long.
    one, two = zoo_seq(seq_len=8), zoo_seq(seq_len=8, num_layers=2)
    x = np.random.default_rng(4).random((2, 8, 28)).astype(np.float32)
    _check(two, {"input": x}, load_config("puma", ["adc.bits=none"]), ["logits"])
    cycles = [simulate(compile_model(p, "puma", calibration={"input": x}),
                       {"input": x[:1]}).latency_cycles for p in (one, two)]
    assert cycles[1] < 1.3 * cycles[0], cycles


def test_stacked_bidirectional_zoo_model(zoo_seq):
    # Layer 2 reads both directions of layer 1 (Y reshaped to (T, 1, 2H) by the export);
    # the classifier reads the last step of both.
    path = zoo_seq(seq_len=6, num_layers=2, bidirectional=True)
    x = np.random.default_rng(6).random((2, 6, 28)).astype(np.float32)
    prog, _ = _check(path, {"input": x}, load_config("puma", ["adc.bits=none"]), ["logits"])
    assert [la["op"] for la in prog.mapping["layers"]].count(zoo_seq.cell) == 4


def test_zoo_model_on_the_puma_preset_with_its_8bit_adc(zoo_seq):
    path = zoo_seq()
    x = np.random.default_rng(2).random((2, 28, 28)).astype(np.float32)
    prog = compile_model(path, "puma", calibration={"input": x})
    out = simulate(prog, {"input": x}).outputs["logits"]
    ort = run_onnxruntime(path, {"input": x})["logits"]
    assert np.linalg.norm(out - ort) / np.linalg.norm(ort) <= 1e-2


def test_program_size_does_not_grow_with_the_sequence(zoo_seq):
    cfg = load_config("puma")
    n4 = compile_model(zoo_seq(seq_len=4), cfg).n_instructions
    n16 = compile_model(zoo_seq(seq_len=16), cfg).n_instructions
    assert n4 == n16


def _torch_rnn(cell="lstm", T=7, I=12, H=20, bidirectional=False, batch=1):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
                        "rnn": torch.nn.RNN}[cell](I, H, batch_first=True,
                                                   bidirectional=bidirectional)

        def forward(self, x):
            out, h = self.rnn(x)
            h = h[0] if cell == "lstm" else h
            return out, h.transpose(0, 1)            # (directions, B, H) -> batch first

    return _exported(Net, (batch, T, I), ["y", "h"])


def _exported(net_class, shape, outputs):
    """A seeded ``net_class()`` exported at opset 17 with input ``x``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = net_class().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(*shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=outputs)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_export_outputs_y_and_y_h(cell, bidirectional):
    # bidirectional: Y (T, 2, 1, H) interleaves the two directions' sequences, Y_h their
    # last steps (the reverse direction's is at t = 0); torch reshapes Y to (1, T, 2H).
    model = _torch_rnn(cell, bidirectional=bidirectional)
    x = np.random.default_rng(0).standard_normal((3, 7, 12)).astype(np.float32)
    prog, _ = _check(model, {"x": x}, load_config("puma", ["adc.bits=none"]), ["y", "h"])
    ops = [layer["op"] for layer in prog.mapping["layers"]]
    assert ops.count(cell.upper()) == 1 + bidirectional


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("cell", CELLS)
def test_strips_across_cores_and_tiles_are_exact(cell, bidirectional):
    # 1 MVMU per core and 1 core per tile: every block on its own tile, so partial sums,
    # gate activations and h_t all cross the NoC every step (in both directions at once).
    model = _torch_rnn(cell, T=5, I=10, H=12, bidirectional=bidirectional)
    x = np.random.default_rng(3).standard_normal((2, 5, 10)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "weight_bits=16", "input_bits=16",
                                "node.tiles=32", "core.mvmus=1", "tile.cores=1"])
    prog, _ = _check(model, {"x": x}, cfg, ["y", "h"])
    # 22 rows x 48 columns (an RNN: 12) on 16 x 16 crossbars, per direction
    layers = [la for la in prog.mapping["layers"] if la["op"] == cell.upper()]
    assert [len(la["tiles"]) for la in layers] == [2 * -(-12 * GATE_COLUMNS[cell] // 16)] * (
        1 + bidirectional)


def test_h_goes_only_to_tiles_that_read_it():
    # 40 x rows + 12 h rows on 16-row crossbars, a block per tile: the blocks of rows 0-31
    # read x alone, so of the 12 tiles only the 6 holding h rows (40-51) need h_{t-1}, and
    # the tile of the copy that reads Y for h_n; h_t was sent to all 11 besides the home
    # tile, and that one
    from simulator.isa import Op
    model = _torch_rnn("lstm", T=4, I=40, H=12)
    x = np.random.default_rng(5).standard_normal((2, 4, 40)).astype(np.float32)
    cfg = load_config("small", ["adc.bits=none", "weight_bits=16", "input_bits=16",
                                "node.tiles=64", "core.mvmus=1", "tile.cores=1"])
    prog, _ = _check(model, {"x": x}, cfg, ["y", "h"])
    lstm = next(k for k, la in enumerate(prog.layers) if la["op"] == "LSTM")
    assert len(next(la for la in prog.mapping["layers"] if la["op"] == "LSTM")["tiles"]) == 12
    h_receivers = {int(t) for t, code in zip(prog.control_tiles, prog.tile_code)
                   if ((code["op"] == int(Op.RECV)) & (code["count"] == 0)
                       & (code["layer"] == lstm)).any()}
    assert len(h_receivers) == 7, h_receivers


def _hand_lstm(H=8, I=6, T=5, attrs=None, P=None, seq=None, outputs=("yb", "yh"),
               time_major_input=False, two=False, h0=None, c0=None):
    """Batch-first graph input -> Transpose -> LSTM with initial states (no bias) ->
    Y transposed batch-first (``yb``), Y_h, Y_c. ``two``: weights for two directions.
    ``time_major_input``: True feeds the graph input itself, "relu" through a Relu.
    ``h0``/``c0``: a constant initial state instead of random ones."""
    rng = np.random.default_rng(0)
    D = 2 if two else 1
    arr = {"W": rng.standard_normal((D, 4 * H, I)) * 0.4,
           "R": rng.standard_normal((D, 4 * H, H)) * 0.4,
           "h0": rng.uniform(-0.5, 0.5, (D, 1, H)) if h0 is None else np.full((D, 1, H), h0),
           "c0": rng.uniform(-1, 1, (D, 1, H)) if c0 is None else np.full((D, 1, H), c0)}
    ins = ["xt", "W", "R", "", "", "h0", "c0"]
    if seq is not None:
        arr["seq"], ins[4] = np.array([seq], np.int32), "seq"
    if P is not None:
        arr["P"] = P
        ins.append("P")
    inits = [numpy_helper.from_array(np.asarray(v, np.int32 if k == "seq" else np.float32), k)
             for k, v in arr.items()]
    nodes = [helper.make_node("LSTM", ins, ["y", "yh", "yc"], hidden_size=H, **(attrs or {}))]
    if time_major_input:
        nodes[0].input[0] = "x"
        if time_major_input == "relu":
            nodes[0].input[0] = "xr"
            nodes.insert(0, helper.make_node("Relu", ["x"], ["xr"]))
        x_shape = [T, 1, I]
    else:
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]))
        x_shape = [1, T, I]
    nodes.append(helper.make_node("Transpose", ["y"], ["yb"], perm=[2, 0, 1, 3]))
    out_shapes = {"y": [T, D, 1, H], "yb": [1, T, D, H], "yh": [D, 1, H], "yc": [D, 1, H]}
    g = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        x_shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shapes[o])
                           for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_initial_states_and_no_bias():
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    _check(_hand_lstm(), {"x": x}, load_config("puma", ["adc.bits=none"]), ["yb", "yh"])


def test_reverse_direction_runs_from_the_last_step():
    # Y_h of a reverse LSTM is h at t = 0; its initial state enters at t = T - 1.
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    model = _hand_lstm(attrs={"direction": "reverse"})
    _, rep = _check(model, {"x": x}, load_config("puma", ["adc.bits=none"]), ["yb", "yh"])
    fwd = run_onnxruntime(_hand_lstm(), {"x": x})
    assert np.abs(rep.outputs["yh"] - fwd["yh"]).max() > 0.1      # not the forward run


@pytest.mark.parametrize("kw,match", [
    ({"attrs": {"activations": ["Sigmoid", "Tanh", "Relu"]}}, "activations"),
    ({"attrs": {"clip": 3.0}}, "clip"),
    ({"P": np.full((1, 24), 0.1)}, "peephole"),
    ({"seq": 3}, "sequence_lens"),
    ({"outputs": ("yb", "yc")}, "Y_c"),
    ({"outputs": ("y",)}, "time-major"),
    ({"attrs": {"direction": "bidirectional"}, "outputs": ("yb", "yh"), "two": True},
     "direction-major"),
    ({"time_major_input": True}, "time-major"),
    ({"time_major_input": "relu"}, "reads graph input 'x' time-major"),   # was 1 step
    ({"h0": 2.5}, r"initial_h reaches 2.5.*\|initial_h\| <= 1"),     # was clipped to 1
    ({"c0": 70.0}, r"initial_c reaches 70.*< 64"),                    # was clipped to 64
])
def test_unsupported_variants_are_refused(kw, match):
    model = _hand_lstm(**kw)
    with pytest.raises(UnsupportedOpError, match=match):
        compile_model(model, "puma")


def _hand_cell(op="GRU", H=8, I=6, T=5, attrs=None, gain=1.0):
    """Batch-first graph input -> Transpose -> GRU or RNN with biases (a GRU's recurrent
    candidate bias Rb_h apart from Wb_h, which linear_before_reset tells apart) and an
    initial state -> Y transposed batch-first (``yb``) and Y_h."""
    gates = {"GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(0)
    arr = {"W": rng.standard_normal((1, gates * H, I)) * 0.4 * gain,
           "R": rng.standard_normal((1, gates * H, H)) * 0.4 * gain,
           "B": rng.standard_normal((1, 2 * gates * H)) * 0.5,
           "h0": rng.uniform(-0.8, 0.8, (1, 1, H))}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arr.items()]
    defaults = {"linear_before_reset": 1} if op == "GRU" else {}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node(op, ["xt", "W", "R", "B", "", "h0"], ["y", "yh"],
                              hidden_size=H, **(defaults | (attrs or {}))),
             helper.make_node("Transpose", ["y"], ["yb"], perm=[2, 0, 1, 3])]
    g = helper.make_graph(nodes, op.lower(),
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, I])],
                          [helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, T, 1, H]),
                           helper.make_tensor_value_info("yh", TensorProto.FLOAT, [1, 1, H])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _hand_gru(**kw):
    return _hand_cell("GRU", **kw)


def test_gru_initial_state_and_both_candidate_biases():
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    _check(_hand_gru(), {"x": x}, load_config("puma", ["adc.bits=none"]), ["yb", "yh"])


def test_gru_on_narrow_words_stays_close():
    # 8-bit words: gates at 4 fraction bits, h at 7; the recurrence must not drift away.
    x = np.random.default_rng(2).standard_normal((2, 5, 6)).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none", "input_bits=8", "weight_bits=8"])
    _check(_hand_gru(), {"x": x}, cfg, ["yb", "yh"], tol=0.1)


def test_gru_candidate_parts_keep_their_range():
    # a_x and a_h of opposite sign, each far past the gates' +-8, add up to where tanh is
    # not saturated: clipped to the gates' range first, they were 8 % (x10) to 33 % (x20)
    # off onnxruntime; with their own integer bits they are within 1 %.
    x = np.random.default_rng(1).standard_normal((3, 3, 3)).astype(np.float32)
    for gain in (10.0, 20.0):
        _check(_hand_gru(H=4, I=3, T=3, gain=gain), {"x": x},
               load_config("puma", ["adc.bits=none"]), ["yb", "yh"], tol=1e-2)


def test_gru_needs_seven_bit_words():
    cfg = load_config("puma", ["input_bits=6", "weight_bits=6", "dac.bits=1"])
    with pytest.raises(UnsupportedOpError, match="GRU needs input_bits >= 7"):
        compile_model(_hand_gru(), cfg)


@pytest.mark.parametrize("attrs,match", [
    ({"linear_before_reset": 0}, "linear_before_reset=0"),
    ({"activations": ["Sigmoid", "Relu"]}, "activations"),
    ({"clip": 3.0}, "clip"),
])
def test_unsupported_gru_variants_are_refused(attrs, match):
    with pytest.raises(UnsupportedOpError, match=match):
        compile_model(_hand_gru(attrs=attrs), "puma")


def test_rnn_initial_state_and_biases():
    x = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    _check(_hand_cell("RNN"), {"x": x}, load_config("puma", ["adc.bits=none"]), ["yb", "yh"])


def test_rnn_on_narrow_words_keeps_h_at_its_own_precision():
    # 8-bit words: the pre-activation at 5 fraction bits, tanh evaluated at h's 7: 1.9 % off
    # onnxruntime here (tanh at the pre-activation's 5 bits, then shifted: 2.4-2.5 %).
    x = np.random.default_rng(2).standard_normal((2, 5, 6)).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none", "input_bits=8", "weight_bits=8"])
    _check(_hand_cell("RNN"), {"x": x}, cfg, ["yb", "yh"], tol=0.03)


def test_rnn_needs_four_bit_words():
    cfg = load_config("puma", ["input_bits=3", "weight_bits=3", "dac.bits=1"])
    with pytest.raises(UnsupportedOpError, match="RNN needs input_bits >= 4"):
        compile_model(_hand_cell("RNN"), cfg)


@pytest.mark.parametrize("attrs,match", [
    ({"activations": ["Relu"]}, "activations"),
    ({"clip": 3.0}, "clip"),
])
def test_unsupported_rnn_variants_are_refused(attrs, match):
    with pytest.raises(UnsupportedOpError, match=match):
        compile_model(_hand_cell("RNN", attrs=attrs), "puma")


@pytest.mark.parametrize("op", ["GRU", "RNN"])
def test_reverse_gru_and_rnn(op):
    x = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float32)
    _check(_hand_cell(op, attrs={"direction": "reverse"}), {"x": x},
           load_config("puma", ["adc.bits=none"]), ["yb", "yh"])


def test_weights_for_fewer_directions_than_declared_is_one_line_error():
    # onnxruntime refuses it at run time (during calibration): a CompilerError naming the
    # node and the shapes, not a traceback from onnxruntime.
    with pytest.raises(CompilerError, match=r"onnxruntime failed on the model during "
                                            r"calibration: .*LSTM"):
        compile_model(_hand_lstm(attrs={"direction": "bidirectional"}), "puma")


def _hand_bidirectional(op, H=6, I=5, T=4, gains=(1.0, 1.0)):
    """Bidirectional ``op`` with biases and a different initial state (and LSTM cell
    state) per direction, direction d's weights scaled by ``gains[d]``; outputs batch
    first: Y as (1, T, 2, H) (``yb``), Y_h as (1, 2, H) (``yhb``)."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(7)
    g = np.asarray(gains)[:, None, None]
    arr = {"W": rng.standard_normal((2, gates * H, I)) * 0.4 * g,
           "R": rng.standard_normal((2, gates * H, H)) * 0.4 * g,
           "B": rng.standard_normal((2, 2 * gates * H)) * 0.5,
           "h0": rng.uniform(-0.8, 0.8, (2, 1, H))}
    ins = ["xt", "W", "R", "B", "", "h0"]
    if op == "LSTM":
        arr["c0"] = rng.uniform(-1, 1, (2, 1, H))
        ins.append("c0")
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arr.items()]
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node(op, ins, ["y", "yh"], hidden_size=H, direction="bidirectional",
                              **extra),
             helper.make_node("Transpose", ["y"], ["yb"], perm=[2, 0, 1, 3]),
             helper.make_node("Transpose", ["yh"], ["yhb"], perm=[1, 0, 2])]
    graph = helper.make_graph(
        nodes, "bi", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, I])],
        [helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, T, 2, H]),
         helper.make_tensor_value_info("yhb", TensorProto.FLOAT, [1, 2, H])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("T", [4, 1])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_bidirectional_states_and_formats_are_per_direction(op, T):
    # Each direction starts from its own h0 (and c0), and a GRU's directions get their own
    # candidate range (weights x1 and x10). Each direction's slice of Y and Y_h is checked
    # on its own, so an error confined to one direction cannot hide in the other's norm.
    model = _hand_bidirectional(op, T=T, gains=(1.0, 10.0 if op == "GRU" else 1.0))
    x = np.random.default_rng(8).standard_normal((2, T, 5)).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none"])
    _, rep = _check(model, {"x": x}, cfg, ["yb", "yhb"])
    ort = run_onnxruntime(model, {"x": x})
    for name, axis in (("yb", 2), ("yhb", 1)):
        for d in range(2):
            got, want = (np.take(v[name], d, axis=axis) for v in (rep.outputs, ort))
            assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-2, (name, d)
    if op == "GRU":
        lp = compile_model(model, cfg, calibration={"x": x}, return_ir=True)[1]
        fx = [la.fmt.fx for la in lp.layers if la.op == "GRU"]
        assert fx[0] != fx[1], fx


@pytest.mark.parametrize("cell", CELLS)
def test_an_initial_state_built_at_another_batch_is_refused_by_name(cell):
    """torch builds the zero initial state at the export batch: exported at batch 2 it no
    longer fits one sample, and onnxruntime failed during calibration with its own log."""
    model = _torch_rnn(cell, batch=2)
    with pytest.warns(UserWarning, match="static batch of 2"), \
            pytest.raises(UnsupportedOpError, match=rf"{cell.upper()} node .*: its constant "
                                                    r"initial_h holds a batch of 2"):
        compile_model(model, load_config("puma"))


def test_h_n_of_a_stacked_rnn_is_refused_naming_its_axis():
    """torch concatenates the two layers' Y_h on axis 0; it was refused as 'the batch
    axis', which the model's batch is not."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(12, 20, num_layers=2, batch_first=True)
            self.fc = torch.nn.Linear(20, 4)

        def forward(self, x):
            return self.fc(self.rnn(x)[1][-1])
    with pytest.raises(UnsupportedOpError, match="layers/directions axis"):
        compile_model(_exported(Net, (1, 5, 12), ["y"]), load_config("puma"))


def test_stages_in_opposite_directions_with_a_one_message_buffer():
    # partial sums flow one way between tiles and h_t copies the other: a cycle only across
    # stages, which run one after the other, so no deadlock (a check merging the stages
    # refused this program)
    model = _torch_rnn("lstm", T=3, I=8, H=129)
    x = np.random.default_rng(6).standard_normal((1, 3, 8)).astype(np.float32)
    cfg = load_config("puma", ["adc.bits=none", "tile.cores=1", "core.mvmus=1",
                               "tile.recv_buffer=1"])
    prog, _ = _check(model, {"x": x}, cfg, ["y", "h"])
    assert prog.n_tiles > 1


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_wide_words_do_not_wrap_the_gate_product(op):
    # 24-bit words, 128 inputs all at full scale: (acc + bias) * mult passed 2**63 and
    # wrapped to the other sign (h came out near 0 or negative where onnxruntime saturates
    # at +1). The sum is now shifted first by what int64 lacks, as MVM layers do.
    I, H, T = 128, 8, 3
    m = _hand_lstm(H=H, I=I, T=T) if op == "LSTM" else _hand_cell(op, H=H, I=I, T=T)
    for init in m.graph.initializer:
        if init.name in ("W", "R"):
            init.CopyFrom(numpy_helper.from_array(
                np.full(numpy_helper.to_array(init).shape, 0.05, np.float32), init.name))
    x = np.ones((1, T, I), np.float32)
    cfg = load_config("puma", ["adc.bits=none", "input_bits=24", "weight_bits=22"])
    _check(m, {"x": x}, cfg, ["yb", "yh"])


def test_unbatched_torch_lstm_is_refused_not_cut_to_one_step():
    # torch exports nn.LSTM on an unbatched (seq, features) input as Unsqueeze(axes=[1]) ->
    # LSTM: the graph input's first axis (taken as the batch) is the sequence. The walk
    # stopped at the Unsqueeze, so the LSTM ran 1 step and returned 6 wrong rows.
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.LSTM(4, 5), torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[1][0])

    m = _exported(Net, (6, 4), ["out"])
    assert "Unsqueeze" in [n.op_type for n in m.graph.node]
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="reads graph input 'x' time-major"):
        compile_model(m, load_config("puma", ["adc.bits=none"]), calibration={"x": x})


def test_a_code_generation_refusal_names_its_layer(monkeypatch):
    # the safety net against a cycle of partial sums (placement never builds one today)
    # said "its per-step partial sums ..." with no layer once register errors moved out
    import compiler.ops._recurrent_code as rc
    monkeypatch.setattr(rc, "may_deadlock", lambda plan, buf: True)
    x = np.random.default_rng(1).standard_normal((1, 5, 6)).astype(np.float32)
    cfg = load_config("small", ["core.mvmus=1", "tile.cores=1", "node.tiles=64"])
    with pytest.raises(CompilerError, match=r"^layer '.*' \(LSTM\): its per-step "):
        compile_model(_hand_lstm(H=12), cfg, calibration={"x": x})


def test_a_recurrent_sum_with_no_shift_left_saturates_rather_than_wrapping():
    """W = +-3e15: the gates' multiplier (1.2e13, shift 0) times the sum left int64 and the
    RNN's hidden state came out with the other sign."""
    T, I, H = 3, 2, 2
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
         helper.make_node("RNN", ["xt", "W", "R"], ["Y", "Yh"], hidden_size=H)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, I])],
        [helper.make_tensor_value_info("Yh", TensorProto.FLOAT, [1, 1, H])],
        [numpy_helper.from_array(np.array([[[1, -1], [-1, 1]]], np.float32) * 3e15, "W"),
         numpy_helper.from_array(np.zeros((1, H, H), np.float32), "R")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    calib = {"x": np.array([[[1.0, -1.0], [0.5, 0.2], [-1.0, 1.0]]], np.float32)}
    x = {"x": np.array([[[1.0, -1.0], [0.9, -0.9], [-1.0, 1.0]]], np.float32)}
    cfg = load_config("puma", ["adc.bits=none", "weight_bits=8"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog, lp, _ = compile_model(m, cfg, calibration=calib, return_ir=True)
    y = simulate(prog, x).outputs["Yh"].ravel()
    np.testing.assert_allclose(y, run_onnxruntime(m, x)["Yh"].ravel(), atol=2e-3)
    np.testing.assert_array_equal(simulate(prog, x).outputs["Yh:int"],
                                  run_integer_reference(lp, x)["Yh:int"])
