"""QDQ export: onnxruntime runs it and matches the snapped torch model; integers, scales and
metadata say exactly what the crossbars hold."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compressor import CompressionError, compress, export_qdq, parse_recipe
from compressor.export import max_difference
from compressor.geometry import to_crossbar
from compressor.projections import keep_count

RECIPE = {
    "name": "export",
    "geometry": {"rows": 16, "cols": 16, "weight_bits": 16},
    "admm": {"rounds": 1}, "retrain": {"epochs": 1},
    "layers": [
        {"match": "features.0", "quant": {"bits": 12}},
        {"match": "features.*", "sparsity": {"structure": "blocks", "keep": 0.5},
         "quant": {"bits": 4, "pow2": True}},
        {"match": "classifier.1", "sparsity": {"structure": "tinyadc", "n": 4}},
        {"match": "*", "quant": {"bits": 8, "mapping": "offset"}},
    ],
}


@pytest.fixture(scope="module")
def result():
    from models import build
    from models.data import load_splits
    (xtr, ytr), (xte, yte) = load_splits("digits", limit=200)
    model = build("vgg8", in_channels=1, image_size=28, width=0.0625, seed=0)  # with BatchNorm
    return compress(model, parse_recipe(RECIPE), (xtr, ytr), (xte, yte), progress=False), xte


@pytest.mark.parametrize("opset,wide", [(17, "int32"), (21, "int16")])
def test_qdq_model_runs_in_onnxruntime_and_matches_torch(result, tmp_path, opset, wide):
    res, x = result
    path = export_qdq(res, tmp_path / "m.onnx", opset=opset, verify=x[:32], atol=1e-5)
    assert max_difference(path, res.model, x[:64]) < 1e-5
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    quantized = [n for n, lr in res.layers.items() if lr.levels is not None]
    assert sorted(n.output[0] for n in dq) == sorted(f"{n}.weight" for n in quantized)
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}  # left to the compiler
    props = {p.key: p.value for p in proto.metadata_props}
    top = json.loads(props["xbarsim.compressor"])
    assert top["geometry"]["rows"] == 16 and top["layers"] == list(res.layers)
    for name, lr in res.layers.items():
        meta = json.loads(props[f"xbarsim.layer.{name}"])
        assert meta["initializer"] == f"{name}.weight"
        if lr.levels is None:
            assert meta["dtype"] == "float" and f"{name}.weight" in inits
            assert meta["max_nonzeros_per_segment"] <= 4
            continue
        q = inits[f"{name}.weight_quantized"]
        assert np.array_equal(q, lr.levels) and inits[f"{name}.weight_scale"] == np.float32(lr.scale)
        assert inits[f"{name}.weight_zero_point"] == 0
        expected = {4: "int8", 8: "int8", 12: wide}[meta["bits"]]
        assert q.dtype == np.dtype(expected) and meta["dtype"] == expected
        assert meta["levels"][0] <= q.min() and q.max() <= meta["levels"][1]
        assert ("int32" in meta["note"]) == (expected == "int32")
        if meta["pow2"]:
            assert np.log2(meta["scale"]).is_integer()
        occ = np.abs(to_crossbar(lr.levels)) > 0
        assert meta["density"] == pytest.approx(occ.mean())
        if lr.constraint.structure == "blocks":
            assert meta["blocks_nonzero"] <= keep_count(0.5, meta["blocks_total"])
            assert len(meta["nonzero_blocks"]) == meta["blocks_nonzero"]
        assert meta["op"] in ("Conv", "Gemm")


def test_verify_catches_a_mismatch(result, tmp_path):
    res, x = result
    path = export_qdq(res, tmp_path / "m.onnx")
    with torch.no_grad():
        res.model.classifier[3].bias.add_(1.0)
    try:
        assert max_difference(path, res.model, x[:8]) == pytest.approx(1.0, abs=1e-4)
    finally:
        with torch.no_grad():
            res.model.classifier[3].bias.sub_(1.0)


def test_a_failed_verification_leaves_no_file(result, tmp_path, monkeypatch):
    """The file used to be written first and stay at -o though the error called it wrong;
    an existing one is left as it was."""
    from compressor import export
    res, x = result
    path = tmp_path / "m.onnx"
    path.write_text("earlier")
    monkeypatch.setattr(export, "max_difference", lambda *a: 1.0)
    with pytest.raises(CompressionError, match="differs from PyTorch by 1 > atol=0.0001; "
                                               "nothing was written"):
        export_qdq(res, path, verify=x[:8])
    assert path.read_text() == "earlier" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(CompressionError, match="atol=-1: must be a number >= 0"):
        export_qdq(res, tmp_path / "n.onnx", verify=x[:8], atol=-1)


def test_export_needs_an_input_shape(result, tmp_path):
    res, _ = result
    shape = res.model.sample_shape
    del res.model.sample_shape
    try:
        with pytest.raises(CompressionError, match="input_shape"):
            export_qdq(res, tmp_path / "m.onnx")
        export_qdq(res, tmp_path / "m.onnx", input_shape=shape)
    finally:
        res.model.sample_shape = shape


def _matmul_linear(kind):
    """``(model, its two Linear layers)``: a Linear torch writes as a MatMul by its transposed
    weight, without bias (flat input) or over a 3-D input (rows of 8 pixels; MatMul + Add)."""
    nn = torch.nn
    if kind == "no bias":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(),
                             nn.Linear(32, 10)), ("1", "3")
    return nn.Sequential(nn.Flatten(1, 2), nn.Linear(8, 16), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 10)), ("1", "4")


@pytest.mark.parametrize("kind", ["no bias", "3-D input"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_a_linear_written_as_matmul_exports_through_it(digits, kind, per_channel, tmp_path):
    """torch writes ``Linear(bias=False)``, and a Linear over a 3-D input, as a MatMul by the
    transposed weight under a generated name: its levels go there transposed (a per-channel
    scale along axis 1), and onnxruntime (to 1e-5: its fused integer MatMul was 0.4 % off),
    the storage count and the compiler's reader take them."""
    from compiler.frontend import frontend, load_model
    from compressor.geometry import CrossbarGeometry
    from compressor.hardware import storage_bits
    torch.manual_seed(0)
    model, (first, last) = _matmul_linear(kind)
    geom = {"rows": 16, "cols": 8, "weight_bits": 4}
    quant = {"bits": 4, "per_channel": per_channel}
    rec = parse_recipe({"name": "matmul", "geometry": geom, "pretrain": {"epochs": 2},
                        "admm": {"rounds": 1}, "retrain": {"epochs": 1},
                        "layers": [{"match": first, "sparsity": {"structure": "blocks",
                                                                 "keep": 0.5}, "quant": quant},
                                   {"match": last, "quant": quant}]})
    res = compress(model, rec, *digits, progress=False)
    x = digits[1][0][:32]
    path = export_qdq(res, tmp_path / "m.onnx", input_shape=(1, 8, 8), verify=x, atol=1e-5)
    proto = onnx.load(path)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[f"xbarsim.layer.{first}"])
    assert meta["op"] == "MatMul" and meta["initializer"] != f"{first}.weight"
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    q = inits[f"{meta['initializer']}_quantized"]
    assert np.array_equal(q, res.layers[first].levels.T)
    q_read, s_read, axis = frontend(load_model(path)).qweights[meta["initializer"]]
    assert np.array_equal(q_read, q)
    assert axis == (1 if per_channel else None)
    assert np.array_equal(s_read, np.float32(res.layers[first].scale))
    layers = storage_bits(path, CrossbarGeometry(**geom))["layers"]
    assert layers[meta["initializer"]]["bits"] == 4


