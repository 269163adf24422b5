"""``xbarsim train`` / ``xbarsim export`` driven through an argparse parser, as a user would."""
import argparse

import onnx
import pytest

from models.cli import register


def run(argv):
    parser = argparse.ArgumentParser(prog="xbarsim")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_unknown_model_is_a_one_line_error(capsys):
    assert run(["train", "alexnet", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'alexnet'") and err.count("\n") == 1


def test_train_missing_data_folder(tmp_path, capsys):
    pytest.importorskip("torch")
    assert run(["train", "lenet5", "--data", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: '") and "none': no such file or folder" in err
    assert err.count("\n") == 1
    assert run(["train", "lenet5", "--data", str(tmp_path), "--quiet"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_train_digits_quick(tmp_path, capsys):
    pytest.importorskip("torch")
    argv = ["train", "lenet5", "--data", "digits", "--epochs", "1", "--limit", "100",
            "--out", str(tmp_path), "--quiet"]
    assert run(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "lenet5.onnx").is_file() and (tmp_path / "lenet5.ckpt").is_file()


def test_export(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "r.onnx"
    argv = ["export", "resnet18", "-o", str(out), "--opt", "in_channels=1",
            "--opt", "image_size=28", "--opt", "width=0.125", "--verify"]
    assert run(argv) == 0
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 28, 28]
    assert run(["export", "lenet5", "-o", str(out), "--opt", "depth=3"]) == 2
    assert capsys.readouterr().err.startswith("error: model 'lenet5' has no option depth")
    assert run(["export", "lenet5", "-o", str(out), "--weights", str(tmp_path / "no.pt")]) == 2
    assert "cannot read weights" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert run(["export", "lenet5", "-o", str(tmp_path / "file" / "x.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_bad_numbers_and_weight_files_are_one_line_errors(tmp_path, capsys):
    pytest.importorskip("torch")
    import torch

    from models.train import train
    from models.errors import ModelError
    with pytest.raises(SystemExit):                      # argparse: before any work
        run(["export", "lenet5", "-o", str(tmp_path / "x.onnx"), "--opset", "99"])
    assert "must be an integer in 9..23" in capsys.readouterr().err
    assert run(["export", "lenet5", "-o", str(tmp_path / "x.onnx"), "--opt",
                "in_channels=-1"]) == 2
    assert "option in_channels must be > 0" in capsys.readouterr().err
    torch.save(torch.zeros(3), tmp_path / "t.pt")       # a torch file, not a state dict
    assert run(["export", "lenet5", "-o", str(tmp_path / "x.onnx"), "--weights",
                str(tmp_path / "t.pt")]) == 2
    assert "t.pt holds a Tensor, not a dictionary" in capsys.readouterr().err
    with pytest.raises(ModelError, match=r"^lr = nan: must be a finite number > 0$"):
        train("mlp", "digits", lr=float("nan"), out_dir=tmp_path)


def test_torch_max_opset_matches_the_pinned_torch():
    pytest.importorskip("torch")
    from torch.onnx import _constants

    from simulator.cli import TORCH_MAX_OPSET
    assert TORCH_MAX_OPSET == _constants.ONNX_MAX_OPSET


@pytest.mark.parametrize("argv,needle", [
    (["export", "lenet5", "--opt", "in_channels=0", "-o", "{t}/x.onnx"],
     "option in_channels must be > 0"),                        # a tracer traceback before
    (["export", "lstm", "--opt", "seq_len=3.7", "-o", "{t}/x.onnx"],
     "option seq_len takes an integer, got 3.7"),              # silently 3 before
    (["export", "vgg8", "--opset", "8", "-o", "{t}/x.onnx"], "must be an integer in 9..23"),
    (["export", "mlp", "--opt", "hidden=(32,)*12", "-o", "{t}/x.onnx"],   # torch's words only
     "hidden: read as text; --opt values are Python literals"),
    (["train", "mlp", "--data", "digits", "--seed", "-1", "--out", "{t}/r"],
     "must be an integer in 0.."),
    (["train", "mlp", "--data", "digits", "--limit", "1", "--out", "{t}/r"],
     "at least 2 are needed"),
    (["train", "lstm", "--data", "digits", "--opt", "seq_len=5", "--out", "{t}/r",
      "--epochs", "1"], "is built for samples of shape (5, 28)"),   # exported for 5 steps
])
def test_model_options_and_data_that_cannot_work_are_refused(argv, needle, tmp_path, capsys):
    from simulator.cli import main
    try:
        rc = main([a.replace("{t}", str(tmp_path)) for a in argv])
    except SystemExit as e:              # argparse refuses before any work
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and needle in err, err


def test_export_never_overwrites_its_weights(tmp_path, capsys):
    import torch

    from models import build
    from simulator.cli import main
    w = tmp_path / "w.pt"
    torch.save(build("mlp", seed=0).state_dict(), w)
    before = w.read_bytes()
    rc = main(["export", "mlp", "--weights", str(w), "-o", str(w)])
    assert rc == 2 and "is the --weights file" in capsys.readouterr().err
    assert w.read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "seed=3"],        # TypeError before
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "batch=2"],
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "path={t}/y.onnx"],
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "name=x"],
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "atol=1"],        # silently taken
    ["export", "lenet5", "-o", "{t}/x.onnx", "--opt", "input_shape=(1,8,8)"],
    ["train", "lenet5", "--data", "digits", "--out", "{t}/r", "--opt", "seed=3"],
    ["train", "lenet5", "--data", "digits", "--out", "{t}/r", "--opt", "name=x"],
])
def test_opt_names_of_the_commands_own_parameters_are_refused(argv, tmp_path, capsys):
    pytest.importorskip("torch")
    key = argv[-1].partition("=")[0]
    assert run([a.replace("{t}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model 'lenet5' has no option {key}; it takes: ")
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_a_file_where_a_folder_goes_is_named(tmp_path, capsys):
    # both said only "error: File exists: .../afile"
    pytest.importorskip("torch")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(["train", "mlp", "--data", "digits", "--epochs", "1", "--out", str(afile),
                "--quiet"]) == 2
    assert f"{afile} is a file, where a folder is needed" in capsys.readouterr().err
    assert run(["export", "mlp", "-o", str(afile / "m.onnx")]) == 2
    assert f"{afile} is a file, where a folder is needed" in capsys.readouterr().err
    assert run(["export", "mlp", "-o", str(tmp_path)]) == 2
    assert "a folder is there; name the .onnx file" in capsys.readouterr().err
