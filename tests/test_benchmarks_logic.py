"""The benchmark scripts' own logic on tiny inputs: caching and cost accounting, option
checks, result parsing. No benchmark runs end to end here."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """A benchmark script as a module (they import ``_common`` from their own folder)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


@pytest.fixture(scope="module")
def comp():
    return _load("compression")


# -- compression.py: which runs came from the cache -----------------------------------------

def _timed(comp, monkeypatch, ckpt):
    monkeypatch.setattr(comp, "run_variant", lambda *a: "result")
    return comp.timed_run("m v", None, None, "admm", None, None, ckpt, print)


def _checkpoint(path, stage):
    import torch
    torch.save({"stage": stage, "step": 0}, path)


def test_resumed_run_is_not_cached_and_records_partial_cost(comp, monkeypatch, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    _checkpoint(ckpt, "retrain")                 # an interrupted run: compress resumes it
    assert not comp.finished_checkpoint(ckpt)
    res, timing = _timed(comp, monkeypatch, ckpt)
    assert res == "result" and timing["compress_cached"] is False
    assert timing["compress_s_partial"] is True
    cost = json.loads(ckpt.with_suffix(".seconds.json").read_text())
    assert cost["partial"] is True and cost["compress_s"] == timing["compress_s"]


def test_finished_run_is_cached_with_its_recorded_cost(comp, monkeypatch, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    _checkpoint(ckpt, "done")
    ckpt.with_suffix(".seconds.json").write_text(json.dumps({"compress_s": 12.5}))
    assert comp.finished_checkpoint(ckpt)
    _, timing = _timed(comp, monkeypatch, ckpt)
    assert timing["compress_cached"] is True and timing["compress_s_when_trained"] == 12.5
    assert "compress_s_partial" not in timing
    assert json.loads(ckpt.with_suffix(".seconds.json").read_text()) == {"compress_s": 12.5}


def test_cold_run_records_full_cost(comp, monkeypatch, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    assert not comp.finished_checkpoint(ckpt)
    _, timing = _timed(comp, monkeypatch, ckpt)
    assert timing["compress_cached"] is False and "compress_s_partial" not in timing
    assert "partial" not in json.loads(ckpt.with_suffix(".seconds.json").read_text())


def test_fold_rows_are_not_counted_as_compression_runs(comp):
    rows = [{"model": "m", "variant": "dense", "method": "-"},
            {"model": "m", "variant": "admm_blocks", "method": "admm",
             "timing": {"compress_s": 1.0, "compress_cached": True,
                        "compress_s_when_trained": 30.0}},
            {"model": "m", "variant": "admm_blocks_pow2",
             "method": f"admm, {comp.FOLD} of admm_blocks",
             "timing": {"fold_s": 0.5, "measure_s": 2.0}}]
    summary = comp.cache_summary(rows, True, 100.0)
    assert summary["compression_runs"] == 1 and summary["from_cache"] == 1
    assert summary["training_s_when_trained"] == 130.0
    assert summary["training_s_partial"] is False


# -- compression.py: the dense model's cache -------------------------------------------------

def test_dense_cache_retrains_for_other_epochs(comp, tmp_path):
    import torch
    rng = np.random.default_rng(0)
    data = (rng.random((64, 1, 4, 4), dtype=np.float32), rng.integers(0, 10, 64))

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    path = tmp_path / "dense.pt"
    assert comp.train_dense(model(), data, data, 1, path, print)["epochs"] == 1
    info = comp.train_dense(model(), data, data, 2, path, print)
    assert info["epochs"] == 2 and len(info["val_history"]) == 2
    assert comp.cached_dense_info(path, 2) == info


def test_dense_cache_name_kept_for_default_epochs(comp, tmp_path):
    assert comp.dense_cache_path(tmp_path, comp.DENSE_EPOCHS).name == "vgg_fmnist_fc2048.pt"
    assert comp.dense_cache_path(tmp_path, 5).name == "vgg_fmnist_fc2048_e5.pt"


# -- compression.py: options -----------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--dense-epochs", "0"), ("--sim-images", "-5"),
                                           ("--compress-images", "-1"),
                                           ("--sweep-images", "0"), ("--extra-seeds", "-1")])
def test_numeric_options_refused(comp, capsys, option, value):
    with pytest.raises(SystemExit):
        comp.arg_parser().parse_args([option, value])
    assert f"argument {option}: '{value}': must be an integer" in capsys.readouterr().err


def test_numeric_options_defaults_and_zero_seeds(comp):
    args = comp.arg_parser().parse_args(["--extra-seeds", "0"])
    assert (args.extra_seeds, args.dense_epochs, args.sim_images) == (0, comp.DENSE_EPOCHS, 500)


# -- compression.py: the TinyADC verdict's image count --------------------------------------

def test_lossless_images_is_what_was_checked(comp):
    assert comp.lossless_images({"images": 50, "lossless_check": {"images": 50}}) == 50
    # rows written before the count was kept: the first 200 of their chip images
    assert comp.lossless_images({"images": 120, "lossless_check": {"equal": True}}) == 120
    assert comp.lossless_images({"images": 500, "lossless_check": {"equal": True}}) == 200
    assert comp.lossless_images({"images": 500}) == 0


# -- sim_speed.py ----------------------------------------------------------------------------

def test_sim_speed_exports_over_a_stale_file(tmp_path):
    import onnx
    sim_speed = _load("sim_speed")
    (tmp_path / "mlp.onnx").write_bytes(b"stale")
    path = sim_speed.export_zoo("mlp", tmp_path)
    assert path == tmp_path / "mlp.onnx"
    onnx.checker.check_model(onnx.load(path))


def test_sim_speed_row_names_process_peak_rss():
    sim_speed = _load("sim_speed")
    mlp = _load("_common").mlp_onnx([8, 8])
    row = sim_speed.measure("tiny", mlp, (1, 8))
    assert row["process_peak_rss_mb"] > 0 and "peak_rss_mb" not in row


# -- zoo_compile.py --------------------------------------------------------------------------

def _done(rc, stdout="", stderr=""):
    return subprocess.CompletedProcess([], rc, stdout, stderr)


def test_zoo_child_row_survives_empty_and_trailing_output():
    zoo = _load("zoo_compile")
    assert zoo.child_row(_done(-9)) == (None, "exit status -9, no error output")
    assert zoo.child_row(_done(1, stderr="x\nMemoryError\n")) == (None, "MemoryError")
    assert zoo.child_row(_done(0, '{"model": "a"}\nbye\n')) == ({"model": "a"}, "")
    assert zoo.child_row(_done(0, "", "a warning")) == (
        None, "exit status 0 but no result row on stdout")


# -- active_rows.py: options checked before minutes of work ---------------------------------

@pytest.mark.parametrize("value, message", [
    ("puma,isacc", "adc.model = 'isacc': must be one of puma, isaac"),
    ("puma, puma", "'puma, puma': puma given more than once"),
    ("puma,", "'puma,': an empty name")])
def test_active_rows_refuses_bad_adc_models(capsys, value, message):
    with pytest.raises(SystemExit):
        _load("active_rows").arg_parser().parse_args(["--adc-models", value])
    assert f"argument --adc-models: {message}" in capsys.readouterr().err


def test_active_rows_options():
    ap = _load("active_rows").arg_parser()
    args = ap.parse_args(["--adc-models", " isaac , puma", "--images", "7"])
    assert (args.adc_models, args.images) == (["isaac", "puma"], 7)
    assert ap.parse_args([]).adc_models == ["puma", "isaac"]
    with pytest.raises(SystemExit):
        ap.parse_args(["--images", "-5"])


# -- puma_mlp.py: the bit-serial rows check the bit-serial path -----------------------------

def test_puma_mlp_bit_exact_runs_the_path_asked(monkeypatch):
    from compiler import compile_model
    from simulator import load_config
    puma_mlp = _load("puma_mlp")
    model = _load("_common").mlp_onnx([8, 8, 4])
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    prog, lp, _ = compile_model(model, load_config("puma", ["adc.bits=none"]),
                                calibration={"input": x}, return_ir=True)
    asked, simulate = [], puma_mlp.simulate

    def spy(*a, exact_shortcut=True, **kw):
        asked.append(exact_shortcut)
        return simulate(*a, exact_shortcut=exact_shortcut, **kw)
    monkeypatch.setattr(puma_mlp, "simulate", spy)
    assert puma_mlp.bit_exact(prog, lp, x, False) and puma_mlp.bit_exact(prog, lp, x, True)
    assert asked == [False, True]


# -- xbar_adc_sweep.py -----------------------------------------------------------------------

def test_xbar_adc_sweep_workers_default_is_run_sweeps():
    assert _load("xbar_adc_sweep").arg_parser().parse_args([]).workers is None


# -- --help prints and runs nothing ---------------------------------------------------------

@pytest.mark.parametrize("name", ["puma_mlp", "seed_tables", "area_scale"])
def test_help_and_unknown_options_run_nothing(name):
    result = BENCH / "results" / f"{name}.json"
    before = result.stat().st_mtime_ns
    script = [sys.executable, str(BENCH / f"{name}.py")]
    shown = subprocess.run(script + ["--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("usage:")
    refused = subprocess.run(script + ["--bogus"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unrecognized arguments: --bogus" in refused.stderr
    assert result.stat().st_mtime_ns == before