@pytest.mark.parametrize("opset", [9, "19", True, 25])   # 25: torch's RuntimeError
def test_an_opset_without_dequantize_linear_is_refused_in_one_line(result, tmp_path, opset):
    from simulator.cli import TORCH_MAX_OPSET
    res, _ = result
    with pytest.raises(CompressionError, match=rf"opset={opset!r}: must be an integer from 10 "
                                               rf"to {TORCH_MAX_OPSET} \(DequantizeLinear"):
        export_qdq(res, tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_arguments_are_one_line_errors(result, tmp_path, capfd):
    """A verify batch of the wrong size was numpy's 'cannot reshape', a wrong input_shape
    torch's error, a model instead of the result an AttributeError."""
    res, x = result
    for kw, match in (
            ({"verify": x[:4, :, :10]}, r"verify: an array of samples of shape \(1, 28, 28\) "
                                        r"\(or of 784 values each\), not shape \(4, 1, 10, 28\)"),
            ({"verify": x[:0]}, r"verify: .* values each\): at least one sample, not shape "
                                r"\(0, 1, 28, 28\)"),
            ({"input_shape": (1, 8, 8)}, r"cannot export the model with input \(1, 1, 8, 8\): "),
            ({"result": res.model}, r"result: what compressor.compress returns, not VGG")):
        with pytest.raises(CompressionError, match=match) as e:
            export_qdq(kw.pop("result", res), tmp_path / "m.onnx", **kw)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_a_torch_tensor_verify_batch_is_taken(result, tmp_path):
    """np.size of a torch tensor is its .size method: a valid batch was refused as not
    being of its own shape."""
    res, x = result
    batch = torch.from_numpy(x[:3]).requires_grad_()
    for verify in (batch, batch.reshape(3, 784)):
        assert export_qdq(res, tmp_path / "m.onnx", verify=verify, atol=1e-5).exists()


def test_compiling_for_other_crossbars_warns_with_what_differs(result, tmp_path):
    """The compiler never read the compressor's metadata: a model pruned for 16x16
    crossbars compiled on a 32-row machine lost its block and TinyADC promises silently."""
    import warnings

    from compiler import compile_model
    from simulator import load_config
    res, x = result
    path = export_qdq(res, tmp_path / "m.onnx")
    calib = {"input": x[:4].reshape(4, 1, 28, 28)}
    same = load_config("puma", ["weight_bits=16", "xbar.rows=16", "xbar.cols=16",
                                 "xbar.cell_bits=2", "xbar.mapping=differential"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the model's own crossbars: no warning
        compile_model(path, same, calibration=calib)
    other = load_config(same, ["xbar.rows=32", "xbar.active_rows=8"])
    with pytest.warns(UserWarning, match=r"compressed for other crossbars than this machine's "
                      r"\(xbar.rows 16 -> 32, xbar.active_rows None -> 8\)"):
        compile_model(path, other, calibration=calib)
