"""pow2 fold: each quantized layer keeps its integer levels at the nearest power-of-two
scale, the residuals fold into what follows, and the model decides exactly as the
float-scale one; graphs where that is not exact are refused by node, before training."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from compressor import CompressionError, compress, export_qdq, parse_recipe
from compressor.constraints import Constraint, QuantSpec
from compressor.fold import check_foldable, fold_pow2_scales, split_pow2
from compressor.pipeline import CompressionResult, LayerResult

GEOM = {"rows": 16, "cols": 16, "cell_bits": 2, "weight_bits": 4, "mapping": "differential"}


def _recipe(pow2, **extra):
    return parse_recipe({
        "name": f"fold_{pow2}", "geometry": GEOM, "admm": {"rounds": 1},
        "retrain": {"epochs": 1}, **extra,
        "layers": [{"match": "*", "sparsity": {"structure": "blocks", "keep": 0.5},
                    "quant": {"bits": 3, "pow2": pow2}}]})


def _is_pow2(s):
    return 2.0 ** round(math.log2(s)) == s


def test_fold_recipe_decides_as_the_float_scale_run(digits, mlp, tmp_path):
    """What a user does: the same recipe with ``pow2: fold`` and with free scales, same
    seed. Fold trains exactly as the free-scale run (same levels, same masks), stores power-
    of-two scales, and its exported ONNX times ``output_scale`` is the free-scale logits."""
    from models.onnx_export import run_onnxruntime
    train, test = digits
    free = compress(mlp(), _recipe(False), train, test, progress=False)
    fold = compress(mlp(), _recipe("fold"), train, test, progress=False)
    assert fold.output_scale != 1.0
    for name, lay in free.layers.items():
        f = fold.layers[name]
        np.testing.assert_array_equal(f.levels, lay.levels)
        np.testing.assert_array_equal(f.mask, lay.mask)
        assert _is_pow2(f.scale) and not _is_pow2(lay.scale)
        assert 2 ** -0.5 <= lay.scale / f.scale < 2 ** 0.5
    x = test[0][:100].reshape(100, 1, 8, 8)
    p_free = export_qdq(free, tmp_path / "free.onnx", input_shape=(1, 8, 8), verify=x)
    p_fold = export_qdq(fold, tmp_path / "fold.onnx", input_shape=(1, 8, 8), verify=x)
    lf, lg = run_onnxruntime(p_free, x), run_onnxruntime(p_fold, x)
    np.testing.assert_allclose(lg * fold.output_scale, lf, rtol=1e-5, atol=1e-5)
    assert np.array_equal(lg.argmax(1), lf.argmax(1))
    import onnx
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(p_fold).graph.initializer}
    scales = [float(v) for k, v in inits.items() if k.endswith("_scale")]
    assert len(scales) == 2 and all(_is_pow2(s) for s in scales)
    import json
    props = {p.key: p.value for p in onnx.load(p_fold).metadata_props}
    assert json.loads(props["xbarsim.compressor"])["output_scale"] == fold.output_scale
    for name in fold.layers:
        meta = json.loads(props[f"xbarsim.layer.{name}"])
        assert meta["pow2"] == "fold" and meta["scale"] == fold.layers[name].scale


class _ConvNet(nn.Module):
    """conv-BN-ReLU-pool, conv-ReLU-pool, flatten, two linears: every fold rule on the way."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.f1, self.f2 = nn.Linear(6 * 2 * 2, 12), nn.Linear(12, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        x = nn.functional.avg_pool2d(nn.functional.relu(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        return self.f2(nn.functional.leaky_relu(self.f1(x), 0.1))


def _quantized(model, names, bits=3):
    """A CompressionResult whose ``names`` hold random levels at random (non-pow2) scales."""
    rng = np.random.default_rng(0)
    mods, layers = dict(model.named_modules()), {}
    with torch.no_grad():
        for mod in mods.values():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
                mod.weight.uniform_(0.5, 2)
                mod.bias.uniform_(-1, 1)
        for n in names:
            w = mods[n].weight
            q = rng.integers(-3, 4, size=tuple(w.shape))
            scale = float(np.float32(rng.uniform(0.05, 0.4)))
            w.copy_(torch.as_tensor(q.astype(np.float32) * np.float32(scale)))
            c = Constraint(quant=QuantSpec(bits=bits, pow2="fold"))
            layers[n] = LayerResult(c, np.ones(w.shape, bool), scale, q)
    return CompressionResult(model.eval(), _recipe("fold"), "admm", layers, {"final": 0.0})


