"""``retrain.keep: average`` (stochastic weight averaging): the run ends on the mean of the
last epochs' weights, snapped to the levels; it resumes exactly and re-estimates BatchNorm."""
import numpy as np
import pytest
import torch
from torch import nn

from compressor import CompressionError, compress, parse_recipe, pipeline
from compressor.masking import Frozen, levels

RULES = [{"match": ["1", "3"], "sparsity": {"structure": "rows", "keep": 0.5},
          "quant": {"bits": 3}}]


def recipe(epochs=3, average=2, batch_size=64, rules=RULES):
    return parse_recipe({"name": "swa", "geometry": {"rows": 16, "cols": 8, "weight_bits": 3},
                         "batch_size": batch_size, "admm": {"rounds": 1},
                         "retrain": {"epochs": epochs, "lr": 1e-2, "keep": "average",
                                     "average_epochs": average},
                         "layers": rules})


@pytest.fixture
def epoch_states(monkeypatch):
    """The model's state after each retraining epoch of the next run."""
    seen, original = [], pipeline._Run._record

    def spy(self, stage, opt, **info):
        if stage == "retrain":
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        original(self, stage, opt, **info)
    monkeypatch.setattr(pipeline._Run, "_record", spy)
    return seen


@pytest.mark.parametrize("method", ["admm", "magnitude"])
def test_the_run_ends_on_the_snapped_mean_of_the_last_epochs(digits, mlp, epoch_states, method):
    res = compress(mlp(), recipe(), *digits, method=method, progress=False)
    assert len(epoch_states) == (4 if method == "magnitude" else 3)  # + ADMM's round
    last2 = epoch_states[-2:]
    for n in ("1", "3"):
        key = f"{n}.parametrizations.weight.original"
        mean = last2[0][key] + (last2[1][key] - last2[0][key]) / 2    # as the running mean
        layer = res.layers[n]
        f = Frozen(layer.mask, layer.scale, *res.recipe.layers[0].constraint.quant.levels)
        assert np.array_equal(res.layers[n].levels, levels(mean, f))
        w = dict(res.model.named_modules())[n].weight.detach().numpy()
        assert np.array_equal(w, layer.levels.astype(np.float32) * np.float32(layer.scale))
        assert not w[~layer.mask].any()
        a, b = last2[0][f"{n}.bias"], last2[1][f"{n}.bias"]
        assert torch.equal(dict(res.model.named_modules())[n].bias, a + (b - a) / 2)
    assert res.selected_epoch is None
    # it is not any one epoch's model
    assert not torch.equal(res.model[1].bias, epoch_states[-1]["1.bias"])


def test_a_run_resumed_inside_the_average_equals_the_uninterrupted_one(digits, mlp, tmp_path,
                                                                     resumed):
    rec = recipe(epochs=4, average=3)
    ref = compress(mlp(), rec, *digits, progress=False)
    res = resumed(lambda: compress(mlp(), rec, *digits, checkpoint=tmp_path / "c.ckpt",
                                   progress=False), "retrain", 3)   # two epochs into the mean
    assert res.accuracy == ref.accuracy
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_batchnorm_statistics_are_re_estimated_for_the_mean_weights(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 10))
    rules = [{"match": "1", "quant": {"bits": 3}}]
    x = digits[0][0]
    compress(model, recipe(rules=rules, batch_size=80), *digits, progress=False)  # 5 batches
    with torch.no_grad():
        h = model[1](model[0](torch.from_numpy(x)))    # the BatchNorm's input, final weights
    bn = model[2]
    torch.testing.assert_close(bn.running_mean, h.mean(0), rtol=1e-4, atol=1e-5)
    batch_vars = torch.stack([h[i:i + 80].var(0) for i in range(0, len(x), 80)])
    torch.testing.assert_close(bn.running_var, batch_vars.mean(0), rtol=1e-4, atol=1e-5)


def test_the_statistics_with_dropout_do_not_depend_on_the_callers_random_state(digits):
    """update_bn runs Dropout in train mode: it drew from the caller's torch stream, so the
    statistics changed with the caller's seed (and the caller's state moved)."""
    rules = [{"match": "1", "quant": {"bits": 3}}]
    means = []
    for caller_seed in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5),
                              nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
        torch.manual_seed(caller_seed)
        before = torch.random.get_rng_state()
        compress(model, recipe(rules=rules, batch_size=80), *digits, progress=False)
        assert torch.equal(torch.random.get_rng_state(), before)
        means.append(model[3].running_mean.clone())
    assert torch.equal(means[0], means[1])


def test_average_epochs_must_fit_the_retraining():
    with pytest.raises(CompressionError, match=r"recipe\.retrain\.average_epochs=5: must be at "
                                               r"most recipe\.retrain\.epochs=3"):
        recipe(epochs=3, average=5)
    with pytest.raises(CompressionError, match=r"recipe\.retrain\.average_epochs"):
        recipe(average=0)
    with pytest.raises(CompressionError, match=r"recipe\.retrain\.average_epochs=2: only keep: "
                                               r"average averages epochs \(this stage keeps "
                                               r"last\)"):
        parse_recipe({"layers": RULES, "retrain": {"epochs": 3, "average_epochs": 2}})
    with pytest.raises(CompressionError, match=r"recipe\.pretrain\.average_epochs=2: only"):
        parse_recipe({"layers": RULES, "pretrain": {"epochs": 3, "average_epochs": 2}})
    assert recipe(epochs=6, average=4).with_epochs(1).retrain.average_epochs == 1


def test_average_with_a_learned_scale_snaps_the_mean_scales_levels(digits, mlp):
    rec = parse_recipe({**recipe().to_dict(), "retrain": {**recipe().to_dict()["retrain"],
                                                          "learn_scale": True}})
    frozen = compress(mlp(), recipe(), *digits, progress=False)
    res = compress(mlp(), rec, *digits, progress=False)
    for n, layer in res.layers.items():
        assert layer.scale != frozen.layers[n].scale
        w = dict(res.model.named_modules())[n].weight.detach().numpy()
        assert np.array_equal(w, layer.levels.astype(np.float32) * np.float32(layer.scale))
        assert not w[~layer.mask].any()
    assert res.accuracy["final"] > 0.5


def test_defaults_leave_the_fingerprint_as_before():
    rec = parse_recipe({"layers": RULES, "retrain": {"epochs": 6, "keep": "best"}})
    assert "average" not in rec.fingerprint()
    assert "average" not in rec.with_epochs(2).fingerprint()    # --epochs: keep is not average
    assert '"average_epochs": 2' in recipe().fingerprint()
    assert parse_recipe(recipe().to_dict()) == recipe()
