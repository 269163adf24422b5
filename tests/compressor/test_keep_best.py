"""``retrain.keep: best``: the run ends on the retraining epoch with the highest accuracy on
the evaluation set, and that is the same model a shorter run ending there gives."""
import numpy as np
import pytest
import torch

from compressor import compress, parse_recipe


def run(mlp, digits, epochs, keep, method="admm"):
    rec = parse_recipe({"name": "best", "geometry": {"rows": 16, "cols": 8, "weight_bits": 4},
                        "pretrain": {"epochs": 5, "lr": 1e-2},
                        "admm": {"rounds": 1}, "retrain": {"epochs": epochs, "lr": 1e-2,
                                                           "keep": keep},
                        "layers": [{"match": ["1", "3"], "sparsity": {"structure": "rows",
                                                                      "keep": 0.25},
                                    "quant": {"bits": 3}}]})
    return compress(mlp(), rec, *digits, method=method, progress=False)


@pytest.mark.parametrize("method", ["admm", "magnitude"])
def test_keep_best_ends_on_the_best_epoch_and_equals_the_run_cut_there(digits, mlp, method):
    best = run(mlp, digits, 5, "best", method)
    retrain = [h["accuracy"] for h in best.history if h["stage"] == "retrain"]
    k = best.selected_epoch
    assert k == int(np.argmax(retrain)) + 1            # the first of the highest
    assert k < len(retrain)  # here it peaks early, so the selection is exercised
    assert best.accuracy["final"] == max(retrain)       # the snapped model scores the same
    extra = 1 if method == "magnitude" else 0           # magnitude adds ADMM's epoch
    cut = run(mlp, digits, k - extra, "last", method) if k > extra else None
    if cut is not None:
        assert cut.selected_epoch is None
        a, b = best.model.state_dict(), cut.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    last = run(mlp, digits, 5, "last", method)
    assert last.accuracy["final"] == retrain[-1] <= best.accuracy["final"]