def test_fold_through_batchnorm_pooling_and_reshapes_is_exact():
    model = _ConvNet()
    res = _quantized(model, ["c1", "c2", "f1", "f2"])
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = res.model(x).numpy()
    folded = fold_pow2_scales(res)
    with torch.no_grad():
        got = folded.model(x).numpy()
    np.testing.assert_allclose(got * folded.output_scale, want, rtol=1e-5, atol=1e-5)
    residuals = [split_pow2(res.layers[n].scale)[1] for n in res.layers]
    assert folded.output_scale == pytest.approx(np.prod(residuals), rel=1e-12)
    for n, lay in folded.layers.items():
        assert _is_pow2(lay.scale) and lay.constraint.quant.pow2 == "fold"
        w = dict(folded.model.named_modules())[n].weight.detach().numpy()
        np.testing.assert_array_equal(w, lay.levels.astype(np.float32) * np.float32(lay.scale))
    # the input result is untouched
    np.testing.assert_array_equal(res.model(x).detach().numpy(), want)


def test_fold_only_some_layers_leaves_the_others_scales():
    res = _quantized(_ConvNet(), ["c1", "c2", "f1", "f2"])
    folded = fold_pow2_scales(res, ["c2"])
    assert folded.layers["c1"].scale == res.layers["c1"].scale
    assert _is_pow2(folded.layers["c2"].scale)
    assert folded.output_scale == pytest.approx(split_pow2(res.layers["c2"].scale)[1])
    with pytest.raises(CompressionError, match="'c3' is not a quantized layer"):
        fold_pow2_scales(res, ["c3"])


class _Gated(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(6, 6), act, nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h


@pytest.mark.parametrize("model,names,culprit", [
    (_Gated(nn.Sigmoid()), ["a", "b"], "Sigmoid"),
    (_Gated(nn.Hardtanh()), ["a"], "Hardtanh"),           # clipping: not homogeneous
    (_Gated(nn.ReLU6()), ["a"], "ReLU6"),
    (nn.Sequential(nn.Linear(6, 3), nn.Softmax(1)), ["0"], "Softmax"),  # at the output
    (_Residual(), ["a", "b"], "add of tensors with different folded scales"),
])
def test_graphs_the_fold_is_not_exact_on_are_refused_by_node(model, names, culprit):
    with pytest.raises(CompressionError, match=f"pow2 fold: node .*{culprit}.*use pow2: true"):
        check_foldable(model, names)


def test_unfolded_layers_pass_anything():
    """A sigmoid after a layer that is not folded meets an unscaled tensor: allowed."""
    check_foldable(_Gated(nn.Sigmoid()), ["b"])
    check_foldable(_Residual(), ["a"])           # both branches carry a's residual


def test_fold_recipe_on_an_unfoldable_model_fails_before_training(digits, monkeypatch):
    from compressor import pipeline
    monkeypatch.setattr(pipeline._Run, "go", lambda self: pytest.fail("trained"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    with pytest.raises(CompressionError, match="node .*Tanh"):
        compress(model, _recipe("fold"), *digits, progress=False)


@pytest.mark.parametrize("quant,msg", [
    ({"bits": 3, "pow2": "yes"}, "pow2='yes': must be true, false or fold"),
    ({"bits": 3, "pow2": 1}, "pow2=1: must be true, false or fold"),
    ({"bits": 3, "pow2": "fold", "scale": 0.25}, "pow2: fold chooses the scale"),
])
def test_bad_pow2_values_are_refused(quant, msg):
    with pytest.raises(CompressionError, match=msg):
        parse_recipe({"name": "bad", "geometry": GEOM,
                      "layers": [{"match": "*", "quant": quant}]})


def test_fold_recipe_round_trips_and_has_its_own_fingerprint():
    fold, free, proj = _recipe("fold"), _recipe(False), _recipe(True)
    assert parse_recipe(fold.to_dict()).fingerprint() == fold.fingerprint()
    assert len({fold.fingerprint(), free.fingerprint(), proj.fingerprint()}) == 3


def test_folded_model_compiles_and_the_chip_agrees(digits, mlp, tmp_path):
    """The compiler maps the folded QDQ model (power-of-two scales) onto the crossbars;
    the chip's class decisions match onnxruntime's."""
    from compiler import compile_model
    from models.onnx_export import run_onnxruntime
    from simulator import load_config, simulate
    train, test = digits
    res = compress(mlp(), _recipe("fold"), train, test, progress=False)
    path = export_qdq(res, tmp_path / "fold.onnx", input_shape=(1, 8, 8))
    cfg = load_config("puma", ["xbar.rows=16", "xbar.cols=16", "weight_bits=3",
                               "xbar.mapping=differential", "adc.bits=none"])
    prog = compile_model(path, cfg, calibration={"input": train[0][:32]})
    x = test[0][:40]
    chip = simulate(prog, {"input": x}).outputs["logits"]
    ref = run_onnxruntime(path, x)
    assert np.mean(chip.argmax(1) == ref.argmax(1)) >= 0.95
    np.testing.assert_allclose(chip, ref, atol=0.05 * np.abs(ref).max())


class _AddConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + 1.0)      # (x/R) + 1 is not (x + 1)/R


class _SharedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return self.s(torch.relu(self.s(torch.relu(self.a(x)))))   # s's bias would divide twice


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(nn.functional.linear(x, self.a.weight, self.a.bias))


class _BatchStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(6, 6), nn.BatchNorm1d(6, track_running_stats=False), \
            nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.bn(self.a(x)))


class _AddShaped(nn.Module):
    """A number or a tensor built from a folded tensor's shape is unscaled too (it passed)."""

    def __init__(self, ones: bool):
        super().__init__()
        self.a, self.b, self.ones = nn.Linear(6, 6), nn.Linear(6, 3), ones

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + torch.ones(h.shape) if self.ones else h + h.size(1))


