"""The command line as a person uses it: compile, simulate, run; and every user mistake is
one line on stderr with exit code 2."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from simulator.cli import main
from simulator.errors import SimulationError


def _mlp_model(path, k=64, n=10, op="MatMul"):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n))
                                .astype(np.float32), "w")
    node = helper.make_node(op, ["input", "w"], ["logits"]) if op == "MatMul" else \
        helper.make_node(op, ["input"], ["logits"])
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, k])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, n if op == "MatMul" else k])],
        [w] if op == "MatMul" else [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _one_line_error(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert needle in err, err
    return err


def test_compile_says_when_a_tile_needs_more_than_its_edram(tmp_path, capsys):
    model = _mlp_model(tmp_path / "m.onnx", k=600)
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q"]) == 0
    assert "eDRAM" not in capsys.readouterr().out
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q", "--set",
                 "tile.edram_kb=1"]) == 0
    assert "note: 1 tile(s) need more than the 512-word eDRAM" in capsys.readouterr().out
    # sized to fit: no note, and the area and leakage follow each tile's own need
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q", "--set",
                 "tile.edram_kb=1", "--set", "tile.edram_fit=true"]) == 0
    assert "eDRAM" not in capsys.readouterr().out
    from simulator import Program, simulate
    from simulator.costs import TABLE
    prog = Program.load(tmp_path / "p")
    rep = simulate(prog, values=False)
    words = int(prog.mem_words.max())
    kib = 2 ** int(np.ceil(np.log2(np.ceil(words * 2 / 1024))))    # 16-bit words
    assert rep.tiles == 1 and rep.memory["edram_kib"] == kib > 1
    assert rep.memory["tiles_over_edram"] == 0
    assert rep.area_mm2["edram"] == pytest.approx(TABLE["edram_area_mm2"] * kib / 64)


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "{prog}", "--json", "{d}/out/"], "--json {d}/out/: a folder"),
    (["listing", "{prog}", "-o", "{d}/out/"], "-o {d}/out/: a folder"),
    (["simulate", "{prog}", "--json", "{d}/out/."], "--json {d}/out/.: a folder"),
    (["export", "lenet5", "-o", "{d}/out/"], "-o {d}/out/: names a folder"),
    (["compress", "lenet5_fmnist", "--recipe", "lenet5_block", "--data", "digits", "-o",
      "{d}/out/"], "-o '{d}/out/': must name a file"),
    (["sweep", "--models", "{model}", "--grid", "adc.bits=6", "-o", "{d}/out/"],
     "-o '{d}/out/': name the results table")])
def test_an_output_file_written_as_a_folder_is_refused(tmp_path, capsys, argv, needle):
    """`-o out/` wrote a plain file named out (Path drops the slash), exit 0."""
    model = _mlp_model(tmp_path / "m.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q"]) == 0
    capsys.readouterr()
    fill = {"prog": str(tmp_path / "p"), "d": str(tmp_path), "model": str(model)}
    _one_line_error(capsys, main([a.format(**fill) for a in argv]), needle.format(**fill))
    assert not (tmp_path / "out").exists()


def test_compile_simulate_run_flow(tmp_path):
    model = _mlp_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    exe = [sys.executable, "-m", "simulator.cli"]
    r = subprocess.run(exe + ["compile", str(model), "-o", str(tmp_path / "prog"), "--preset",
                              "puma", "--set", "adc.bits=6"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(exe + ["simulate", str(tmp_path / "prog"), "--input",
                              str(tmp_path / "in.npz"), "--json", str(tmp_path / "r.json"),
                              "--trace", str(tmp_path / "t.json"), "--outputs",
                              str(tmp_path / "o.npz"), "--layers"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    # --layers: a row per layer that does anything, its crossbars and ADC bits as reported
    table = r.stdout[r.stdout.index("layer "):].splitlines()
    assert table[0].split()[:5] == ["layer", "op", "crossbars", "ADC", "bits"]
    mvm = [L for L in rep["layers"] if L["crossbars"]]
    for L in mvm:
        row = next(t.split() for t in table if t.startswith(L["name"] + " "))
        assert row[2:4] == [str(L["crossbars"]), str(L["adc_bits"])]
    for key in ("latency_cycles", "latency_s", "energy_j", "area_mm2", "crossbars", "cores",
                "tiles", "mvm_ops", "adc_conversions", "instructions", "layers",
                "sim_wall_s", "config"):
        assert key in rep
    for comp in ("total", "adc", "dac", "crossbar"):
        assert comp in rep["energy_j"]
    assert rep["config"]["adc"]["bits"] == 6
    assert np.load(tmp_path / "o.npz")["logits"].shape == (3, 10)
    trace = json.loads((tmp_path / "t.json").read_text())
    assert any(e.get("name") == "mvm" for e in trace["traceEvents"])
    r = subprocess.run(exe + ["run", str(model), "--random", "2", "--json",
                              str(tmp_path / "run.json"), "--plots", str(tmp_path / "plots"),
                              "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    acc = json.loads((tmp_path / "run.json").read_text())["accuracy"]
    assert acc["rel_err"] < 1e-2 and "top1_agreement" in acc
    assert (tmp_path / "plots" / "energy_breakdown.png").exists()


def test_warnings_print_as_one_line_that_says_warning(tmp_path):
    """Not Python's 'file:line: UserWarning' with the source line under it."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "b4",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "b4.onnx")
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "compile",
                        str(tmp_path / "b4.onnx"), "-o", str(tmp_path / "p"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: graph input 'x' has a static batch of 4; the "
                                     "program computes one sample (N set to 1) and the "
                                     "simulator runs a batch of any size"]


