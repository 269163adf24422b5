"""Every zoo model builds, exports to ONNX, passes the checker and matches onnxruntime."""
import re

import numpy as np
import onnx
import pytest
import torch

import models
from models.errors import ModelError
from models.onnx_export import export, run_onnxruntime
from models.zoo import ZOO, build, input_shape

# (name, builder options): every zoo entry at its defaults, plus the 28x28 one-channel forms.
CASES = [(name, {}) for name in ZOO] + [
    ("vgg8", {"in_channels": 1, "image_size": 28, "width": 0.25}),
    ("vgg16", {"in_channels": 1, "image_size": 28, "width": 0.25}),
    ("resnet18", {"in_channels": 1, "image_size": 28, "width": 0.25}),
    ("mlp", {"hidden": (32,), "in_features": 64}),
]


def _dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda v: str(v))
def test_export_matches_onnxruntime(tmp_path, name, options):
    path = export(name, tmp_path / f"{name}.onnx", batch=2, **options)
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    shape = input_shape(name, batch=2, **options)
    assert _dims(proto.graph.input[0]) == list(shape)  # static, batch 2 as asked

    model = build(name, seed=0, **options)
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = run_onnxruntime(path, x)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_default_export_is_batch_one_and_weights_are_initializers(tmp_path):
    proto = onnx.load(str(export("resnet18", tmp_path / "r.onnx", width=0.125)))
    assert _dims(proto.graph.input[0]) == [1, 3, 32, 32]
    assert "Identity" not in {n.op_type for n in proto.graph.node}
    inits = {t.name for t in proto.graph.initializer}
    assert all(n.input[1] in inits for n in proto.graph.node if n.op_type in ("Conv", "Gemm"))


@pytest.mark.parametrize("name", ["lenet5", "lstm"])
def test_dynamic_batch(tmp_path, name):
    path = export(name, tmp_path / "m.onnx", dynamic_batch=True)
    x = np.random.default_rng(0).random(input_shape(name, batch=3), dtype=np.float32)
    with torch.no_grad():
        expected = build(name, seed=0)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnxruntime(path, x), expected, atol=1e-4, rtol=1e-3)