@pytest.mark.parametrize("model,culprit", [
    (_AddConst(), "node 'add'"),
    (_AddShaped(ones=False), "node 'add'"),
    (_AddShaped(ones=True), "node 'add'"),
    (_SharedLayer(), "module 's' is called more than once"),
    (_Functional(), "layer\\(s\\) a never run as modules"),
    (_BatchStats(), "without running statistics"),
])
def test_graphs_that_would_fold_wrongly_are_refused(model, culprit):
    with pytest.raises(CompressionError, match=f"pow2 fold: .*{culprit}"):
        check_foldable(model, ["a"])


class _Joins(nn.Module):
    """cat along a dim, a scaled add and a maximum of equally scaled tensors: all fold."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(24, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.cat([y, torch.relu(y)], dim=1)
        z = torch.cat([torch.add(z, torch.maximum(z, z), alpha=0.5), z], -1)
        return self.b(z)


class _CatConst(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(12, 3)
        self.register_buffer("c", torch.ones(1, 6))

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(torch.cat([y, self.c.expand(4, 6) * 1.0], 1))


def test_concat_along_a_dim_and_scaled_adds_fold_exactly():
    res = _quantized(_Joins(), ["a", "b"])
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    folded = fold_pow2_scales(res)
    with torch.no_grad():
        np.testing.assert_allclose(folded.model(x).numpy() * folded.output_scale,
                                   res.model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert folded.output_scale != 1.0


def test_concat_with_an_unscaled_tensor_is_refused():
    with pytest.raises(CompressionError, match="pow2 fold: node 'cat'"):
        check_foldable(_CatConst(), ["a"])


def test_prelu_with_per_channel_slopes_folds_exactly():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.PReLU(3), nn.Flatten(), nn.Linear(3 * 36, 4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, -0.5, 2.0]))
    res = _quantized(model, ["0", "3"])
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    folded = fold_pow2_scales(res)
    with torch.no_grad():
        np.testing.assert_allclose(folded.model(x).numpy() * folded.output_scale,
                                   res.model(x).numpy(), rtol=1e-5, atol=1e-5)