def test_malformed_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf\xff\xff")
    _one_line_error(capsys, main(["compile", str(bad), "-o", str(tmp_path / "p")]),
                    "not a valid ONNX model")


def test_unsupported_op_names_op_node_and_supported_set(tmp_path, capsys):
    model = _mlp_model(tmp_path / "erf.onnx", op="Erf")
    err = _one_line_error(capsys, main(["compile", str(model), "-o", str(tmp_path / "p")]),
                          "op Erf is not supported")
    assert "Conv" in err and "Gemm" in err and "node" in err


def test_model_too_big_for_the_chip(tmp_path, capsys):
    model = _mlp_model(tmp_path / "big.onnx", k=2048, n=2048)
    err = _one_line_error(capsys, main(["compile", str(model), "-o", str(tmp_path / "p"),
                                        "--preset", "small"]), "crossbars")
    assert "needs" in err and "node.tiles" in err


def test_external_data_escaping_the_model_folder(tmp_path, capsys):
    model = onnx.load(_mlp_model(tmp_path / "m.onnx"))
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(640, np.float32).tobytes())
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "2560")):
        e = t.external_data.add()
        e.key, e.value = k, v
    with open(inner / "evil.onnx", "wb") as f:
        f.write(model.SerializeToString())
    _one_line_error(capsys, main(["compile", str(inner / "evil.onnx"), "-o",
                                  str(tmp_path / "p")]), "outside the model's folder")


@pytest.mark.parametrize("argv,needle", [
    (["compile", "nosuch.onnx", "-o", "x"], "does not exist"),
    (["simulate", "nosuch_dir"], "not a program folder"),
    (["presets"], None),
])
def test_simple_commands(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    if needle is None:
        assert rc == 0 and "puma" in capsys.readouterr().out
    else:
        _one_line_error(capsys, rc, needle)


def test_bad_override_and_bad_input_file(tmp_path, capsys):
    model = _mlp_model(tmp_path / "m.onnx")
    _one_line_error(capsys, main(["compile", str(model), "-o", str(tmp_path / "p"), "--set",
                                  "adc.bits=0"]), "adc.bits = 0")
    _one_line_error(capsys, main(["run", str(model), "--input", str(tmp_path / "none.npz")]),
                    "does not exist")
    np.savez(tmp_path / "wrong.npz", other=np.zeros((1, 64), np.float32))
    _one_line_error(capsys, main(["run", str(model), "--input", str(tmp_path / "wrong.npz")]),
                    "lacks input 'input'")
    (tmp_path / "a_file").write_text("")
    _one_line_error(capsys, main(["compile", str(model), "-o", str(tmp_path / "a_file"), "-q"]),
                    "a program is saved as a folder")
    assert (tmp_path / "a_file").read_text() == ""          # untouched


def test_deadlocked_program_exits_2(tmp_path, capsys):
    from simulator import examples
    examples.deadlock().save(tmp_path / "dl")
    err = _one_line_error(capsys, main(["simulate", str(tmp_path / "dl")]), "deadlock")
    assert "addr 100" in err


# ---- a review's bad inputs: each once crashed, tracebacked or silently did something else --

@pytest.fixture
def compiled(tmp_path):
    """A program folder of the small MLP, and an input batch for it."""
    model = _mlp_model(tmp_path / "m.onnx")
    prog = tmp_path / "prog"
    assert main(["compile", str(model), "-o", str(prog), "-q"]) == 0
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    return prog, tmp_path / "in.npz"


@pytest.mark.parametrize("field,value,needle", [
    ("layer", 100000, "layer index 100000 outside -1..0"),   # indexed the counters unchecked
    ("layer", -50, "layer index -50 outside"),
])
def test_corrupt_instruction_layer_is_refused_not_a_crash(compiled, capsys, field, value,
                                                          needle):
    prog, _ = compiled
    z = dict(np.load(prog / "program.npz"))
    z["core_code"][field][0] = value
    np.savez_compressed(prog / "program.npz", **z)
    _one_line_error(capsys, main(["simulate", str(prog)]), needle)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(layers="x"), "layers must be a list"),
    (lambda m: m.update(layers=[]), "outside -1..-1"),
    (lambda m: m.pop("n_tiles"), "malformed (KeyError"),
    (lambda m: m.update(inputs=[5]), "malformed ("),
])
def test_malformed_manifest_names_the_file(compiled, capsys, edit, needle):
    prog, _ = compiled
    m = json.loads((prog / "manifest.json").read_text())
    edit(m)
    (prog / "manifest.json").write_text(json.dumps(m))
    _one_line_error(capsys, main(["simulate", str(prog)]), needle)


