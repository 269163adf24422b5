"""Learned scales in masked retraining (``retrain.learn_scale``, LSQ): the gradient is LSQ's,
dense and tiled layers agree, and a run ends exactly on its learned scale's levels."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from compressor import CompressionError, compress, parse_recipe
from compressor.masking import Frozen, MaskQuant, _MaskedLevels, install, learned_scales, snap

from test_tiled_retraining import COLS, ROWS, block_mask


def lsq_reference(w, mask, s, qmin, qmax, sign=None):
    """LSQ spelled out with autograd (Esser et al. 2020, eq. 3): clip's own gradient (1
    inside the range, 0 outside), the rounding passed straight through, the sign clamp."""
    c = torch.clamp(w / s, qmin, qmax)
    v = s * (c + (torch.round(c) - c).detach()) * mask
    return v if sign is None else (v * sign).clamp(min=0) * sign


@pytest.mark.parametrize("shape, dtype", [((40, 30), torch.float64),
                                          ((1, 30), torch.float32),      # one output row
                                          ((6, 3, 3, 3), torch.float32)],  # a conv weight
                         ids=["float64", "one-row", "conv"])
@pytest.mark.parametrize("signed", [False, True])
def test_the_scale_gradient_is_lsqs(signed, shape, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g).to(dtype) * 0.1
    mask = (torch.rand(shape, generator=g) < 0.7).to(dtype)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).to(dtype) \
        if signed else None
    up = torch.randn(shape, generator=g).to(dtype)
    grads = []
    for f in (lambda s: _MaskedLevels.apply(w, mask, s, -3, 3, sign),
              lambda s: lsq_reference(w, mask, s, -3, 3, sign)):
        s = torch.tensor(0.03, dtype=dtype, requires_grad=True)   # clips some weights
        out = f(s)
        grads.append((out.detach(), torch.autograd.grad((out * up).sum(), s)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert grads[0][1].dtype == dtype and grads[0][1].abs() > 0


def test_a_frozen_scale_has_no_parameter_and_a_learned_one_starts_on_it():
    f = Frozen(np.ones((4, 4), bool), 0.25, -3, 3)
    assert MaskQuant(f, torch.float32).log_gain is None
    assert list(MaskQuant(f, torch.float32).parameters()) == []
    learned = MaskQuant(f, torch.float32, learn_scale=True)
    assert float(learned.level_scale().detach()) == 0.25     # exp(0): the projection's scale, exactly
    assert MaskQuant(Frozen(f.mask), torch.float32, learn_scale=True).log_gain is None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_out", [300, 3 * COLS + 1], ids=["partial-tiles", "one-row-tile"])
def test_tiled_and_dense_layers_learn_the_same_scale_gradient(bias, n_out):
    torch.manual_seed(0)
    dense = nn.Linear(1040, n_out, bias=bias)
    tiled = copy.deepcopy(dense)
    mask = block_mask(n_out, 1040, 0.2, 0)
    mask[-1, :ROWS] = True                  # the last tile row is kept too
    f = Frozen(mask, 0.02, -3, 3)
    install(dense, {"": f}, learn_scale=frozenset({""}))
    install(tiled, {"": f}, (ROWS, COLS), frozenset({""}))
    assert "forward" in tiled.__dict__
    x = torch.randn(7, 1040, generator=torch.Generator().manual_seed(1))
    grads = []
    for m in (dense, tiled):
        with torch.no_grad():       # a moved scale: some levels differ from the frozen ones
            m.parametrizations.weight[0].log_gain.fill_(0.3)
        y = m(x)
        q = m.parametrizations.weight[0]
        params = [m.parametrizations.weight.original, q.log_gain] + ([m.bias] if bias else [])
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, n_out)).square().sum(),
                                         params))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert grads[0][1].abs() > 0


def test_snap_writes_the_learned_scales_levels():
    torch.manual_seed(0)
    m = nn.Linear(520, 300)
    f = Frozen(block_mask(300, 520, 0.2, 0), 0.02, -3, 3)
    install(m, {"": f}, (ROWS, COLS), frozenset({""}))
    with torch.no_grad():
        m.parametrizations.weight[0].log_gain.fill_(-0.2)
        trained = m.weight.clone()            # the forward's weights at the learned scale
    frozen = learned_scales(m, {"": f})
    assert frozen[""].scale == pytest.approx(0.02 * np.exp(-0.2), rel=1e-6)
    assert np.float32(frozen[""].scale) == frozen[""].scale
    q = snap(m, frozen)[""]
    assert np.abs(q).max() <= 3
    assert torch.equal(m.weight, trained)     # snapped weights: what retraining computed


RULES = [{"match": "1", "quant": {"bits": 3}},                         # learns
         {"match": "3", "quant": {"bits": 3, "pow2": True}}]           # stays a power of two


def recipe(learn, rules=RULES, **retrain):
    return parse_recipe({"name": "lsq", "geometry": {"rows": 16, "cols": 8, "weight_bits": 3},
                         "admm": {"rounds": 2},
                         "retrain": {"epochs": 3, "lr": 5e-3, "learn_scale": learn, **retrain},
                         "layers": rules})


def test_a_run_learns_free_scales_and_keeps_fixed_ones(digits, mlp, monkeypatch):
    from compressor import pipeline
    frozen_run = compress(mlp(), recipe(False), *digits, progress=False)
    trained, original = {}, pipeline._Run._record

    def spy(self, stage, opt, **info):     # the weights the last epoch's forward computed
        with torch.no_grad():
            trained.update({n: self.model[int(n)].weight.clone() for n in ("1", "3")})
        original(self, stage, opt, **info)
    monkeypatch.setattr(pipeline._Run, "_record", spy)
    res = compress(mlp(), recipe(True), *digits, progress=False)
    for n in ("1", "3"):
        assert torch.equal(res.model[int(n)].weight, trained[n]), n
    assert res.layers["1"].scale != frozen_run.layers["1"].scale    # it moved
    s3 = res.layers["3"].scale
    assert s3 == frozen_run.layers["3"].scale and 2.0 ** round(np.log2(s3)) == s3
    for n, layer in res.layers.items():
        w = dict(res.model.named_modules())[n].weight.detach().numpy()
        assert np.array_equal(w, layer.levels.astype(np.float32) * np.float32(layer.scale))
    assert res.accuracy["final"] > 0.5


def test_a_fixed_recipe_scale_is_not_learned(digits, mlp):
    rules = [{"match": "1", "quant": {"bits": 3, "scale": 0.125}}]
    res = compress(mlp(), recipe(True, rules), *digits, progress=False)
    assert res.layers["1"].scale == 0.125


def test_a_run_resumed_mid_retraining_keeps_its_learned_scale(digits, mlp, tmp_path, resumed):
    rec = recipe(True, keep="best")
    ref = compress(mlp(), rec, *digits, progress=False)
    res = resumed(lambda: compress(mlp(), rec, *digits, checkpoint=tmp_path / "c.ckpt",
                                   progress=False), "retrain", 2)
    assert res.history == ref.history
    assert res.layers["1"].scale == ref.layers["1"].scale
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k


@pytest.mark.parametrize("stage, value, match", [
    ("retrain", "yes", "must be true or false"),
    ("pretrain", True, "only retraining"),
])
def test_a_bad_learn_scale_is_refused(stage, value, match):
    with pytest.raises(CompressionError, match=rf"recipe\.{stage}\.learn_scale=.*{match}"):
        parse_recipe({"layers": [{"match": "1", "quant": {"bits": 3}}],
                      stage: {"learn_scale": value}})


def test_off_leaves_the_fingerprint_as_before():
    off = parse_recipe({"layers": [{"match": "1", "quant": {"bits": 3}}]})
    on = parse_recipe({"layers": [{"match": "1", "quant": {"bits": 3}}],
                       "retrain": {"learn_scale": True}})
    assert "learn_scale" not in off.fingerprint() and "learn_scale" in on.fingerprint()
    assert parse_recipe(on.to_dict()) == on
