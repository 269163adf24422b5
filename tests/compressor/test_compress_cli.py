"""``xbarsim compress`` driven the way a person would, through the real entry point."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simulator.cli import main

RECIPE = """
name: cli_test
geometry: {rows: 64, cols: 32, weight_bits: 8}
pretrain: {epochs: 2}
admm: {rounds: 2}
retrain: {epochs: 1}
layers:
  - match: [layers.1, layers.3]
    sparsity: {structure: blocks, keep: 0.5}
    quant: {bits: 6}
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    return p


def run(capsys, *argv):
    rc = main(["compress", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compress_writes_qdq_onnx_baseline_and_summary(tmp_path, recipe, capsys):
    out = tmp_path / "o" / "mlp.onnx"
    rc, stdout, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o", out,
                          "--limit", 400, "--baseline", "--json", tmp_path / "s.json", "-q",
                          "--hw-images", 64)
    assert rc == 0, err
    assert out.is_file() and (tmp_path / "o" / "mlp-magnitude.onnx").is_file()
    assert (tmp_path / "o" / "mlp.ckpt").is_file()
    proto = onnx.load(out)
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == 2
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary) == {"admm", "magnitude", "hardware", "admm_vs_magnitude"}
    diff = summary["admm_vs_magnitude"]   # with its paired-bootstrap interval over test images
    lo, hi = diff["ci95_pp"]
    assert lo <= diff["difference_pp"] <= hi and diff["images"] == 400
    assert "95 % interval over the 400 test images" in stdout
    hw = summary["hardware"]  # dense on puma as shipped, the arms with the recipe's levels
    assert hw["machine"][0] == "puma" and "xbar.rows=64" in hw["machine"][1]
    assert "weight_bits=8" in hw["machine"][1]
    assert hw["dense_machine"] == ["puma", ["xbar.rows=64", "xbar.cols=32"]]
    for arm in ("admm", "magnitude"):
        assert hw[arm]["crossbars"] < hw["dense"]["crossbars"]
        assert hw[arm]["energy_uj"] < hw["dense"]["energy_uj"]
        assert hw[arm]["images"] == 64
    assert "crossbars" in stdout and "admm vs dense" in stdout
    for run_ in (summary["admm"], summary["magnitude"]):
        occ = run_["layers"]["layers.1"]  # 784 x 256 on 64 x 32 crossbars: 13 x 8 blocks
        assert (occ["blocks_total"], occ["blocks_nonzero"]) == (104, 52)
    assert "ADMM vs magnitude pruning" in stdout and "layers.1" in stdout
    # which blocks ADMM kept that magnitude pruning kept too; ADMM's own count agrees with
    # the occupancy report's
    shared = diff["blocks_shared"]
    assert set(shared) == {"layers.1", "layers.3"}
    for name, (both, kept) in shared.items():   # against the two arms' occupancy reports
        assert kept == summary["admm"]["layers"][name]["blocks_nonzero"]
        assert both <= summary["magnitude"]["layers"][name]["blocks_nonzero"]
    both, kept = (sum(v[i] for v in shared.values()) for i in (0, 1))
    line = [x for x in stdout.splitlines() if x.startswith("crossbar blocks ADMM keeps")]
    assert line[0].startswith(f"crossbar blocks ADMM keeps that magnitude pruning keeps too: "
                              f"{both} of {kept}")
    assert line[0].endswith("only its weights differ)") == (both == kept)
    # The same command again resumes from the finished checkpoints: no training.
    rc, stdout2, _ = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o", out,
                         "--limit", 400, "-q", "--no-hw")
    assert rc == 0 and stdout2.splitlines()[0] == stdout.splitlines()[0]


