"""The shipped LeNet-5: ONNX runs in onnxruntime, is accurate, matches its state dict, is small."""
import json

import numpy as np
import onnx
import pytest

import models
from models.demo import DATA_DIR, PRETRAINED_DIR
from models.errors import ModelError
from models.onnx_export import run_onnxruntime


def _logits(path, x):
    return np.concatenate([run_onnxruntime(path, x[i:i + 1]) for i in range(len(x))])


def test_shipped_onnx_is_accurate_on_the_shipped_subset():
    path = models.pretrained_path("lenet5_fmnist")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "logits"
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 28, 28]

    x, y = models.load_demo_images()
    assert x.shape == (300, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    acc = float((_logits(path, x).argmax(1) == y).mean())
    assert acc >= 0.89
    info = json.loads(models.pretrained_path("lenet5_fmnist", "json").read_text())
    assert info["subset_accuracy"] == pytest.approx(acc)


def test_record_describes_the_model():
    info = json.loads(models.pretrained_path(kind="json").read_text())
    assert info["test_accuracy"] >= 0.89 and info["test_examples"] == 10000
    assert {"epochs", "seed", "normalisation", "command"} <= set(info)
    with np.load(DATA_DIR / "fmnist_test_subset.npz") as z:
        assert z["x"].dtype == np.uint8 and z["x"].shape == (300, 28, 28)
        assert len(z["y"]) == 300


def test_state_dict_matches_onnx():
    pytest.importorskip("torch")
    import torch

    x, _ = models.load_demo_images(n=8)
    with torch.no_grad():
        expected = models.load_pretrained()(torch.from_numpy(x)).numpy()
    got = _logits(models.pretrained_path(), x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_shipped_files_are_small():
    files = [p for d in (PRETRAINED_DIR, DATA_DIR) for p in d.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000


def test_unknown_pretrained_name():
    with pytest.raises(ModelError, match="no pretrained model 'resnet'"):
        models.pretrained_path("resnet")