def test_binary_manifest_and_corrupt_npz_files(compiled, capsys):
    prog, inp = compiled
    (prog / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(capsys, main(["simulate", str(prog)]), "manifest.json: not valid JSON")
    trunc = inp.with_name("trunc.npz")
    trunc.write_bytes(inp.read_bytes()[:40])
    _one_line_error(capsys, main(["run", str(inp.with_name("m.onnx")), "--input", str(trunc)]),
                    "trunc.npz: not a readable .npz")
    np.save(inp.with_name("a.npy"), np.zeros((1, 64)))
    _one_line_error(capsys, main(["run", str(inp.with_name("m.onnx")), "--input",
                                  str(inp.with_name("a.npy"))]), "a single .npy array")


def test_corrupt_compressed_program_data_names_the_file(compiled, capsys):
    prog, _ = compiled
    data = bytearray((prog / "program.npz").read_bytes())   # the deflate stream, not the zip
    data[300:340] = bytes(b ^ 0xFF for b in data[300:340])
    (prog / "program.npz").write_bytes(data)
    _one_line_error(capsys, main(["simulate", str(prog)]), "program.npz: not a readable .npz")


@pytest.mark.parametrize("x,needle", [
    (np.float32(1.0), "is a scalar"),
    (np.zeros((0, 64), np.float32), "empty batch"),
    (np.array([["a"] * 64]), "dtype <U1"),
    (np.full((1, 64), np.nan, np.float32), "64 NaN/inf values"),
])
def test_unusable_input_arrays_are_named(compiled, capsys, x, needle):
    prog, inp = compiled
    np.savez(inp, input=x)
    _one_line_error(capsys, main(["simulate", str(prog), "--input", str(inp)]), needle)


def test_outputs_need_inputs_and_output_folders_are_made(compiled, capsys, tmp_path):
    prog, inp = compiled
    _one_line_error(capsys, main(["simulate", str(prog), "--outputs", str(tmp_path / "o.npz")]),
                    "--outputs needs --input")
    report = tmp_path / "new" / "dir" / "r.json"      # made, not lost after simulating
    outs = tmp_path / "outs"                          # written under exactly this name
    assert main(["simulate", str(prog), "--input", str(inp), "--json", str(report),
                 "--outputs", str(outs)]) == 0
    assert json.loads(report.read_text())["latency_s"] > 0
    assert set(np.load(outs)) == {"logits"}
    _one_line_error(capsys, main(["compile", str(inp.with_name("m.onnx")), "-o", ""]),
                    "empty path")


def test_a_program_without_inputs_writes_its_outputs(tmp_path):
    """Its values need no --input, and simulate computes them; --outputs was refused."""
    from simulator import Program, load_config
    from simulator import examples as ex
    from simulator.isa import Op, RegisterLayout, assemble, instr
    from simulator.program import TensorPort
    cfg = load_config("small")
    gp = RegisterLayout.of(cfg).gp
    code = assemble([instr(Op.SET, dst=gp, imm=7, vec=4),
                     instr(Op.STORE, src1=gp, imm=0, vec=4, count=0), instr(Op.HLT)])
    Program(config=cfg, n_tiles=1, core_code=[code] + [ex.EMPTY] * (cfg.tile.cores - 1),
            tile_code=[ex.EMPTY], outputs=[TensorPort("y", 0, 0, (4,), 0.5)]
            ).save(tmp_path / "p")
    assert main(["simulate", str(tmp_path / "p"), "--outputs", str(tmp_path / "o.npz")]) == 0
    assert np.load(tmp_path / "o.npz")["y"].tolist() == [[3.5] * 4]


def test_counts_below_one_are_refused_not_rewritten(capsys):
    for argv in (["run", "--random", "0"], ["run", "--limit", "0"], ["run", "--limit", "-5"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "must be an integer >= 1" in err and err.startswith("error: xbarsim run: ")
        assert err.count("\n") == 1, err      # one line, not argparse's usage block


def test_nan_weights_are_named(tmp_path, capsys):
    model = onnx.load(str(_mlp_model(tmp_path / "m.onnx")))
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(model, tmp_path / "nan.onnx")
    _one_line_error(capsys, main(["compile", str(tmp_path / "nan.onnx"), "-o",
                                  str(tmp_path / "p")]), "weight 'w' holds 1 NaN/inf values")


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    # A full disk or a size limit mid-write: the target keeps its old contents, no temp file
    # is left behind, and the error names the target.
    from simulator.fileio import atomic_write
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(OSError, match="report.json"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise OSError(27, "File too large")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    # a completed write keeps the permissions a plain open() gives, not mkstemp's 0600
    import os
    target.unlink()
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    # a symlink is followed, not replaced; a FIFO (like /dev/stdout) is written directly
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with atomic_write(link) as tmp:
        tmp.write_text("through the link")
    assert link.is_symlink() and target.read_text() == "through the link"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    with atomic_write(fifo) as tmp:
        tmp.write_text("streamed")
    assert os.read(fd, 100) == b"streamed" and fifo.is_fifo()
    os.close(fd)
    with pytest.raises(OSError, match=r"No such file or directory: .*nodir/x.json'$"):
        with atomic_write(tmp_path / "nodir" / "x.json") as tmp:
            tmp.write_text("x")


def test_outputs_to_dev_stdout_on_a_pipe(tmp_path):
    """/dev/stdout on a pipe resolves to /proc/PID/fd/pipe:[N], which does not exist: the
    report was lost after the whole simulation (error: No such file or directory)."""
    model = _mlp_model(tmp_path / "m.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q"]) == 0
    exe = [sys.executable, "-m", "simulator.cli"]
    r = subprocess.run(exe + ["simulate", str(tmp_path / "p"), "--json", "/dev/stdout"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])["latency_s"] > 0
    r = subprocess.run(exe + ["listing", str(tmp_path / "p"), "-o", "/dev/stdout"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "tile 0 core 0" in r.stdout, r.stderr
    # redirected to a file (>> log): written at its end, not over it (a rename had replaced
    # the log: the earlier lines and the summary were gone)
    log = tmp_path / "log.txt"
    log.write_text("EARLIER LINE\n")
    with open(log, "a") as f:
        r = subprocess.run(exe + ["simulate", str(tmp_path / "p"), "--json", "/dev/stdout"],
                           stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    text = log.read_text()
    assert text.startswith("EARLIER LINE\nlatency ")
    assert text.endswith("}\nreport   -> /dev/stdout\n")
    # /proc/<its own pid>/fd/1 likewise; and with stdout closed (>&-), /dev/stderr
    cmd = " ".join(exe + ["simulate", str(tmp_path / "p"), "--json"])
    log.write_text("EARLIER LINE\n")
    r = subprocess.run(["sh", "-c", f"exec {cmd} /proc/$$/fd/1 >> {log}"],
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0 and log.read_text().startswith("EARLIER LINE\nlatency "), r.stderr
    r = subprocess.run(["sh", "-c", f"exec {cmd} /dev/stderr >&-"], stderr=subprocess.PIPE,
                       text=True)
    assert r.returncode == 0 and json.loads(r.stderr)["latency_s"] > 0, r.stderr


def test_preset_yaml_edge_cases(tmp_path, capsys):
    bad = tmp_path / "mixed.yaml"
    bad.write_text("xbar: {rows: 128, 1: 2}\n")          # a non-string key sorted with str ones
    _one_line_error(capsys, main(["compile", "x.onnx", "-o", str(tmp_path / "p"),
                                  "--preset", str(bad)]), "xbar.1: unknown key")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    _one_line_error(capsys, main(["compile", "x.onnx", "-o", str(tmp_path / "p"),
                                  "--preset", str(binary)]), "bin.yaml: not valid YAML")
    from simulator.config import load_config
    assert load_config("puma", ["clock_ghz=1e-3"]).clock_ghz == 1e-3   # YAML 1.1 reads a str


def test_errors_found_before_the_work_and_in_one_line(tmp_path, capsys):
    """A bad preset is refused before the demo says what it runs; an output folder that
    takes no files before compiling; a results file that pandas cannot parse in one line,
    whatever its parser's message holds; a zoo option of the wrong type by name."""
    import models
    lenet = str(models.pretrained_path("lenet5_fmnist"))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n3,4,5,6,7\n")
    for argv, needle in (
            (["run", "--preset", "pumma"], "preset 'pumma' not found"),
            (["compile", lenet, "-o", "/proc/nope"], "-o /proc/nope: cannot write files in"),
            (["plot", str(bad_csv), "-o", str(tmp_path / "p")], "not a readable results"),
            (["export", "vgg8", "-o", str(tmp_path / "v.onnx"), "--opt", "width=abc"],
             "option width takes a number, got 'abc'")):
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert needle in err and "xbarsim demo" not in out, (argv, out, err)


def test_output_paths_are_checked_before_the_simulation(compiled, capsys, tmp_path,
                                                        monkeypatch):
    """A folder where a file belongs, or an output that is an input or another output,
    was found only after simulating (losing the outputs after it) or silently overwrote."""
    import compiler.run  # noqa: F401  (imported here first, it would bind the patch below)
    sim = sys.modules["simulator.simulate"]
    prog, x = compiled
    inp = x                                   # the fixture's input file
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(sim, "simulate", lambda *a, **k: pytest.fail("simulated"))
    for argv, needle in [
            (["--json", tmp_path / "r.json", "--trace", tmp_path / "taken"],
             "--trace " + str(tmp_path / "taken") + ": a folder is there"),
            (["--outputs", inp], "is also the --input file"),
            (["--json", tmp_path / "r.json", "--trace", tmp_path / "r.json"],
             "is also the --json file"),
            (["--json", prog / "manifest.json"], "is also the program's manifest")]:
        rc = main(["simulate", str(prog), "--input", str(inp), *map(str, argv)])
        _one_line_error(capsys, rc, needle)
    model = _mlp_model(tmp_path / "m.onnx")
    _one_line_error(capsys, main(["run", str(model), "--random", "2", "--json", str(model)]),
                    "is also the model")
    assert onnx.load(model).graph.node                   # not overwritten


@pytest.mark.parametrize("argv,needle", [
    (["run", "--random", "3"], "--input/--random need a MODEL"),
    (["run", "--input", "nowhere.npz"], "--input/--random need a MODEL"),
    (["compile", "M", "-o", "p", "--set", "node.tiles=010"], None),
    (["compile", "M", "-o", "p", "--set", "adc.bits="], "an empty value"),
    (["compile", "M", "-o", "p", "--set", "noise.on_off_ratio=inf"], "finite number > 1"),
])
def test_demo_options_and_set_values_mean_what_they_say(argv, needle, tmp_path, capsys):
    """The demo ignored --input/--random (even a missing file); --set read 010 as octal 8,
    an empty value as an ideal ADC, and took an infinite on/off ratio (invalid JSON)."""
    model = _mlp_model(tmp_path / "m.onnx")
    argv = [str(model) if a == "M" else str(tmp_path / a) if a == "p" else a for a in argv]
    rc = main(argv)
    if needle is None:
        assert rc == 0
        manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
        assert manifest["config"]["node"]["tiles"] == 10
    else:
        _one_line_error(capsys, rc, needle)


def test_vfu_cores_option_reaches_the_program(tmp_path, capsys, monkeypatch):
    model = _mlp_model(tmp_path / "m.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "p"), "-q",
                 "--vfu-cores", "shared"]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["mapping"]["vfu_cores"] == "shared"
    import compiler.run
    asked = []
    real = compiler.run.compile_model

    def spy(*a, **kw):
        asked.append(kw.get("vfu_cores"))
        return real(*a, **kw)
    monkeypatch.setattr(compiler.run, "compile_model", spy)
    assert main(["run", str(model), "--random", "2", "-q", "--vfu-cores", "shared"]) == 0
    assert asked == ["shared"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["run", str(model), "--random", "2", "--vfu-cores", "spread"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "--vfu-cores: invalid choice: 'spread' (choose from 'own', 'shared')" in err


def test_preset_yaml_reads_exponents_as_numbers(tmp_path):
    from simulator.config import load_config
    p = tmp_path / "sig.yaml"
    p.write_text("noise: {program_sigma: 5e-2}\nclock_ghz: 1e0\n")
    cfg = load_config(str(p))
    assert cfg.noise.program_sigma == 0.05 and cfg.clock_ghz == 1.0


def test_the_layer_table_goes_to_a_buffer_too():
    """to_csv went through atomic_write, which took an open buffer for a path (TypeError)."""
    import io
    from simulator import load_config, simulate
    from simulator import examples as ex
    cfg = load_config("small")
    rep = simulate(ex.single_mvm(cfg, ex.random_weights(cfg, 16, 4)))
    buf = io.StringIO()
    rep.to_csv(buf)
    assert buf.getvalue().splitlines()[0].startswith("name,")


def test_a_reference_past_float32_keeps_the_report_valid_json():
    """onnxruntime's reference overflowed to inf on an input past the calibration: the
    report held Infinity and NaN, which strict JSON parsers refuse."""
    from simulator import load_config, simulate
    from simulator import examples as ex
    cfg = load_config("small")
    prog = ex.single_mvm(cfg, ex.random_weights(cfg, 16, 4))
    x = np.ones((3, 16), np.int64)
    exact = simulate(prog, {"x": x}).outputs[prog.outputs[0].name]
    ref = exact.astype(np.float64).copy()
    ref[2, 1] = np.inf
    rep = simulate(prog, {"x": x}, reference={prog.outputs[0].name: ref})
    acc = json.loads(rep.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    acc = acc["accuracy"]
    assert acc["max_abs_err"] == 0 and acc["rel_err"] == 0 and acc["reference_nonfinite"] == 1
    assert acc["top1_agreement"] == 1.0    # over the two rows that are finite


def test_truncated_trace_is_said_so(tmp_path):
    from simulator import load_config, simulate
    from simulator import examples as ex
    cfg = load_config("small")
    prog = ex.single_mvm(cfg, ex.random_weights(cfg, 16, 16))
    x = np.zeros((1, 16), np.int64)
    full = simulate(prog, {"x": x}, trace=True)
    assert not full.trace_truncated
    # exactly as many events as the cap: nothing was cut (it said so, and the CLI printed
    # "the run went on past it")
    n = len(full.trace_events)
    exact = simulate(prog, {"x": x}, trace=True, trace_cap=n)
    assert not exact.trace_truncated and len(exact.trace_events) == n
    cut = simulate(prog, {"x": x}, trace=True, trace_cap=n - 1)
    assert cut.trace_truncated and len(cut.trace_events) == n - 1
    for bad in (0, -5, 2.5, True, 10 ** 10):
        with pytest.raises(SimulationError, match=r"trace_cap = .*: must be an integer from 1"):
            simulate(prog, {"x": x}, trace=True, trace_cap=bad)
    with pytest.raises(SimulationError, match=r"no trace recorded: simulate\(\.\.\., trace="):
        simulate(prog, {"x": x}).save_trace(tmp_path / "t.json")   # wrote an empty trace
    # the file and the JSON report say it too (the timeline just looked idle after the cut)
    cut.save_trace(tmp_path / "cut.json")
    trace = json.loads((tmp_path / "cut.json").read_text())
    assert trace["metadata"]["truncated"] and trace["metadata"]["events_kept"] == n - 1
    assert any(e["ph"] == "i" and "cap" in e["name"] for e in trace["traceEvents"])
    assert json.loads(cut.to_json())["trace_truncated"]
    full.save_trace(tmp_path / "full.json")
    trace = json.loads((tmp_path / "full.json").read_text())
    assert not trace["metadata"]["truncated"]
    assert not any(e["ph"] == "i" for e in trace["traceEvents"])
    # and the CLI can raise the cap
    prog.save(tmp_path / "p")
    np.savez(tmp_path / "x.npz", x=x)
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "simulate", str(tmp_path / "p"),
                          "--input", str(tmp_path / "x.npz"), "--trace",
                          str(tmp_path / "t2.json"), "--trace-cap", str(n - 1)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and f"cut at its {n - 1}-event cap" in out.stdout, out.stderr


def test_duplicate_yaml_keys_and_a_file_where_a_folder_belongs(tmp_path, capsys):
    model = _mlp_model(tmp_path / "m.onnx")
    dup = tmp_path / "dup.yaml"
    dup.write_text("weight_bits: 8\nweight_bits: 16\n")        # the last silently won
    _one_line_error(capsys, main(["compile", str(model), "-o", str(tmp_path / "p"),
                                  "--preset", str(dup)]), "key 'weight_bits' given twice")
    _one_line_error(capsys, main(["compile", str(model), "-o", str(model / "p")]),
                    f"{model} is a file, where a folder is needed")


def test_demo_runs_on_the_bundled_images_and_writes_its_outputs(tmp_path, capsys):
    """Quick start's command 1 (``xbarsim run``, no model) on the first 8 images: the labels'
    top-1 is onnxruntime's on those images, the chip agrees with it, and the report, trace
    and plots land under --out."""
    import models
    from compiler.reference import run_onnxruntime
    assert main(["run", "--limit", "8", "--out", str(tmp_path), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "8 bundled test images" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    x, labels = models.load_demo_images(8)
    ref = run_onnxruntime(models.pretrained_path("lenet5_fmnist"), {"input": x})
    ort_top1 = float((next(iter(ref.values())).argmax(1) == labels).mean())
    acc = report["accuracy"]
    assert acc["ort_top1_vs_labels"] == ort_top1
    assert acc["top1_agreement"] == 1.0 and acc["sim_top1_vs_labels"] == ort_top1
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert (tmp_path / "plots" / "energy_breakdown.png").stat().st_size > 0


def test_run_and_simulate_refuse_a_misnamed_input_array_alike(compiled, tmp_path, capsys):
    """``run`` ignored an array the model has no input for, where ``simulate`` refused it;
    and ``simulate`` called an input without a batch axis 'expected (4, 64)'."""
    prog, _ = compiled
    model = _mlp_model(tmp_path / "m2.onnx")
    x = np.zeros((2, 64), np.float32)
    np.savez(tmp_path / "extra.npz", input=x, other=x)
    for argv in (["run", str(model), "--input"], ["simulate", str(prog), "--input"]):
        _one_line_error(capsys, main(argv + [str(tmp_path / "extra.npz")]),
                        "unknown input 'other'")
    np.savez(tmp_path / "nobatch.npz", input=np.ones(64, np.float32))
    _one_line_error(capsys, main(["simulate", str(prog), "--input",
                                  str(tmp_path / "nobatch.npz")]),
                    "has shape (64,); expected (N, 64): a batch axis first")


def test_the_cli_starts_without_importing_onnx_or_torch():
    """Every sub-command's parser is built at start; the compiler's ONNX stack (about a
    second) and torch load only when a command needs them (`presets` took 2.7 s)."""
    code = ("import sys; from simulator.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('onnx', 'torch', 'compiler.pipeline') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize("raised,code,stderr", [(KeyboardInterrupt, 130, "error: interrupted"),
                                                (BrokenPipeError, 141, "")])
def test_ctrl_c_and_a_closed_pipe_exit_as_the_shell_expects(monkeypatch, capsys, raised, code,
                                                            stderr):
    """Ctrl-C exits 130 as sweep, compress and train do (run exited 2); `xbarsim run | head`
    leaving early is no error ("[Errno 32] Broken pipe" was printed)."""
    from simulator import cli, config

    def boom(*a, **k):
        raise raised()
    monkeypatch.setattr(config, "preset_names", boom)
    assert cli.main(["presets"]) == code
    assert capsys.readouterr().err.strip() == stderr
    if raised is BrokenPipeError:   # train and compress caught it as an unwritable output
        import models.train
        monkeypatch.setattr(models.train, "train", boom)
        assert cli.main(["train", "mlp", "--data", "digits", "--quiet"]) == code
        assert capsys.readouterr().err.strip() == stderr


def test_plots_and_their_files_are_outputs_taken_before_the_work(tmp_path, capsys,
                                                                  monkeypatch):
    """--json on a plot's name was overwritten by the plot (exit 0); --json on the plots
    folder failed only after simulating, without naming --json."""
    import compiler.run
    monkeypatch.setattr(compiler.run, "compile_model", lambda *a, **k: pytest.fail("compiled"))
    model, pl = str(_mlp_model(tmp_path / "m.onnx")), tmp_path / "pl"
    for json_path, needle in [(pl / "energy_breakdown.png",
                               "is also the --plots folder's energy_breakdown.png"),
                              (pl, f"--json {pl}: is also the --plots folder")]:
        rc = main(["run", model, "--plots", str(pl), "--json", str(json_path)])
        _one_line_error(capsys, rc, needle)
    assert not pl.exists()                                # nothing made for a refused run
    rc = main(["run", "--out", str(tmp_path / "demo"), "--json",
               str(tmp_path / "demo" / "plots" / "layer_costs.png")])
    _one_line_error(capsys, rc, "is also the --plots folder's layer_costs.png")


def test_outputs_to_a_fifo_keep_its_name_and_write_errors_name_the_flag(compiled, tmp_path,
                                                                         capsys):
    """np.savez added .npz to a FIFO's (or device's) name; a full disk's error named no
    file or flag."""
    import os
    prog, inp = compiled
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)      # a reader, so the writer opens
    try:
        assert main(["simulate", str(prog), "--input", str(inp), "--outputs", str(fifo)]) == 0
        (tmp_path / "got.npz").write_bytes(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    assert not (tmp_path / "pipe.npz").exists()
    assert np.load(tmp_path / "got.npz")["logits"].shape == (2, 10)
    if os.path.exists("/dev/full"):
        _one_line_error(capsys, main(["simulate", str(prog), "--json", "/dev/full"]),
                        "--json /dev/full: No space left on device")


def test_compile_to_an_existing_file_is_refused_before_compiling(tmp_path, capsys,
                                                                 monkeypatch):
    import compiler
    monkeypatch.setattr(compiler, "compile_model", lambda *a, **k: pytest.fail("compiled"))
    (tmp_path / "afile").write_text("keep")
    _one_line_error(capsys, main(["compile", "m.onnx", "-o", str(tmp_path / "afile")]),
                    "a file is there; a program is saved as a folder")
    assert (tmp_path / "afile").read_text() == "keep"


def test_demo_says_when_limit_asks_for_more_images_than_there_are(tmp_path, capsys,
                                                                  monkeypatch):
    import models
    real = models.load_demo_images
    monkeypatch.setattr(models, "load_demo_images", lambda n=None: real(3))  # 3 "bundled"
    assert main(["run", "--limit", "5", "--out", str(tmp_path), "-q"]) == 0
    assert "3 bundled test images (all there are; --limit 5 asked for more)" in \
        capsys.readouterr().out


def test_npz_members_that_are_no_arrays_or_claim_too_much_are_named(tmp_path, capsys):
    """numpy hands a zip member that is no .npy over as bytes ("'bytes' object has no
    attribute 'dtype'"; an input "is a scalar"), and allocates the size a header claims
    before reading: a corrupt header's 2**47 elements were "out of memory", naming no file."""
    import io
    import zipfile

    from simulator import examples, load_config

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    cfg = load_config("small")
    program = examples.single_mvm(cfg, examples.random_weights(cfg, 8, 4))
    bad = program.save(tmp_path / "bad")
    arrays = dict(np.load(bad / "program.npz"))
    with zipfile.ZipFile(bad / "program.npz", "w") as z:
        for k, v in arrays.items():
            z.writestr(f"{k}.npy", b"not an array" if k == "mvmu_levels" else npy(v))
    _one_line_error(capsys, main(["simulate", str(bad)]),
                    "program.npz: member 'mvmu_levels' is not an .npy array")
    good = program.save(tmp_path / "good")
    with zipfile.ZipFile(tmp_path / "text.npz", "w") as z:
        z.writestr("x.npy", b"hello")
    _one_line_error(capsys, main(["simulate", str(good), "--input", str(tmp_path / "text.npz")]),
                    "text.npz: member 'x' is not an .npy array")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (2**47,)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + bytes(64))
    _one_line_error(capsys, main(["simulate", str(good), "--input", str(tmp_path / "huge.npz")]),
                    f"huge.npz: member 'x' claims {2**50} bytes of array data (shape "
                    f"({2**47},), int64) but holds 64; the file is corrupt")
    np.savez_compressed(tmp_path / "fine.npz", x=np.ones((2, 8)))  # compressed: sizes as stored
    assert main(["simulate", str(good), "--input", str(tmp_path / "fine.npz")]) == 0


def test_listing_prints_every_stream_filters_and_writes_a_file(compiled, capsys, tmp_path):
    """``xbarsim listing``: Program.listing on stdout or in -o's file; a tile or core the
    program lacks, or --core without --tile, is one line and exit 2."""
    from simulator import Program
    prog, _ = compiled
    program = Program.load(prog)
    assert main(["listing", str(prog)]) == 0
    out = capsys.readouterr().out
    assert out == program.listing()
    lines = out.splitlines()
    assert sum(ln.startswith("# tile ") for ln in lines) == program.n_agents
    assert sum(bool(ln) and not ln.startswith("#") for ln in lines) == program.n_instructions
    assert main(["listing", str(prog), "--tile", "0", "--core", "1"]) == 0
    assert capsys.readouterr().out.startswith("# tile 0 core 1: ")
    _one_line_error(capsys, main(["listing", str(prog), "--tile", "1"]),
                    "tile 1: the program has tile 0")
    _one_line_error(capsys, main(["listing", str(prog), "--tile", "0", "--core", "99"]),
                    "core 99: tile 0 has cores 0-")
    _one_line_error(capsys, main(["listing", str(prog), "--core", "0"]),
                    "core 0: name its tile too")
    _one_line_error(capsys, main(["listing", str(prog), "-o", str(prog / "manifest.json")]),
                    "is also the program's manifest")
    out_file = tmp_path / "new" / "prog.lst"           # its folder is made
    assert main(["listing", str(prog), "--tile", "0", "-o", str(out_file)]) == 0
    assert capsys.readouterr().out == f"listing  -> {out_file}\n"
    assert out_file.read_text() == program.listing(tile=0)


def test_ctrl_c_while_the_commands_load_is_one_line_too(monkeypatch, capsys):
    # the optional commands (train, compress, sweep) import their modules while the parser
    # is built: a Ctrl-C there printed a KeyboardInterrupt traceback
    from simulator import cli

    def interrupted(module, sub):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_register_optional", interrupted)
    assert cli.main(["presets"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