def test_set_alone_changes_only_what_it_says(tmp_path, recipe, capsys):
    """--set without --preset swapped the recipe's 64x32 8-bit crossbars for puma's 128x128
    16-bit offset ones, whatever key it set (adc.adaptive here)."""
    for sets, rows in ((["adc.adaptive=true"], 64), (["xbar.rows=16"], 16)):
        out = tmp_path / f"m{rows}.onnx"
        rc, stdout, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o", out,
                              "--limit", 100, "--epochs", 1, "-q", "--no-hw",
                              *[a for kv in sets for a in ("--set", kv)])
        assert rc == 0, err
        geom = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}[
            "xbarsim.compressor"])["geometry"]
        assert (geom["rows"], geom["cols"], geom["weight_bits"], geom["mapping"]) == \
            (rows, 32, 8, "differential")


def test_set_alone_leaves_the_dense_side_as_shipped(recipe):
    # an ADC key moved the dense baseline onto the recipe's 8-bit differential levels,
    # shifting every "vs dense" row
    import argparse

    from compressor.cli import _hw_machine
    from compressor.recipes import load_recipe
    args = argparse.Namespace(preset=None, overrides=["adc.adaptive=true"])
    rec = load_recipe(recipe)
    assert _hw_machine(args, rec, dense=True) == (
        "puma", ["xbar.rows=64", "xbar.cols=32", "adc.adaptive=true"])
    assert "weight_bits=8" in _hw_machine(args, rec)[1]


def test_preset_puts_the_recipe_on_the_machine_crossbars(tmp_path, recipe, capsys):
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o",
                     tmp_path / "m.onnx", "--limit", 100, "--epochs", 1, "--preset", "small",
                     "--set", "xbar.cols=32", "--json", tmp_path / "s.json", "-q")
    assert rc == 0, err
    # 392 crossbar blocks do not fit the small machine: the hardware loop says so and the
    # compression still succeeds.
    assert "hardware loop skipped: dense model: " in err and err.count("\n") == 1
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "MVMU" in summary["hardware"]["error"]
    occ = summary["admm"]["layers"]["layers.1"]
    assert occ["grid"] == [49, 8]  # 784 x 256 on the small machine's 16 x 32 crossbars
    meta = json.loads({p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}[
        "xbarsim.compressor"])
    assert (meta["geometry"]["rows"], meta["geometry"]["cols"]) == (16, 32)


def test_state_dict_with_arch(tmp_path, recipe, capsys):
    from models import build
    pt = tmp_path / "w.pt"
    torch.save(build("mlp", seed=3).state_dict(), pt)
    rc, _, err = run(capsys, pt, "--recipe", recipe, "--data", "digits", "-o", tmp_path / "a.onnx",
                     "--limit", 100, "--epochs", 1, "-q")
    assert rc == 2 and "needs --arch" in err
    rc, _, err = run(capsys, pt, "--arch", "mlp", "--recipe", recipe, "--data", "digits",
                     "-o", tmp_path / "a.onnx", "--limit", 100, "--epochs", 1, "-q", "--no-hw")
    assert rc == 0, err
    assert "hardware loop" not in capsys.readouterr().out
    pt.with_suffix(".json").write_text("[1, 2]")           # not the record train writes
    rc, _, err = run(capsys, pt, "--recipe", recipe, "--data", "digits", "-o", tmp_path / "a.onnx",
                     "--limit", 100, "--epochs", 1, "-q")
    assert rc == 2 and "w.json: not the JSON record xbarsim train writes" in err
    pt.with_suffix(".json").unlink()
    rc, _, err = run(capsys, pt, "--arch", "mlp", "--opt", "hidden=(48,32)", "--recipe", recipe,
                     "--data", "digits", "-o", tmp_path / "a.onnx", "--limit", 100, "-q")
    assert rc == 2 and err.count("\n") == 1
    assert "cannot load" in err and "shape of layers.1.bias (256,) (model: (48,))" in err
    rc, _, err = run(capsys, tmp_path / "none.pt", "--recipe", recipe, "-o", tmp_path / "a.onnx")
    assert rc == 2 and "none.pt: no such state dict file" in err