def test_export_module_and_verify(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(ModelError, match="input_shape"):
        export(net, tmp_path / "a.onnx")
    export(net, tmp_path / "a.onnx", input_shape=(3, 4), verify=True)
    assert (tmp_path / "a.onnx").is_file()


def test_a_failed_verify_leaves_the_earlier_file(tmp_path, monkeypatch):
    """The file was written first and checked after: a failed check left the unverified
    model in place of the earlier good one."""
    from models import onnx_export
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    (tmp_path / "a.onnx").write_bytes(b"earlier")
    monkeypatch.setattr(onnx_export, "run_onnxruntime", lambda path, x: np.full((1, 3), 1e3))
    with pytest.raises(ModelError, match=r"differs from PyTorch by .*; nothing was written"):
        export(net, tmp_path / "a.onnx", input_shape=(3, 4), verify=True)
    assert (tmp_path / "a.onnx").read_bytes() == b"earlier"
    assert [f.name for f in tmp_path.iterdir()] == ["a.onnx"]      # no temporary left


@pytest.mark.parametrize("batch", [1.5, "2", 0, True])
def test_a_batch_that_is_no_count_is_a_model_error(tmp_path, batch):
    # 1.5 and "2" reached torch.rand: a TypeError traceback
    with pytest.raises(ModelError, match=r"^batch = .*: must be an integer >= 1"):
        export("mlp", tmp_path / "m.onnx", batch=batch)


def test_registry_and_errors():
    assert tuple(ZOO) == models.MODEL_NAMES
    assert input_shape("puma_mlp") == (1, 1024)
    assert input_shape("lstm", batch=4) == (4, 28, 28)
    assert input_shape("vgg8", in_channels=1, image_size=28) == (1, 1, 28, 28)
    with pytest.raises(ModelError, match="unknown model 'alexnet'"):
        build("alexnet")
    with pytest.raises(ModelError, match="no option width"):
        build("lenet5", width=2)
    with pytest.raises(ModelError, match="image_size"):
        build("lenet5", image_size=8)
    assert issubclass(ModelError, ValueError)


def test_layer_sizes_match_the_papers():
    linear = [m for m in build("puma_mlp").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (1024, 1024), (1024, 2048), (2048, 1024), (1024, 10)]
    convs = [m.out_channels for m in build("vgg8").modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [128, 128, 256, 256, 512, 512]
    lenet = build("lenet5")
    assert sum(p.numel() for p in lenet.parameters()) == 61706


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build("lenet5", seed=3), build("lenet5", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_flag_options_take_true_or_false():
    assert input_shape("lstm", bidirectional="true") == (1, 28, 28)
    assert build("gru", bidirectional="True", seed=0).fc.in_features == 128
    assert build("gru", bidirectional="false", seed=0).fc.in_features == 64
    assert build("rnn", bidirectional=1, seed=0).fc.in_features == 128
    with pytest.raises(ModelError, match="option bidirectional takes True or False, got 'yes'"):
        build("rnn", bidirectional="yes")


def test_reexport_needs_the_options_the_weights_were_trained_with(tmp_path):
    """A ResNet's weights load into a build at any input size: re-exported without
    ``image_size=28`` they went out at 32x32. ``train`` records the options beside them."""
    import json
    opts = {"in_channels": 1, "image_size": 28, "width": 0.125}
    torch.save(build("resnet18", seed=0, **opts).state_dict(), tmp_path / "resnet18.pt")
    (tmp_path / "resnet18.json").write_text(json.dumps(
        {"model": "resnet18", "model_kwargs": {**opts, "num_classes": 10}}))
    with pytest.raises(ModelError, match=r"trained with other options .* add --opt "
                                         r"image_size=28"):
        export("resnet18", tmp_path / "r.onnx", weights=tmp_path / "resnet18.pt",
               in_channels=1, width=0.125)
    export("resnet18", tmp_path / "r.onnx", weights=tmp_path / "resnet18.pt", **opts)
    dims = onnx.load(tmp_path / "r.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 28, 28]
    # flags as the CLI records them ("false") match the same flag given as text or a bool
    vgg = {"in_channels": 1, "image_size": 28, "width": 0.125}
    torch.save(build("vgg8", seed=0, batch_norm=False, **vgg).state_dict(), tmp_path / "vgg8.pt")
    (tmp_path / "vgg8.json").write_text(json.dumps(
        {"model": "vgg8", "model_kwargs": {**vgg, "batch_norm": "false"}}))
    for flag in ("false", False):
        export("vgg8", tmp_path / "v.onnx", weights=tmp_path / "vgg8.pt", batch_norm=flag,
               **vgg)


@pytest.mark.parametrize("name,opts,needle", [
    ("mlp", {"hidden": (0,)}, "hidden takes layer sizes >= 1"),
    ("vgg8", {"width": float("inf")}, "width takes a number, got inf"),
    ("vgg8", {"image_size": float("nan")}, "image_size takes an integer, got nan"),
    ("vgg8", {"width": 10 ** 400}, "cannot build .vgg8."),
])
def test_degenerate_options_are_named(name, opts, needle):
    # hidden=(0,) exported a graph the compiler then refused without naming the option;
    # width=1e999 (inf) crashed with an OverflowError traceback
    with pytest.raises(ModelError, match=needle):
        build(name, **opts)


def test_reexport_hint_can_be_pasted_into_a_shell(tmp_path):
    """A recorded list printed as ``--opt hidden=[32, 16]``: the shell splits it in two."""
    import json
    import shlex
    torch.save(build("mlp", seed=0, hidden=(32, 16)).state_dict(), tmp_path / "mlp.pt")
    (tmp_path / "mlp.json").write_text(json.dumps(
        {"model": "mlp", "model_kwargs": {"hidden": [32, 16], "num_classes": 10}}))
    with pytest.raises(ModelError, match="add --opt ") as e:
        export("mlp", tmp_path / "m.onnx", weights=tmp_path / "mlp.pt")
    hint = shlex.split(str(e.value).partition("add ")[2])
    assert hint == ["--opt", "hidden=[32, 16]"]


@pytest.mark.parametrize("kw,needle", [
    ({"opset": 7}, "opset = 7: must be an integer in 9.."),
    ({"opset": "17"}, "opset = '17'"),
    ({"input_shape": "abc"}, "input_shape = 'abc': must be a tuple of sizes >= 1"),
    ({"input_shape": (1, 0, 28)}, "input_shape = (1, 0, 28)"),
    ({"atol": float("nan"), "verify": True}, "atol = nan: must be a finite number >= 0"),
])
def test_export_arguments_are_checked_as_the_cli_checks_them(tmp_path, kw, needle):
    # opset 7 failed in onnx's checker or wrote a file onnxruntime refuses; atol=nan passed
    # every check
    with pytest.raises(ModelError, match=re.escape(needle)):
        export("lenet5", tmp_path / "m.onnx", **kw)
    assert not (tmp_path / "m.onnx").exists()


def test_a_training_checkpoint_as_weights_says_to_pass_the_pt(tmp_path):
    torch.save({"model": build("mlp", hidden=(4,)).state_dict(), "optimizer": {},
                "epoch": 1}, tmp_path / "mlp.ckpt")
    with pytest.raises(ModelError, match="an xbarsim train checkpoint"):
        export("mlp", tmp_path / "m.onnx", weights=tmp_path / "mlp.ckpt", hidden=(4,))


def test_one_number_for_the_mlps_hidden_sizes_names_the_comma():
    with pytest.raises(ModelError, match=r"hidden=\(64,\) \(note the comma\)"):
        build("mlp", hidden=64)


def test_weights_of_another_zoo_model_are_named_as_such(tmp_path):
    """Refused with torch's whole key list (2 400 characters for vgg16), naming only the
    model asked for."""
    torch.save(build("mlp", hidden=(4,)).state_dict(), tmp_path / "mlp.pt")
    (tmp_path / "mlp.json").write_text('{"model": "mlp", "model_kwargs": {"hidden": [4]}}')
    with pytest.raises(ModelError, match=r"holds mlp weights \(mlp.json says so\), not "
                                         r"lenet5's"):
        export("lenet5", tmp_path / "m.onnx", weights=tmp_path / "mlp.pt")
