"""Design-space sweeps (``xbarsim sweep`` / ``xbarsim plot``): the same table from local
processes and from Dask, a sweep killed with SIGKILL resumes without recomputing what it
stored, an invalid grid point is one failed row, and the plots get written."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler.sweep as sw
from compiler.sweep import WALL_COLUMNS, SweepError, grid_points, parse_grid, run_sweep
from simulator.cli import main

ROOT = Path(__file__).resolve().parents[2]
GRID = ["xbar.rows=32,64,128", "adc.bits=4,6,8"]
SAMPLES = 8       # ~20 ms of values per point: a 2 ms poll still kills the sweep midway
N_POINTS = 18     # 2 models x 3 x 3


def _save(nodes, inits, in_shape, name, path):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, in_shape)], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _mlp(path):
    rng = np.random.default_rng(0)
    arr = {"w0": rng.standard_normal((64, 48)) / 8, "b0": rng.standard_normal(48) * 0.1,
           "w1": rng.standard_normal((48, 10)) / 7, "b1": rng.standard_normal(10) * 0.1}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arr.items()]
    nodes = [helper.make_node("Gemm", ["input", "w0", "b0"], ["g0"]),
             helper.make_node("Relu", ["g0"], ["h0"]),
             helper.make_node("Gemm", ["h0", "w1", "b1"], ["logits"])]
    return _save(nodes, inits, [1, 64], "mlp", path)


def _cnn(path):
    rng = np.random.default_rng(1)
    arr = {"cw": rng.standard_normal((8, 1, 3, 3)) / 3, "cb": rng.standard_normal(8) * 0.1,
           "fw": rng.standard_normal((288, 10)) / 17, "fb": np.zeros(10)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arr.items()]
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"])]
    return _save(nodes, inits, [1, 1, 8, 8], "cnn", path)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return [str(_mlp(d / "mlp.onnx")), str(_cnn(d / "cnn.onnx"))]


@pytest.fixture(scope="module")
def local_run(model_files, tmp_path_factory):
    """The uninterrupted reference: local process pool, two workers."""
    out = tmp_path_factory.mktemp("local") / "res.csv"
    df = run_sweep(model_files, GRID, out, data="random", samples=SAMPLES, workers=2,
                   progress=False)
    return df, out


def _no_wall(df):
    return df.drop(columns=list(WALL_COLUMNS)).reset_index(drop=True)


def test_local_sweep_table(local_run):
    df, out = local_run
    assert len(df) == N_POINTS and (df["status"] == "ok").all(), df[["status", "error"]]
    assert list(df.columns[:6]) == ["model", "data", "preset", "samples", "xbar.rows",
                                    "adc.bits"]
    assert (df["preset"] == "puma").all()
    assert list(df["model"].unique()) == ["mlp", "cnn"]
    # grid order whatever order the points finished in
    assert list(df["xbar.rows"][:9]) == [32] * 3 + [64] * 3 + [128] * 3
    assert list(df["adc.bits"][:3]) == [4, 6, 8]
    assert (df["adc_bits"] == df["adc.bits"]).all()      # the widest ADC on the chip
    for col in ("latency_s", "energy_j", "energy_adc_j", "area_mm2", "crossbars",
                "adc_conversions", "top1_agreement", "rel_err", "wall_s"):
        assert df[col].notna().all(), col
    # more ADC bits: more ADC energy per conversion, and no worse outputs
    for _, g in df.groupby(["model", "xbar.rows"]):
        assert g["energy_adc_j"].is_monotonic_increasing
        assert g["rel_err"].iloc[-1] <= g["rel_err"].iloc[0]
    # both files, same table (no errors: empty in the CSV, None in Parquet)
    csv, parquet = pd.read_csv(out), pd.read_parquet(out.with_suffix(".parquet"))
    assert csv["error"].isna().all() and parquet["error"].isna().all()
    pd.testing.assert_frame_equal(csv.drop(columns="error"), parquet.drop(columns="error"),
                                  check_dtype=False)
    assert len(list(out.with_name("res.points").glob("*.json"))) == N_POINTS


def test_dask_gives_the_same_table(local_run, model_files, tmp_path):
    pytest.importorskip("distributed")
    df = run_sweep(model_files, GRID, tmp_path / "res.csv", data="random", samples=SAMPLES,
                   executor="dask", workers=2, dask_processes=False, progress=False)
    pd.testing.assert_frame_equal(_no_wall(df), _no_wall(local_run[0]))


def test_ray_gives_the_same_table(local_run, model_files, tmp_path):
    # ray is optional (pip install 'ray[default]'); a local one is started for the run and
    # shut down after it, while a session the caller started is used and left running
    ray = pytest.importorskip("ray", reason="ray is not installed: the Ray executor is "
                                            "untested here")
    df = run_sweep(model_files, GRID, tmp_path / "res.csv", data="random", samples=SAMPLES,
                   executor="ray", workers=2, progress=False)
    pd.testing.assert_frame_equal(_no_wall(df), _no_wall(local_run[0]))
    assert not ray.is_initialized()
    ray.init(num_cpus=2, log_to_driver=False)
    try:
        df = run_sweep(model_files, GRID, tmp_path / "res2.csv", data="random",
                       samples=SAMPLES, executor="ray", workers=2, progress=False)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(_no_wall(df), _no_wall(local_run[0]))


def _sweep_cmd(model_files, out):
    return [sys.executable, "-m", "simulator.cli", "sweep", "--models", ",".join(model_files),
            "--grid", GRID[0], "--grid", GRID[1], "--data", "random", "--samples",
            str(SAMPLES), "--workers", "1", "-q", "-o", str(out)]


def test_killed_sweep_resumes_without_recomputing(local_run, model_files, tmp_path, capsys):
    out = tmp_path / "res.csv"
    points = tmp_path / "res.points"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # own session: SIGKILL reaches the sweep and its worker processes, nothing else
    proc = subprocess.Popen(_sweep_cmd(model_files, out), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while len(list(points.glob("*.json"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no point stored in 90 s"
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in points.glob("*.json")}
    assert 3 <= len(first) < N_POINTS, f"{len(first)} points stored before the kill"
    assert not out.exists()

    capsys.readouterr()
    assert main(_sweep_cmd(model_files, out)[3:]) == 0     # the same command, rerun
    stdout = capsys.readouterr().out
    m = re.search(r"computed (\d+), reused (\d+)", stdout)
    assert m and (int(m[1]), int(m[2])) == (N_POINTS - len(first), len(first)), stdout
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in points.glob("*.json")}
    assert len(after) == N_POINTS
    assert {k: after[k] for k in first} == first      # not one stored point rewritten
    resumed, reference = pd.read_csv(out), pd.read_csv(local_run[1])
    pd.testing.assert_frame_equal(_no_wall(resumed), _no_wall(reference))


def test_invalid_point_is_a_failed_row(tmp_path, capsys):
    out = tmp_path / "res.csv"
    rc = main(["sweep", "--models", "lenet5_fmnist", "--grid", "adc.bits=0,6",
               "--workers", "1", "-q", "-o", str(out)])
    assert rc == 0
    assert "2 points: 1 ok, 1 failed" in capsys.readouterr().out
    df = pd.read_csv(out)
    bad, good = df.iloc[0], df.iloc[1]
    assert bad["status"] == "failed" and bad["adc.bits"] == 0
    assert bad["error"].startswith("adc.bits = 0: must be") and "\n" not in bad["error"]
    assert np.isnan(bad["energy_j"])
    assert good["status"] == "ok" and good["energy_j"] > 0 and pd.isna(good["error"])
    assert pd.isna(good["rel_err"])            # no --data: timing, energy and area only
    # a value of the wrong type is a failed row too, and the Parquet file still gets written
    rc = main(["sweep", "--models", "lenet5_fmnist", "--grid", "adc.bits=6,x",
               "--workers", "1", "-q", "-o", str(tmp_path / "mixed.csv")])
    assert rc == 0
    pq = pd.read_parquet(tmp_path / "mixed.parquet")
    assert list(pq["adc.bits"]) == ["6", "x"] and list(pq["status"]) == ["ok", "failed"]


def test_plot_writes_pngs(local_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")     # said only "File exists"
    assert main(["plot", str(local_run[1]), "-o", str(tmp_path / "afile")]) == 2
    assert "afile is a file, where a folder is needed" in capsys.readouterr().err
    rc = main(["plot", str(local_run[1]), "-o", str(tmp_path / "plots")])
    assert rc == 0
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert names == {"heatmap_mlp.png", "heatmap_cnn.png", "accuracy_vs_adc_bits.png",
                     "energy_breakdown_mlp.png", "energy_breakdown_cnn.png",
                     "pareto_accuracy_energy.png"}
    for n in names:
        data = (tmp_path / "plots" / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, n
    assert capsys.readouterr().out.count("plot     -> ") == len(names)


def test_grid_parsing_and_user_errors(tmp_path, capsys, monkeypatch):
    axes = parse_grid(["xbar.rows=xbar.cols=64,128", "adc.bits=none,4"])
    assert grid_points(axes) == [
        {"xbar.rows": 64, "xbar.cols": 64, "adc.bits": None},
        {"xbar.rows": 64, "xbar.cols": 64, "adc.bits": 4},
        {"xbar.rows": 128, "xbar.cols": 128, "adc.bits": None},
        {"xbar.rows": 128, "xbar.cols": 128, "adc.bits": 4}]
    with pytest.raises(SweepError, match="given twice"):
        parse_grid(["adc.bits=4,4"])
    with pytest.raises(SweepError, match="expected KEY=V1"):
        parse_grid(["adc.bits"])
    for argv, needle in (
            (["--grid", "adc.bitz=4,6"], "adc.bitz: unknown key"),
            (["--grid", "adc.bits=4", "--executor", "ray"], "ray"),
            (["--models", "nosuchmodel"], "not an ONNX file"),
            # ignored without data, unsaid
            (["--grid", "adc.bits=4", "--samples", "5"], "--samples 5: needs --data")):
        # ray installed or not, its absence must read as one line: hide it
        monkeypatch.setitem(sys.modules, "ray", None)
        args = ["sweep", "--models", "lenet5_fmnist", "-o", str(tmp_path / "r.csv"), *argv]
        if argv[0] == "--models":
            args = ["sweep", *argv, "-o", str(tmp_path / "r.csv")]
        rc = main(args)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
        assert needle in err, err
    assert not (tmp_path / "r.csv").exists()
    assert main(["plot", str(tmp_path / "missing.csv"), "-o", str(tmp_path)]) == 2


def test_compile_options_are_grid_keys(model_files, tmp_path):
    # compile.replicate goes to compile_model, into the table and into the point's hash
    cnn = model_files[1]
    df = run_sweep([cnn], ["compile.replicate=1,3,0"], tmp_path / "r.csv", data="random",
                   samples=2, workers=1, progress=False)
    assert list(df["compile.replicate"]) == [1, 3, 0]
    assert list(df["status"]) == ["ok", "ok", "failed"]
    assert "replicate = 0" in df["error"].iloc[2]
    one, three = df.iloc[0], df.iloc[1]
    assert three["mvmus"] > one["mvmus"] and three["latency_s"] < one["latency_s"]
    assert one["rel_err"] == three["rel_err"]                      # same integers
    assert len({p.stem for p in (tmp_path / "r.points").glob("*.json")}) == 3
    # checked before compiling, like a config value: no valid point stops the sweep
    with pytest.raises(SweepError, match=r"compile.replicate = none: must be an integer"):
        run_sweep([cnn], ["compile.replicate=none,0"], tmp_path / "r2.csv", workers=1,
                  progress=False)
    with pytest.raises(SweepError, match="adc.bits: given to both --set and --grid"):
        run_sweep([cnn], ["adc.bits=4,8"], tmp_path / "r3.csv", overrides=["adc.bits=6"],
                  workers=1, progress=False)


def test_a_tile_memory_too_small_is_a_column(tmp_path):
    """An eDRAM too small for a tile's maps was costed as if it fit with every row "ok" and
    nothing in the table to say so."""
    lenet = Path(__file__).parents[2] / "models" / "pretrained" / "lenet5_fmnist.onnx"
    df = run_sweep([lenet], ["tile.edram_kb=1,64"], tmp_path / "r.csv", workers=1,
                   progress=False)
    small, big = df.iloc[0], df.iloc[1]
    assert small["tiles_over_edram"] >= 1 and big["tiles_over_edram"] == 0
    assert small["words_per_tile_max"] == big["words_per_tile_max"] > 512


def test_vfu_cores_is_a_grid_key(tmp_path):
    # own cores for the pool: the conv after it no longer waits for the pool's loop
    rng = np.random.default_rng(2)
    arr = {"cw": rng.standard_normal((8, 1, 3, 3)) / 3, "cb": rng.standard_normal(8) * 0.1,
           "dw": rng.standard_normal((8, 8, 3, 3)) / 8, "db": rng.standard_normal(8) * 0.1,
           "fw": rng.standard_normal((72, 10)) / 9, "fb": np.zeros(10)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arr.items()]
    nodes = [helper.make_node("Conv", ["input", "cw", "cb"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "dw", "db"], ["d"], kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"])]
    model = str(_save(nodes, inits, [1, 1, 12, 12], "pooled", tmp_path / "pooled.onnx"))
    df = run_sweep([model], ["compile.vfu_cores=own,shared,spread"], tmp_path / "r.csv",
                   data="random", samples=2, workers=1, progress=False)
    assert list(df["status"]) == ["ok", "ok", "failed"], df[["status", "error"]]
    assert "compile.vfu_cores = 'spread': must be one of own, shared" in df["error"].iloc[2]
    own, shared = df.iloc[0], df.iloc[1]
    assert (own["vfu_cores"], shared["vfu_cores"]) == ("own", "shared")   # the kept placement
    assert own["cores"] == shared["cores"] + 1 and own["latency_s"] < shared["latency_s"]
    assert own["rel_err"] == shared["rel_err"]                     # same integers


def test_output_names_with_dots_keep_their_own_tables(model_files, tmp_path):
    from compiler.sweep import results_paths
    assert results_paths(tmp_path / "s.adc.csv")["csv"] == tmp_path / "s.adc.csv"
    assert results_paths(tmp_path / "s.adc")["parquet"] == tmp_path / "s.adc.parquet"
    # an upper-case suffix names the table too (it gave results.CSV.csv)
    assert results_paths(tmp_path / "r.CSV")["csv"] == tmp_path / "r.csv"
    for name in ("s.x.csv", "s.y.csv"):
        run_sweep([model_files[0]], ["adc.bits=6"], tmp_path / name, workers=1,
                  progress=False)
    assert (tmp_path / "s.x.csv").is_file() and (tmp_path / "s.y.csv").is_file()


def test_a_crashed_point_exits_nonzero_and_is_not_stored(model_files, tmp_path, capsys,
                                                         monkeypatch):
    """An accident (a worker that died, a bug) leaves the table short: exit 1 with a line
    that says to rerun; a point's own failure (invalid config) is a result, exit 0."""
    import compiler.sweep as sw

    def crash(jobs, workers, points_dir):
        for i in range(len(jobs)):
            yield i, sw._crashed(RuntimeError("boom"))
    monkeypatch.setattr(sw, "_run_local", crash)
    out = tmp_path / "r.csv"
    rc = main(["sweep", "--models", str(model_files[0]), "--grid", "adc.bits=6",
               "--workers", "1", "-q", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "1 point(s) crashed and are not in the table" in err
    assert not list((tmp_path / "r.points").glob("*.json"))


def test_files_of_one_name_in_two_folders_get_distinct_labels(model_files, tmp_path):
    import shutil
    for d in ("dense", "pruned"):
        (tmp_path / d).mkdir()
        shutil.copy(model_files[0], tmp_path / d / "net.onnx")
    df = run_sweep([tmp_path / "dense" / "net.onnx", tmp_path / "pruned" / "net.onnx"],
                   ["adc.bits=6"], tmp_path / "r.csv", workers=1, progress=False)
    assert list(df["model"]) == ["dense/net", "pruned/net"]
    for d in ("a/out", "b/out"):       # the folders differ one level up: as many as needed
        (tmp_path / d).mkdir(parents=True)
        shutil.copy(model_files[0], tmp_path / d / "net.onnx")
    df = run_sweep([tmp_path / "a/out/net.onnx", tmp_path / "b/out/net.onnx"],
                   ["adc.bits=6"], tmp_path / "r3.csv", workers=1, progress=False)
    assert list(df["model"]) == ["a/out/net", "b/out/net"]
    with pytest.raises(SweepError, match="is given twice"):
        run_sweep([model_files[0], model_files[0]], ["adc.bits=6"], tmp_path / "r2.csv",
                  workers=1, progress=False)


def test_accuracy_plot_keeps_crossbar_columns_apart_when_they_vary_on_their_own(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compiler.sweep_plots import plot_accuracy_vs_adc
    rows = [{"model": "m", "xbar.rows": r, "xbar.cols": c, "adc.bits": b,
             "accuracy": 0.5 + 0.01 * b, "rel_err": 0.01, "status": "ok"}
            for r in (64, 128) for c in (32, 64) for b in (4, 6)]
    df = pd.DataFrame(rows)

    class Keep:                      # pyplot, keeping the figure the plot closes
        def __getattr__(self, name):
            return getattr(plt, name)

        def subplots(self, *a, **k):
            self.fig, axes = plt.subplots(*a, **k)
            return self.fig, axes
    keep = Keep()
    plot_accuracy_vs_adc(df, ["xbar.rows", "xbar.cols", "adc.bits"], tmp_path, keep)
    labels = [t.get_text() for t in keep.fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 4 and all("xbar.cols=" in t for t in labels), labels


def test_model_lists_keep_commas_inside_zoo_options():
    from compiler.sweep import _parse_model_spec, split_models
    assert split_models("lenet5_fmnist, mlp:hidden=(64,32),vgg8:width=0.25") == [
        "lenet5_fmnist", " mlp:hidden=(64,32)", "vgg8:width=0.25"]
    assert _parse_model_spec("mlp:hidden=(64,32)") == ("mlp", {"hidden": (64, 32)})
    assert _parse_model_spec("gru:bidirectional=true") == ("gru", {"bidirectional": True})


@pytest.fixture
def inline(monkeypatch):
    """The local executor evaluating points in this process: no worker start-up, for tests
    of the sweep's bookkeeping (and monkeypatches reach the points)."""
    monkeypatch.setattr(sw, "_run_local", lambda jobs, workers, points_dir: (
        (i, sw.evaluate_point(task, data)) for i, (task, data) in enumerate(jobs)))


def test_stored_points_are_recomputed_after_a_code_change(model_files, tmp_path, inline,
                                                          monkeypatch):
    """A point's key holds a fingerprint of the simulator's and compiler's sources: after
    a change to the cost model a rerun into the same RESULTS.points/ recomputes."""
    fp = sw.code_fingerprint()
    assert len(fp) == 16 and sw.code_fingerprint() is fp            # once per process
    out = tmp_path / "r.csv"

    def sweep():
        df = run_sweep([model_files[0]], ["adc.bits=6"], out, workers=1, progress=False)
        return df.attrs["computed"], df.attrs["cached"]
    assert sweep() == (1, 0)
    assert sweep() == (0, 1)                                       # same code: reused
    monkeypatch.setattr(sw, "code_fingerprint", lambda: "edited-simulator")
    assert sweep() == (1, 0)                                       # other code: recomputed
    assert len(list((tmp_path / "r.points").glob("*.json"))) == 2
    # a worker whose code differs from the sweep's refuses the point (not stored)
    res = sw.evaluate_point({"code": fp, "model_path": model_files[0], "preset": "puma",
                             "overrides": []})
    assert not res["store"] and "differs from the sweep's" in res["row"]["error"]


_evaluate_point = sw.evaluate_point


def _die_on_adc5(task, data):
    """evaluate_point in a worker that dies on adc.bits=5 (a segfault, an OOM kill)."""
    if "adc.bits=5" in task["overrides"]:
        os._exit(1)
    return _evaluate_point(task, data)


def test_a_worker_that_dies_takes_only_its_own_point(model_files, tmp_path, capsys,
                                                    monkeypatch):
    # picklable by reference: the spawned workers import this module and run it
    monkeypatch.setattr(sw, "evaluate_point", _die_on_adc5)
    out = tmp_path / "r.csv"
    argv = ["sweep", "--models", str(model_files[0]), "--grid", "adc.bits=4,5,6",
            "--workers", "2", "-q", "-o", str(out)]
    assert main(argv) == 1
    std = capsys.readouterr()
    assert "1 point(s) crashed and are not in the table" in std.err
    df = pd.read_csv(out)                                          # the table is written
    assert list(df["status"]) == ["ok", "failed", "ok"]
    assert "worker process died on this point" in df["error"][1]
    assert "failed: mlp adc.bits=5: worker failed" in std.out
    assert len(list((tmp_path / "r.points").glob("*.json"))) == 2   # not the crashed one
    assert main(argv) == 1                                         # retried, not reused
    assert "computed 1, reused 2" in capsys.readouterr().out


def test_set_overrides_resolve_with_each_point(model_files, tmp_path, inline):
    # --set xbar.active_rows=200 is valid beside 256 rows, not beside 128 (nor the preset's)
    df = run_sweep([model_files[0]], ["xbar.rows=xbar.cols=128,256"], tmp_path / "r.csv",
                   overrides=["xbar.active_rows=200"], workers=1, progress=False)
    assert list(df["status"]) == ["failed", "ok"]
    assert "xbar.active_rows = 200: must be <= xbar.rows = 128" in df["error"][0]
    assert list(df["set"]) == ["xbar.active_rows=200"] * 2      # the table says so
    with pytest.raises(SweepError, match=r"no point of the sweep has a valid config; the "
                                         r"first \(xbar.rows=64 xbar.cols=64\): xbar.active"):
        run_sweep([model_files[0]], ["xbar.rows=xbar.cols=64,128"], tmp_path / "r2.csv",
                  overrides=["xbar.active_rows=200"], workers=1, progress=False)
    with pytest.raises(Exception, match="xbar.active_rowz: unknown key"):   # typos: up front
        run_sweep([model_files[0]], ["adc.bits=4,6"], tmp_path / "r3.csv",
                  overrides=["xbar.active_rowz=200"], workers=1, progress=False)
    assert not (tmp_path / "r2.csv").exists() and not (tmp_path / "r3.csv").exists()


def test_dict_grids_take_numpy_arrays_and_scalars():
    pts = grid_points(parse_grid({"adc.bits": np.arange(4, 6),
                                  "xbar.rows": [np.int64(64)], "noise.seed": np.int32(3)}))
    assert pts == [{"adc.bits": 4, "xbar.rows": 64, "noise.seed": 3},
                   {"adc.bits": 5, "xbar.rows": 64, "noise.seed": 3}]
    assert all(type(v) is int for p in pts for v in p.values())     # Python, not numpy
    assert grid_points(parse_grid({"adc.mode": "clip"})) == [{"adc.mode": "clip"}]


def test_none_is_labelled_by_its_key_and_int_axes_stay_ints(model_files, tmp_path, inline):
    from compiler.sweep_plots import _fmt, plot_results
    assert [_fmt(None, k) for k in ("adc.bits", "xbar.active_rows", "node.mesh_cols",
                                    "noise.on_off_ratio", "compile.replicate")] == [
        "ideal", "all", "square", "inf", "none"]
    assert _fmt(float("nan"), "xbar.active_rows") == "all" and _fmt(32.0, "xbar.rows") == "32"
    out = tmp_path / "r.csv"
    df = run_sweep([model_files[0]], ["xbar.active_rows=none,32"], out, workers=1,
                   progress=False)
    assert str(df["xbar.active_rows"].dtype) == "Int64"
    col = out.read_text().splitlines()[0].split(",").index("xbar.active_rows")
    assert [line.split(",")[col] for line in out.read_text().splitlines()[1:]] == ["", "32"]
    assert list(pd.read_parquet(out.with_suffix(".parquet"))["xbar.active_rows"].fillna(0)) \
        == [0, 32]
    assert [p.name for p in plot_results(df, tmp_path / "plots")] == [
        "energy_breakdown_mlp.png"]                          # an Int64 axis plots as well


def test_errors_name_the_grid_text_and_failures_their_grid_values(model_files, tmp_path,
                                                                 capsys, inline):
    with pytest.raises(SweepError, match=r"^grid 'adc.bits=4,,6': an empty value; give a"):
        parse_grid(["adc.bits=4,,6"])
    assert main(["sweep", "--models", str(model_files[0]), "--grid", "adc.bits=0,6",
                 "--grid", "xbar.active_rows=none", "-q", "-o", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"failed: mlp adc.bits=0 xbar.active_rows=none: adc.bits = 0: must be .*"
                     r" \[point [0-9a-f]{24}\]", out), out
    assert "2 points: 1 ok, 1 failed; computed 2, reused 0" in out   # the invalid one too


def test_a_sweep_whose_points_all_fail_exits_nonzero_and_an_unnamed_output_is_refused(
        model_files, tmp_path, capsys, inline):
    # every point too big for a one-core node: each fails on its own (not a bad config)
    assert main(["sweep", "--models", str(model_files[0]), "--set", "node.tiles=1", "--set",
                 "tile.cores=1", "--set", "core.mvmus=1", "--grid", "xbar.rows=xbar.cols=4,8",
                 "-q", "-o", str(tmp_path / "r.csv")]) == 1
    assert "error: all 2 points failed" in capsys.readouterr().err
    for out in ("", ".", str(tmp_path) + "/.."):
        assert main(["sweep", "--models", str(model_files[0]), "--grid", "adc.bits=6", "-q",
                     "-o", out]) == 2
        assert "name the results table, e.g. -o sweep.csv" in capsys.readouterr().err


def test_an_axis_stored_as_text_for_a_failed_value_plots_in_number_order():
    """adc.bits=4,10,x: the x point failed, the column was text, and 10 plotted before 4."""
    from compiler.sweep_plots import _order, numeric_axes
    df = pd.DataFrame({"model": ["m"] * 3, "adc.bits": ["10", "4", "x"],
                       "status": ["ok", "ok", "failed"]})
    ok = numeric_axes(df[df["status"] == "ok"], ["adc.bits"])
    assert _order(ok["adc.bits"]) == [4, 10]
    assert not pd.api.types.is_numeric_dtype(numeric_axes(df, ["adc.bits"])["adc.bits"])


def test_the_error_panel_shows_models_without_accuracy(tmp_path):
    """A model whose output is not a class vector has rel_err but no top-1 figure: it was
    dropped from the error panel, and with no accuracy anywhere the figure was not drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compiler.sweep_plots import plot_accuracy_vs_adc
    df = pd.DataFrame({"model": ["m"] * 3, "adc.bits": [4, 6, 8], "status": ["ok"] * 3,
                       "energy_j": [1e-6] * 3, "rel_err": [0.3, 0.05, 0.001],
                       "top1_agreement": [np.nan] * 3})
    drawn = []
    real = plt.subplots

    def spy(*a, **k):
        fig, axes = real(*a, **k)
        drawn.append(axes)
        return fig, axes
    plt.subplots = spy
    try:
        paths = plot_accuracy_vs_adc(df, ["adc.bits"], tmp_path, plt)
    finally:
        plt.subplots = real
    assert [p.name for p in paths] == ["accuracy_vs_adc_bits.png"]
    (a1, a2), = drawn
    assert not a1.lines and list(a2.lines[0].get_ydata()) == [0.3, 0.05, 0.001]


def test_heatmap_axes_skip_text_columns_and_mirrored_crossbar_columns():
    """pandas >= 3 reads a text axis (adc.mode, compile.vfu_cores) as StringDtype, which
    numpy's issubdtype refused with a traceback; and xbar.cols mirroring xbar.rows (the
    README's ``xbar.rows=xbar.cols=`` grid) made rows x cols the heatmap, a diagonal."""
    from compiler.sweep_plots import _heat_axes
    df = pd.DataFrame({"xbar.rows": [64, 64, 128, 128], "xbar.cols": [64, 64, 128, 128],
                       "tile.control_streams": [1, 8, 1, 8],
                       "adc.mode": pd.array(["clip", "scale"] * 2, dtype="string")})
    grid = ["xbar.rows", "xbar.cols", "tile.control_streams", "adc.mode"]
    assert _heat_axes(df, grid) == ("xbar.rows", "tile.control_streams")
    assert _heat_axes(df, ["adc.mode", "xbar.rows"]) is None


def test_an_interrupted_sweep_says_how_to_resume(model_files, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(sw, "run_sweep", interrupted)
    assert main(["sweep", "--models", str(model_files[0]), "--grid", "adc.bits=6", "-q",
                 "-o", str(tmp_path / "r.csv")]) == 130
    assert re.search(r"interrupted: finished points are kept in .*r\.points/; rerun the same "
                     r"command to resume", capsys.readouterr().err)


def test_flags_that_would_be_ignored_or_misread_are_refused(model_files, tmp_path):
    with pytest.raises(SweepError, match="--address tcp://x:1: a cluster address needs "
                                         "--executor dask or ray"):
        run_sweep([model_files[0]], ["adc.bits=6"], tmp_path / "r.csv", address="tcp://x:1",
                  progress=False)
    with pytest.raises(SweepError, match="--workers 2 with --address tcp://x:1: an existing "
                                         "cluster"):
        run_sweep([model_files[0]], ["adc.bits=6"], tmp_path / "r.csv", address="tcp://x:1",
                  executor="dask", workers=2, progress=False)
    with pytest.raises(SweepError, match=r"--set compile.replicate: a compile option; give it "
                                         r"as --grid compile.replicate=VALUE"):
        run_sweep([model_files[0]], ["adc.bits=6"], tmp_path / "r.csv",
                  overrides=["compile.replicate=2"], progress=False)


def test_a_zoo_export_is_redone_when_the_model_code_or_torch_changes(tmp_path, monkeypatch):
    """Exports cached in RESULTS.models/ were keyed by name and options alone: an edited
    model definition or another torch kept sweeping the stale graph."""
    import models
    calls = []

    def fake_export(name, path, **kw):
        calls.append(name)
        Path(path).write_bytes(b"onnx")
    monkeypatch.setattr(models, "export", fake_export)
    assert len(sw.export_fingerprint()) == 10
    _, a = sw.resolve_model("vgg8:width=0.25", tmp_path)
    _, again = sw.resolve_model("vgg8:width=0.25", tmp_path)
    assert again == a and calls == ["vgg8"]                         # reused
    monkeypatch.setattr(sw, "export_fingerprint", lambda: "edited")
    _, b = sw.resolve_model("vgg8:width=0.25", tmp_path)
    assert b != a and b.name == "vgg8-width=0.25.edited.onnx" and calls == ["vgg8"] * 2


def _report_sigint(q):
    import signal
    q.put(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    from compiler.sweep import _init_local_worker
    _init_local_worker(None)
    q.put(signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def test_workers_start_deaf_to_ctrl_c_until_their_initializer():
    """A Ctrl-C landing while a spawned worker still imports printed a traceback there
    (found by review); workers now begin with SIGINT ignored, and their initializer gives
    it back, so a later Ctrl-C still stops them at once. The parent's handler is kept."""
    import multiprocessing as mp
    import signal

    from compiler.sweep import _spawned_deaf
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    before = signal.getsignal(signal.SIGINT)
    with _spawned_deaf():
        p = ctx.Process(target=_report_sigint, args=(q,))
        p.start()
    assert signal.getsignal(signal.SIGINT) is before
    assert q.get(timeout=60) is True and q.get(timeout=60) is True
    p.join(60)
    assert p.exitcode == 0


@pytest.fixture
def no_points(monkeypatch):
    """The local executor failing the test: for requests refused before any point runs."""
    def computed(jobs, workers, points_dir):
        raise AssertionError(f"{len(jobs)} point(s) computed before the refusal")
        yield
    monkeypatch.setattr(sw, "_run_local", computed)


def test_a_results_path_that_cannot_be_written_is_refused_before_any_point(
        model_files, tmp_path, no_points):
    """-o naming a folder was found by write_table, after every point was computed."""
    (tmp_path / "r.csv").mkdir()
    with pytest.raises(SweepError, match=r"r\.csv is a folder; name a results file"):
        run_sweep([model_files[0]], ["adc.bits=4,6"], tmp_path / "r.csv", progress=False)
    (tmp_path / "s.points").write_text("not a folder")
    with pytest.raises(SweepError, match=r"s\.points is a file, where the sweep keeps its "
                                         r"points folder"):
        run_sweep([model_files[0]], ["adc.bits=4,6"], tmp_path / "s.csv", progress=False)
    if Path("/proc/self").is_dir():   # root writes anywhere chmod forbids, not in /proc
        with pytest.raises(SweepError, match=r"^-o /proc/r\.csv: cannot write files in /proc"):
            run_sweep([model_files[0]], ["adc.bits=4,6"], "/proc/r.csv", progress=False)


def test_random_data_needs_a_sample_too(model_files, tmp_path, no_points):
    for n in (0, -3):     # was a numpy error from the random batch of n inputs
        with pytest.raises(SweepError, match=rf"^samples = {n}: must be >= 1"):
            run_sweep([model_files[0]], ["adc.bits=6"], tmp_path / "r.csv", data="random",
                      samples=n, progress=False)


def test_grid_values_are_read_as_their_field_reads_them():
    """--grid read every value untyped: adc.model=ideal (a model's name) became none."""
    assert parse_grid(["adc.model=ideal,puma"])[0].values == ("ideal", "puma")
    assert parse_grid(["xbar.mapping=none"])[0].values == ("none",)
    # typed keys as before: none and numbers; compile options and unknown keys untyped
    assert parse_grid(["adc.bits=none,4"])[0].values == (None, 4)
    assert parse_grid(["compile.replicate=1,none"])[0].values == (1, None)
    assert parse_grid(["adc.bitz=4"])[0].values == (4,)
    assert parse_grid(["xbar.rows=xbar.cols=64"])[0].values == (64,)


def test_a_compile_option_typo_names_the_compile_options(model_files, tmp_path, no_points):
    from simulator.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^compile\.replicat: unknown compile option; use "
                                          r"compile\.replicate, compile\.vfu_cores$"):
        run_sweep([model_files[0]], ["compile.replicat=1,2"], tmp_path / "r.csv",
                  progress=False)


def test_a_parquet_table_without_pyarrow_says_what_to_do(tmp_path, monkeypatch, capsys):
    def no_engine(*a, **k):    # what pandas raises without pyarrow or fastparquet
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow'.")
    monkeypatch.setattr(pd, "read_parquet", no_engine)
    table = tmp_path / "r.parquet"
    table.write_bytes(b"PAR1")
    assert main(["plot", str(table), "-o", str(tmp_path / "plots")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"r\.parquet: reading Parquet needs pyarrow \(pip install pyarrow\); or "
                     r"give the \.csv beside it", err), err


def test_default_workers_are_the_cpus_this_process_may_use(model_files, tmp_path,
                                                           monkeypatch):
    """os.cpu_count() counts the machine's CPUs, not those taskset or a job's cgroup give."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    seen = []

    def record(jobs, workers, points_dir):
        seen.append(workers)
        return ((i, sw.evaluate_point(task, data)) for i, (task, data) in enumerate(jobs))
    monkeypatch.setattr(sw, "_run_local", record)
    # 3 points: the affinity gives 2, cpu_count 3, a constant 1
    run_sweep([model_files[0]], ["adc.bits=4,5,6"], tmp_path / "r.csv", progress=False)
    assert seen == [2]


def test_one_zoo_model_under_two_option_orders_is_given_twice(model_files, tmp_path,
                                                              monkeypatch, no_points):
    """Its two labels hid that both resolve to one exported file: every point twice."""
    import shutil

    import models
    monkeypatch.setattr(models, "export",
                        lambda name, path, **kw: shutil.copy(model_files[0], path))
    with pytest.raises(SweepError, match=r"models 'mlp:hidden=\(32,\):bias=True' and "
                                         r"'mlp:bias=True:hidden=\(32,\)' are the same model"):
        run_sweep(["mlp:hidden=(32,):bias=True", "mlp:bias=True:hidden=(32,)"],
                  ["adc.bits=6"], tmp_path / "r.csv", progress=False)


def test_an_unknown_data_set_lists_the_sweeps_own_too():
    with pytest.raises(SweepError, match=r"^unknown data set 'nope'; use demo, random, "
                                         r"fashion-mnist, digits"):
        sw.load_data("nope", 4)


def test_an_existing_folder_or_other_file_is_no_results_path(model_files, tmp_path, no_points):
    """-o FOLDER wrote FOLDER.csv beside it, and -o model.onnx model.onnx.csv."""
    with pytest.raises(SweepError, match=r"is a folder; name a results file to write, e\.g\. "
                                         r"-o .*sweep\.csv$"):
        run_sweep([model_files[0]], ["adc.bits=6"], tmp_path, progress=False)
    with pytest.raises(SweepError, match=r"mlp\.onnx is an existing file, not a results "
                                         r"table; name a results file"):
        run_sweep([model_files[0]], ["adc.bits=6"], model_files[0], progress=False)
    assert not list(tmp_path.parent.glob(tmp_path.name + ".*"))
    assert not list(Path(model_files[0]).parent.glob("mlp.onnx.*"))


@pytest.mark.parametrize("text", ['[1, 2]', 'null', '{"format": %d}', '{"format": %d, "row": "x"}'])
def test_a_damaged_point_file_is_recomputed(model_files, tmp_path, monkeypatch, text):
    """A point file holding valid JSON of another shape crashed every rerun."""
    monkeypatch.setattr(sw, "_run_local", lambda jobs, workers, points_dir: (
        (i, sw.evaluate_point(task, data)) for i, (task, data) in enumerate(jobs)))
    out = tmp_path / "r.csv"
    run_sweep([model_files[0]], ["adc.bits=6"], out, progress=False)
    (point,) = tmp_path.joinpath("r.points").glob("*.json")
    point.write_text(text.replace("%d", str(sw.POINT_FORMAT)))
    df = run_sweep([model_files[0]], ["adc.bits=6"], out, progress=False)
    assert (df.attrs["computed"], df.attrs["cached"]) == (1, 0)
    assert list(df["status"]) == ["ok"]
    assert sw._read_point(point)["row"]["status"] == "ok"     # healed


def test_one_string_for_a_list_is_refused_and_dict_text_is_read_as_the_cli_reads_it(tmp_path):
    """A string was iterated per character ("override 'a': expected KEY=VALUE"), and a
    dict's "none" stayed text, so every point of that value failed."""
    with pytest.raises(SweepError, match=r"^grid: a list of KEY=V1,V2,\.\.\. strings, got the "
                                         r"string 'adc.bits=4,6'; wrap it in a list$"):
        parse_grid("adc.bits=4,6")
    with pytest.raises(SweepError, match=r"^overrides: a list of KEY=VALUE strings, got the "
                                         r"string 'adc.bits=6'; wrap it in a list$"):
        run_sweep([tmp_path / "m.onnx"], ["xbar.rows=64"], tmp_path / "r.csv",
                  overrides="adc.bits=6", progress=False)
    assert parse_grid({"adc.bits": ["none", 6], "adc.mode": "scale"}) == \
        parse_grid(["adc.bits=none,6", "adc.mode=scale"])
    with pytest.raises(SweepError, match=r"^grid adc.bits: an empty value"):
        parse_grid({"adc.bits": ["", 6]})


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """plot_results called matplotlib.use("Agg"): a notebook's inline figures went off for
    the rest of the session."""
    import matplotlib
    import matplotlib.pyplot as plt

    from compiler.sweep_plots import plot_results
    df = pd.DataFrame({"model": ["m", "m"], "samples": [1, 1], "adc.bits": [4, 6],
                       "latency_s": [1e-6, 1e-6], "energy_j": [1e-6, 2e-6],
                       "energy_adc_j": [1e-6, 2e-6], "area_mm2": [1.0, 1.0],
                       "status": ["ok", "ok"]})
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert plot_results(df, tmp_path) == [tmp_path / "energy_breakdown_m.png"]
        assert matplotlib.get_backend() == "svg" and not plt.get_fignums()   # none left open
    finally:
        matplotlib.use(before)


def test_a_stopped_sweep_stops_its_workers_before_it_returns(model_files, tmp_path,
                                                             monkeypatch):
    """A Ctrl-C (here: an error storing the first row) left the workers finishing their
    points to the interpreter's exit, where a second Ctrl-C hung the exit for ever."""
    import multiprocessing as mp
    written = []

    def stop_after_first(folder, key, record):
        written.append(key)
        raise KeyboardInterrupt
    monkeypatch.setattr(sw, "_write_point", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([model_files[1]], ["adc.bits=4,5,6,7,8", "xbar.rows=xbar.cols=16,32"],
                  tmp_path / "r.csv", data="random", samples=SAMPLES, workers=1,
                  progress=False)
    assert len(written) == 1 and mp.active_children() == []


def test_cluster_workers_elsewhere_get_absolute_paths_and_missing_files_are_not_stored(
        model_files, tmp_path, monkeypatch):
    # a Dask/Ray worker runs in another folder: a relative model or preset path named no
    # file there, and each point was stored as failed, reused by every later run
    import shutil
    shutil.copy(model_files[0], tmp_path / "mlp.onnx")
    shutil.copy(ROOT / "simulator" / "presets" / "small.yaml", tmp_path / "my.yaml")
    seen = []
    monkeypatch.setattr(sw, "_run_local", lambda jobs, workers, points_dir: (
        (i, seen.append(task) or sw.evaluate_point(task, data))
        for i, (task, data) in enumerate(jobs)))
    monkeypatch.chdir(tmp_path)
    df = run_sweep(["mlp.onnx"], ["adc.bits=6"], "r.csv", preset="my.yaml", workers=1,
                   progress=False)
    assert list(df["status"]) == ["ok"]
    assert Path(seen[0]["model_path"]).is_absolute() and Path(seen[0]["preset"]).is_absolute()
    monkeypatch.chdir(tmp_path.parent)      # a worker elsewhere, with the old relative paths
    for task, what in (({**seen[0], "model_path": "mlp.onnx"}, "model file mlp.onnx"),
                       ({**seen[0], "preset": "my.yaml"}, "preset file my.yaml")):
        res = sw.evaluate_point(task)
        assert not res["store"] and f"{what} does not exist on this worker" in \
            res["row"]["error"]


def test_data_for_a_model_without_inputs_is_skipped_not_a_traceback(tmp_path, inline):
    # its only "input" is an initializer; --data crashed in onnxruntime's reference run
    w = numpy_helper.from_array(np.ones((1, 10), np.float32), "input")
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "noin", [],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                          [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "noin.onnx")
    df = run_sweep([str(tmp_path / "noin.onnx")], ["adc.bits=6"], tmp_path / "r.csv",
                   data="demo", samples=4, workers=1, progress=False)
    assert list(df["status"]) == ["failed"] and "constant" in df["error"][0]
    from compiler.errors import CompilerError
    from compiler.reference import run_onnxruntime
    with pytest.raises(CompilerError, match="no inputs given"):
        run_onnxruntime(tmp_path / "noin.onnx", {})


def test_sequence_models_read_the_images_without_their_channel_axis(tmp_path, capsys,
                                                                   monkeypatch):
    # an LSTM over 28 rows of 28 pixels takes (N, 28, 28); the data are (N, 1, 28, 28):
    # it got random inputs and no accuracy, and a note printing both shapes alike
    import compiler.reference as ref
    seen = {}
    monkeypatch.setattr(ref, "run_onnxruntime", lambda path, inputs: seen.update(inputs) or {})
    images = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    batch = (images, np.array([1, 2, 3]))
    lstm = sw.ModelEntry("lstm", tmp_path / "x.onnx", "sha", {"input": (1, 28, 28)})
    sw._attach_data(lstm, batch, "demo", 3)
    assert lstm.data_name == "demo" and seen["input"].shape == (3, 28, 28)
    np.testing.assert_array_equal(seen["input"], images[:, 0])
    cnn = sw.ModelEntry("cnn", tmp_path / "x.onnx", "sha", {"input": (1, 3, 32, 32)})
    sw._attach_data(cnn, batch, "demo", 3)
    assert cnn.data_name == "random"
    assert "takes samples (3, 32, 32), not demo samples (1, 28, 28)" in capsys.readouterr().err


def test_without_pyarrow_an_earlier_parquet_is_not_left_as_this_runs_table(tmp_path,
                                                                          monkeypatch, capsys):
    paths = sw.results_paths(tmp_path / "r.csv")
    paths["parquet"].write_bytes(b"PAR1 an earlier run's table")

    def no_engine(*a, **k):
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow'.")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_engine)
    sw.write_table(pd.DataFrame({"a": [1]}), paths)
    assert paths["csv"].is_file() and not paths["parquet"].exists()
    assert "r.parquet removed" in capsys.readouterr().err