def test_keep_best_selects_on_held_out_training_images_not_the_test_split(tmp_path, capsys):
    p = tmp_path / "best.yaml"
    p.write_text(RECIPE.replace("retrain: {epochs: 1}", "retrain: {epochs: 3, keep: best}"))
    rc, stdout, err = run(capsys, "mlp", "--recipe", p, "--data", "digits", "-o",
                          tmp_path / "b.onnx", "--limit", 400, "--no-hw", "-q",
                          "--json", tmp_path / "s.json")
    assert rc == 0, err
    assert "compared on 40 training images held out" in stdout
    s = json.loads((tmp_path / "s.json").read_text())["admm"]
    retrain = [h["accuracy"] for h in s["history"] if h["stage"] == "retrain"]
    assert len(retrain) == 3 and s["accuracy"]["final"] == max(retrain)
    assert 1 <= s["selected_epoch"] <= 3 and 0 < s["test_accuracy"] <= 1
    import torch   # the results are bitwise reproducible at this count (and CPU, torch)
    assert s["torch_threads"] == torch.get_num_threads()
    # 40 held-out images score in steps of 1/40; the test split (400 images) does not
    assert all(round(a * 40, 6).is_integer() for a in retrain)


def test_opset_without_per_channel_dequantize_is_refused_before_training(recipe, capsys,
                                                                          tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["compress", "mlp", "--recipe", str(recipe), "-o", str(tmp_path / "x.onnx"),
              "--opset", "5"])
    assert e.value.code == 2 and "must be an integer in 13..23" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["nonet", "--recipe", "{recipe}"], "model 'nonet': not a zoo name"),
    (["mlp", "--recipe", "nope"], "recipe 'nope': no such file or shipped recipe"),
    (["lenet5", "--recipe", "{recipe}"], "recipe.layers[0].match='layers.1': matches no layer"),
    (["mlp", "--recipe", "{recipe}", "--epochs", "0"], "--epochs=0: must be >= 1"),
    (["mlp", "--arch", "lenet5", "--recipe", "{recipe}"], "--arch lenet5: only for a .pt"),
    # was "not a zoo name ..., a pretrained name (lenet5_fmnist)"
    (["lenet5_fmnist", "--arch", "lenet5", "--recipe", "{recipe}"],
     "--arch lenet5: only for a .pt state dict; lenet5_fmnist is a shipped model (its own "
     "architecture)"),
    (["mlp", "--recipe", "{recipe}", "--replicate", "0"], "--replicate=0: must be >= 1"),
    (["mlp", "--recipe", "{bad}"], "recipe.layers[0].sparsity.keep=2: must be a fraction in (0, 1]"),
    (["mlp", "--recipe", "{recipe}", "--data", "{tmp}/nodata"], "nodata"),
    # ignored before: a shipped trained model has its options
    (["lenet5_fmnist", "--recipe", "{recipe}", "--opt", "width=2"],
     "--opt width=2: lenet5_fmnist is a shipped trained model with fixed options"),
    (["mlp", "--recipe", "{recipe}", "--preset", "small", "--set", "xbar.rows=0"], "xbar.rows"),
    (["mlp", "--recipe", "{tiny}", "--preset", "small"],
     "--preset small: on these crossbars recipe.layers[0].sparsity.n=32: nonzeros per column "
     "segment must be an integer in 1..16"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, recipe, capsys, argv, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("keep: 0.5", "keep: 2"))
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(RECIPE.replace("structure: blocks, keep: 0.5", "structure: tinyadc, n: 32"))
    argv = [a.format(recipe=recipe, bad=bad, tiny=tiny, tmp=tmp_path) for a in argv]
    rc, _, err = run(capsys, *argv, "-o", tmp_path / "x.onnx", "--limit", 50, "-q")
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("out, extra, message", [
    (".", [], "-o '.': must name a file to write"),
    ("{tmp}", [], "must name a file to write"),
    ("{tmp}/x.ckpt", [], "x.ckpt: .ckpt is the run's checkpoint (x.ckpt); name the ONNX"),
    ("{tmp}/x.onnx", ["--json", "{tmp}/x.onnx"], "x.onnx: is also the run's admm output"),
    ("{tmp}/x.onnx", ["--baseline", "--json", "{tmp}/x-magnitude.ckpt"],
     "x-magnitude.ckpt: is also the run's magnitude checkpoint"),
    ("{tmp}/file/x.onnx", [], "file"),              # a file where the folder would go
    ("{tmp}/x.onnx", ["--json", "{tmp}/file/s.json"], "file"),
])
def test_bad_output_paths_are_refused_before_any_data_is_loaded(tmp_path, recipe, capsys,
                                                                 monkeypatch, out, extra,
                                                                 message):
    import models.data
    monkeypatch.setattr(models.data, "load_splits",
                        lambda *a, **k: pytest.fail("loaded data before checking the paths"))
    (tmp_path / "file").write_text("a file, not a folder")
    argv = [a.format(tmp=tmp_path) for a in ["mlp", "--recipe", str(recipe), "-o", out, *extra]]
    rc, _, err = run(capsys, *argv, "-q")
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_refused_before_training(recipe, capsys):
    # root may write anywhere chmod forbids; /proc takes no new files even from root
    rc, _, err = run(capsys, "mlp", "--recipe", str(recipe), "-o", "/proc/x.onnx", "-q")
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: -o /proc/x.onnx: cannot write files in /proc")


def test_the_input_model_is_never_an_output_and_a_bad_recipe_makes_no_folder(tmp_path, recipe,
                                                                             capsys):
    from models import build
    pt = tmp_path / "w.pt"
    torch.save(build("mlp", seed=3).state_dict(), pt)
    pt.with_suffix(".json").write_text('{"model": "mlp"}')
    for extra in (["-o", pt], ["-o", tmp_path / "x.onnx", "--json", pt.with_suffix(".json")]):
        rc, _, err = run(capsys, pt, "--recipe", recipe, *extra, "-q")
        assert rc == 2 and ("w.pt" in err or "w.json" in err)
        assert "is the input" in err or "is also the run's input" in err
    assert pt.stat().st_size > 1000     # untouched
    rc, _, err = run(capsys, "mlp", "--recipe", tmp_path / "none.yaml", "-o",
                     tmp_path / "new" / "x.onnx", "--json", tmp_path / "other" / "s.json")
    assert rc == 2 and "none.yaml" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "other").exists()


def test_pow2_fold_recipe_through_the_cli(tmp_path, capsys):
    """``pow2: fold`` from a recipe file: power-of-two scales in the ONNX file, the output
    scale printed and in the summary; a model it cannot fold is refused in one line."""
    import math
    p = tmp_path / "fold.yaml"
    p.write_text(RECIPE.replace("quant: {bits: 6}", "quant: {bits: 6, pow2: fold}"))
    out = tmp_path / "mlp.onnx"
    rc, stdout, err = run(capsys, "mlp", "--recipe", p, "--data", "digits", "-o", out,
                          "--limit", 400, "-q", "--no-hw", "--json", tmp_path / "s.json")
    assert rc == 0, err
    scale = json.loads((tmp_path / "s.json").read_text())["admm"]["output_scale"]
    assert scale != 1.0 and f"logits times {scale:.6g}" in stdout
    from onnx import numpy_helper
    scales = [float(numpy_helper.to_array(t)) for t in onnx.load(out).graph.initializer
              if t.name.endswith("_scale")]
    assert len(scales) == 2 and all(2.0 ** round(math.log2(s)) == s for s in scales)
    # the zoo's LSTM classifier: torch.fx cannot trace its loop over time steps
    p.write_text(RECIPE.replace("[layers.1, layers.3]", "'*'")
                 .replace("quant: {bits: 6}", "quant: {bits: 6, pow2: fold}"))
    rc, _, err = run(capsys, "lstm", "--recipe", p, "--data", "digits", "-o", out, "-q",
                     "--no-hw")
    assert rc == 2 and err.startswith("error: pow2 fold:") and len(err.splitlines()) == 1


def test_state_dict_and_record_errors_name_their_culprit(tmp_path, recipe, capsys):
    """torch named a non-tensor entry only on its dropped second line; an error from the
    record's model or options did not say they came from the record."""
    from models import build
    pt = tmp_path / "w.pt"
    torch.save({**build("mlp", seed=3).state_dict(), "layers.1.weight": 3}, pt)
    args = ("--recipe", recipe, "--data", "digits", "-o", tmp_path / "a.onnx", "--limit", 100,
            "-q")
    rc, _, err = run(capsys, pt, "--arch", "mlp", *args)
    assert rc == 2 and err.count("\n") == 1
    assert "cannot load " in err and "layers.1.weight is an int, not a tensor" in err
    for record, message in (({"model": "nosuch"}, "unknown model 'nosuch'"),
                            ({"model": "mlp", "model_kwargs": {"bogus": 1}}, "bogus"),
                            # a TypeError (unhashable list); "no w.json beside it"
                            ({"model": ["mlp"]}, "not the JSON record xbarsim train writes "
                                                 "('model' a zoo name, 'model_kwargs' an "
                                                 "object; it has model ['mlp']); pass --arch"),
                            ({"foo": 1}, "it has no 'model'); pass --arch"),
                            ({"model": "mlp", "model_kwargs": [1]}, "it has model_kwargs [1]"),
                            # no --opt was given: its Python-literals hint would mislead
                            ({"model": "mlp", "model_kwargs": {"hidden": "x"}},
                             "does not build: model 'mlp' option hidden takes a tuple of layer sizes")):
        pt.with_suffix(".json").write_text(json.dumps(record))
        rc, _, err = run(capsys, pt, *args)
        assert rc == 2 and err.count("\n") == 1
        assert "w.json: " in err and message in err and "--opt" not in err, err


def test_a_type_takes_an_before_a_capital_vowel():
    from collections import OrderedDict

    from compressor.cli import _a_type
    assert (_a_type(OrderedDict()), _a_type(1), _a_type([])) == (
        "an OrderedDict", "an int", "a list")


def test_the_untrained_warning_counts_the_data_sets_classes(tmp_path, recipe, capsys,
                                                             monkeypatch):
    """8 digits hold labels up to 6 only: chance is still 1 in 10."""
    from compressor import cli
    seen = []
    warn = cli._warn_if_untrained
    monkeypatch.setattr(cli, "_warn_if_untrained", lambda a, c, m: (seen.append(c),
                                                                     warn(a, c, m)))
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o",
                     tmp_path / "m.onnx", "--limit", 8, "--pretrain", 0, "--epochs", 1, "-q",
                     "--no-hw")
    assert rc == 0, err
    assert seen == [10]


def test_an_untrained_model_is_named_before_its_numbers_are_read(tmp_path, recipe, capsys):
    """A zoo name has fresh weights: with no pretraining its accuracy is chance, and the
    command says so (and does not when the recipe trains it first)."""
    out = tmp_path / "mlp.onnx"
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o", out,
                     "--limit", 200, "--pretrain", 0, "--epochs", 1, "-q", "--no-hw")
    assert rc == 0, err
    assert "warning: the dense 'mlp' scores" in err and "untrained, or trained on other" in err
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", "-o",
                     tmp_path / "b.onnx", "--limit", 200, "-q", "--no-hw")
    assert rc == 0 and "untrained" not in err


def test_a_tinyadc_layer_after_a_flattened_map_says_its_row_order(tmp_path, capsys):
    """LeNet-5's first FC reads a 16 x 5 x 5 map: its TinyADC rows are the chip's (h, w, c),
    in the printed summary and the JSON."""
    recipe = tmp_path / "t.yaml"
    recipe.write_text("""
name: cli_tinyadc
geometry: {rows: 128, cols: 128, weight_bits: 4}
admm: {rounds: 1}
retrain: {epochs: 1}
layers:
  - match: classifier.1
    sparsity: {structure: tinyadc, n: 16}
    quant: {bits: 4}
""")
    rc, stdout, err = run(capsys, "lenet5", "--recipe", recipe, "--data", "digits", "-o",
                          tmp_path / "l.onnx", "--limit", 200, "--pretrain", 1, "-q",
                          "--no-hw", "--json", tmp_path / "s.json")
    assert rc == 0, err
    line = next(t for t in stdout.splitlines() if t.strip().startswith("classifier.1"))
    assert line.endswith("(rows in the chip's (h, w, c) order)")
    layer = json.loads((tmp_path / "s.json").read_text())["admm"]["layers"]["classifier.1"]
    assert layer["crossbar_view"] == [120, 16, 5, 5] and layer["max_nonzeros_per_segment"] <= 16


def test_tinyadc_per_read_recipe_runs_its_hardware_loop_on_a_chip_that_reads_so(tmp_path,
                                                                              capsys):
    """A recipe whose geometry reads 16 rows at a time: TinyADC counts per read, and the
    hardware loop's machine reads 16 rows at a time too."""
    r = tmp_path / "tiny.yaml"
    r.write_text(RECIPE.replace("weight_bits: 8}", "weight_bits: 8, active_rows: 16}")
                 .replace("structure: blocks, keep: 0.5", "structure: tinyadc, n: 3")
                 .replace("[layers.1, layers.3]", "[layers.1, layers.3, layers.5]"))
    rc, stdout, err = run(capsys, "mlp", "--recipe", r, "--data", "digits", "-o",
                          tmp_path / "m.onnx", "--limit", 300, "--epochs", 1, "--json",
                          tmp_path / "s.json", "-q", "--hw-images", 16)
    assert rc == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "xbar.active_rows=16" in summary["hardware"]["machine"][1]
    # 3 nonzeros per read of a column, 2-bit cells, 1-bit DAC: sums <= 9, 4 bits (a read
    # of 16 unconstrained rows could need 6)
    assert summary["hardware"]["admm"]["adc_bits_max"] <= 4
    occ = summary["admm"]["layers"]["layers.1"]          # 64-row crossbars, 4 reads each
    assert occ["max_nonzeros_per_segment"] == 3           # per read, as TinyADC states it


def test_data_that_does_not_fit_the_model_is_refused_before_training(tmp_path, recipe,
                                                                      capsys):
    import numpy as np
    rng = np.random.default_rng(0)

    def npz(name, shape, classes):
        p = tmp_path / name
        np.savez(p, **{f"{k}_{s}": v for s in ("train", "test") for k, v in (
            ("x", rng.random((20, *shape), dtype=np.float32)),
            ("y", np.arange(20) % classes))})
        return p
    for data, message in ((npz("rgb.npz", (3, 32, 32), 10),
                           "does not take the data's samples of shape (3, 32, 32)"),
                          (npz("many.npz", (1, 28, 28), 12), "data's labels need 12 classes")):
        rc, _, err = run(capsys, "lenet5_fmnist", "--recipe", recipe, "--data", data, "-o",
                         tmp_path / "x.onnx", "-q")
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert message in err, err
    assert not list(tmp_path.glob("x.*"))


def test_compressing_beside_a_training_run_keeps_its_checkpoint(tmp_path, recipe, capsys):
    """``-o run/w.onnx`` next to ``xbarsim train``'s run/w.pt would make run/w.ckpt, the
    training run's own checkpoint, the compression's: refused before anything runs."""
    from models import build
    pt = tmp_path / "w.pt"
    torch.save(build("mlp", seed=3).state_dict(), pt)
    pt.with_suffix(".json").write_text('{"model": "mlp"}')
    pt.with_suffix(".ckpt").write_bytes(b"training checkpoint")
    rc, _, err = run(capsys, pt, "--recipe", recipe, "-o", tmp_path / "w.onnx", "-q")
    assert rc == 2 and "w.ckpt: is the input model's training checkpoint" in err, err
    assert pt.with_suffix(".ckpt").read_bytes() == b"training checkpoint"


@pytest.mark.parametrize("flag", ["--json", "-o"])
def test_outputs_never_overwrite_the_recipe_or_the_data(tmp_path, recipe, capsys, flag):
    """--json (or -o) naming the recipe file replaced it with the summary."""
    out = ["-o", tmp_path / "m.onnx"] if flag == "--json" else []
    before = recipe.read_text()
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", "digits", *out,
                     flag, recipe, "--epochs", 1, "--limit", 100, "-q", "--no-hw")
    assert rc == 2 and "recipe file" in err and recipe.read_text() == before


def test_outputs_never_overwrite_a_data_folders_files_or_the_shipped_model(tmp_path, recipe,
                                                                          capsys, monkeypatch):
    """-o naming test.npz in the --data folder replaced it after training; -o naming the
    shipped lenet5_fmnist.pt replaced it with ONNX bytes; a folder named like the
    checkpoint failed only at the first save."""
    from models import demo
    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(data / f"{split}.npz", x=rng.random((20, 1, 8, 8), np.float32),
                 y=rng.integers(0, 10, 20))
    before = (data / "test.npz").read_bytes()
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "--data", data, "-o",
                     data / "test.npz", "-q")
    assert rc == 2 and "test.npz: is the data file" in err
    assert (data / "test.npz").read_bytes() == before
    shipped = tmp_path / "pre"
    shipped.mkdir()
    monkeypatch.setattr(demo, "PRETRAINED_DIR", shipped)
    rc, _, err = run(capsys, "lenet5_fmnist", "--recipe", recipe, "-o",
                     shipped / "lenet5_fmnist.pt", "-q")
    assert rc == 2 and "lenet5_fmnist.pt: is the shipped pretrained model" in err
    (tmp_path / "x.ckpt").mkdir()
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "-o", tmp_path / "x.onnx", "-q")
    assert rc == 2 and "x.ckpt: a folder is there" in err


def test_an_interrupt_names_only_checkpoints_this_run_wrote(tmp_path, recipe, capsys,
                                                            monkeypatch):
    """A checkpoint left by another run was named as this run's progress, and following
    the advice then met 'from another recipe'."""
    import models.data

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(models.data, "load_splits", interrupt)
    (tmp_path / "x.ckpt").write_bytes(b"another run's checkpoint")
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "-o", tmp_path / "x.onnx",
                     "--no-resume", "-q")
    assert rc != 0 and err.strip() == "interrupted before anything was checkpointed"
    # resuming, the earlier checkpoint is kept: the message says so rather than "nothing"
    rc, _, err = run(capsys, "mlp", "--recipe", recipe, "-o", tmp_path / "x.onnx", "-q")
    assert rc != 0 and err.strip() == (f"interrupted before anything was checkpointed; "
                                       f"{tmp_path / 'x.ckpt'}, there before this run, is "
                                       f"untouched")


def test_compress_keeps_a_lower_torch_thread_count(tmp_path, recipe, capsys, monkeypatch):
    """compress raised torch to 2 threads in an OMP_NUM_THREADS=1 process; training keeps a
    caller's lower setting (a busy machine), and so does compress now."""
    import models.data

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(models.data, "load_splits", interrupt)  # right after the threads
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(capsys, "mlp", "--recipe", recipe, "-o", tmp_path / "x.onnx", "-q")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", [["export", "lenet5", "-o", "m.onnx"],
                                     ["compress", "lenet5_fmnist", "--recipe", "lenet5_block",
                                      "--data", "digits", "-o", "c.onnx"]])
def test_commands_that_need_torch_say_so_without_it(tmp_path, command):
    """Installed without the [torch] extra, compress ended in a ModuleNotFoundError
    traceback (export already said what to install)."""
    import os
    import subprocess
    import sys
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", "
                                   "name='torch')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{stub}{os.pathsep}{root}"}
    r = subprocess.run([sys.executable, "-m", "simulator.cli"] + command, cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: this command needs torch: pip install 'xbarsim[torch]' (No module named "
        "'torch')"]
