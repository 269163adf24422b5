"""Checkpoint and resume: an interrupted run, resumed, ends with the same weights."""
import numpy as np
import pytest
import torch

from compressor import CompressionError, compress, parse_recipe, pipeline

RECIPE = {
    "name": "resume",
    "geometry": {"rows": 16, "cols": 8, "weight_bits": 8},
    "batch_size": 64,
    "pretrain": {"epochs": 1},
    "admm": {"rounds": 3, "ramp_rounds": 2},   # resumes inside and after the ramp
    "retrain": {"epochs": 2, "keep": "best"},  # so does the best epoch's state
    "distill": {"alpha": 0.5},                 # the teacher's logits go through it as well
    # signed: the frozen signs go through the checkpoint too
    "layers": [{"match": "1", "sparsity": {"structure": "tinyadc_packed_signed", "n": 4},
                "quant": {"bits": 6}},
               {"match": "3", "sparsity": {"structure": "rows", "keep": 0.5}}],
}


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return (x[:600], y[:600]), (x[1500:], y[1500:])


def mlp():
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 10))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("straight") / "run.ckpt"
    return compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False), path


@pytest.mark.parametrize("stage,after", [("pretrain", 1), ("admm", 1), ("admm", 2),
                                         ("retrain", 1)])
def test_resumed_run_equals_uninterrupted_run(data, straight, tmp_path, resumed, stage, after):
    ref, _ = straight
    path = tmp_path / "run.ckpt"
    res = resumed(lambda: compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path,
                                   progress=False), stage, after)
    a, b = weights(ref.model), weights(res.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.accuracy == ref.accuracy and res.history == ref.history
    assert res.selected_epoch == ref.selected_epoch is not None
    for name in ref.layers:
        assert np.array_equal(ref.layers[name].mask, res.layers[name].mask)
        assert ref.layers[name].scale == res.layers[name].scale


def test_finished_checkpoint_returns_without_training(data, straight, monkeypatch):
    ref, path = straight
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained again"))
    res = compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)
    assert torch.equal(res.model[1].weight, ref.model[1].weight)
    assert res.accuracy == ref.accuracy


def test_renamed_or_redescribed_recipe_still_resumes(data, straight, monkeypatch):
    # name and description label a run and shape nothing: a recipe copied to another file
    # (which names it) or re-described must not throw its checkpoint away
    ref, path = straight
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained again"))
    relabelled = parse_recipe({**RECIPE, "name": "copy", "description": "same run, new words"})
    res = compress(mlp(), relabelled, *data, checkpoint=path, progress=False)
    assert res.accuracy == ref.accuracy


def test_checkpoint_of_another_recipe_is_refused(data, straight):
    _, path = straight
    other = parse_recipe({**RECIPE, "seed": 1})
    with pytest.raises(CompressionError, match=r"from another recipe \(seed: checkpoint 0, "
                                               r"this run 1\)"):
        compress(mlp(), other, *data, checkpoint=path, progress=False)
    # the setting --epochs or --set changed is named, however deep
    longer = parse_recipe({**RECIPE, "admm": {**RECIPE["admm"], "epochs_per_round": 2}})
    with pytest.raises(CompressionError, match=r"\(admm.epochs_per_round: checkpoint 1, this "
                                               r"run 2\); delete it or choose another path"):
        compress(mlp(), longer, *data, checkpoint=path, progress=False)
    looser = {**RECIPE, "layers": [RECIPE["layers"][0],
                                   {**RECIPE["layers"][1], "sparsity": {"structure": "rows",
                                                                        "keep": 0.25}}]}
    with pytest.raises(CompressionError, match=r"\(layers\[1\].sparsity.keep: checkpoint 0.5, "
                                               r"this run 0.25\)"):
        compress(mlp(), parse_recipe(looser), *data, checkpoint=path, progress=False)
    with pytest.raises(CompressionError, match=r"of method 'admm', this run's is 'magnitude'"):
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, method="magnitude",
                 progress=False)


def test_checkpoint_of_another_start_is_refused(data, straight, tmp_path):
    """The same recipe from other weights, other data or a smaller limit is another run."""
    _, path = straight
    rec = parse_recipe(RECIPE)
    other = mlp()
    with torch.no_grad():
        other[1].weight.mul_(2)
    (x, y), test = data
    for model, train in ((other, (x, y)), (mlp(), (x[:300], y[:300]))):
        with pytest.raises(CompressionError, match="run.ckpt: from a run that started from "
                                                   "another model or data"):
            compress(model, rec, train, test, checkpoint=path, progress=False)
    # a checkpoint written before the digest was kept still resumes (the benchmark's cache)
    ck = torch.load(path, weights_only=True)
    del ck["origin"]
    torch.save(ck, tmp_path / "old.ckpt")
    ref = compress(mlp(), rec, *data, checkpoint=path, progress=False)
    res = compress(mlp(), rec, *data, checkpoint=tmp_path / "old.ckpt", progress=False)
    assert res.accuracy == ref.accuracy and torch.equal(res.model[1].weight, ref.model[1].weight)
    # ... and for another architecture it is refused in one line
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU(),
                               torch.nn.Linear(48, 10))
    with pytest.raises(CompressionError, match=r"old.ckpt: does not fit this model \(") as e:
        compress(wide, rec, *data, checkpoint=tmp_path / "old.ckpt", progress=False)
    assert "\n" not in str(e.value)


def test_a_diverging_run_stops_with_an_error_and_keeps_its_checkpoint(data, tmp_path):
    rec = parse_recipe({**RECIPE, "retrain": {"epochs": 2, "lr": 1.0e+30}})
    path = tmp_path / "run.ckpt"
    with pytest.raises(CompressionError, match=r"training diverged in retrain 1/2 \(loss "
                                               r"(nan|inf)\); lower the learning rate"):
        compress(mlp(), rec, *data, checkpoint=path, progress=False)
    ck = torch.load(path, weights_only=True)     # ADMM's rounds are kept
    assert ck["stage"] == "retrain" and ck["step"] == 0


def test_unreadable_checkpoint_is_a_clear_error(data, tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CompressionError, match="cannot read checkpoint .*junk.ckpt: "):
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)
    import torch
    torch.save(torch.zeros(3), path)                 # a torch file, but not a checkpoint
    with pytest.raises(CompressionError, match="junk.ckpt holds a Tensor, not a dictionary"):
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)


def test_checkpoint_from_before_connected_projection_is_refused(data, straight, tmp_path):
    """A checkpoint without the projection version may hold masks chosen layer by layer
    (compressor.connectivity): it is refused instead of resumed."""
    _, path = straight
    ck = torch.load(path, weights_only=True)
    del ck["projection"]
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    with pytest.raises(CompressionError, match="old.ckpt: written before chained layers"):
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=old, progress=False)


def _with_dropout():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 10), torch.nn.Dropout(0.3))


def test_dropout_draws_are_part_of_the_run_and_resume_with_it(data, tmp_path, resumed):
    """Dropout drew from the caller's global torch state, which no checkpoint holds: a
    resumed run differed from an uninterrupted one. Each epoch now seeds its own stream
    (and leaves the caller's as it was)."""
    rec = parse_recipe({**RECIPE, "distill": {"alpha": 0.0}})
    torch.manual_seed(5)
    ref = compress(_with_dropout(), rec, *data, checkpoint=tmp_path / "a.ckpt", progress=False)
    outer = torch.rand(1)
    torch.manual_seed(999)                        # another caller state: the same run
    res = resumed(lambda: compress(_with_dropout(), rec, *data, checkpoint=tmp_path / "b.ckpt",
                                   progress=False), "admm", 2)
    a, b = weights(ref.model), weights(res.model)
    assert all(torch.equal(a[k], b[k]) for k in a) and res.history == ref.history
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), outer)      # compress left the caller's stream alone


def test_resume_after_the_parameter_order_changed(data, tmp_path, resumed):
    """Snapping removes a parametrization, which re-registers the weight last: a model
    object reused for a second run (the CLI's --baseline) ordered its parameters otherwise
    than the fresh one that resumed it, and the positional optimizer state crashed the
    fused Adam kernel (segfault). The optimizer now takes the parameters by name."""
    rec = parse_recipe({**RECIPE, "pretrain": {"epochs": 2}, "distill": {"alpha": 0.0}})
    ref = compress(mlp(), rec, *data, method="magnitude", checkpoint=tmp_path / "r.ckpt",
                   progress=False)
    reused = mlp()
    start = weights(reused)
    compress(reused, rec, *data, checkpoint=tmp_path / "admm.ckpt", progress=False)
    reused.load_state_dict(start)
    assert [n for n, _ in reused.named_parameters()] != [n for n, _ in mlp().named_parameters()]
    path = tmp_path / "mag.ckpt"
    calls = iter([reused, mlp()])                 # interrupted on one object, resumed on another
    res = resumed(lambda: compress(next(calls), rec, *data, method="magnitude",
                                   checkpoint=path, progress=False), "pretrain", 1)
    a, b = weights(ref.model), weights(res.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_in_the_last_step_of_an_epoch_is_caught(data, tmp_path):
    """One step per epoch (batch larger than the data): the weights went to 1e30 and the
    logits to NaN after the loss was checked; that epoch was checkpointed or returned."""
    rec = parse_recipe({**RECIPE, "batch_size": 1024, "distill": {"alpha": 0.0},
                        "retrain": {"epochs": 1, "lr": 1.0e+30}})
    with pytest.raises(CompressionError, match="training diverged in retrain 1/1 "
                                               r"\(non-finite weights or outputs\)"):
        compress(mlp(), rec, *data, checkpoint=tmp_path / "run.ckpt", progress=False)


@pytest.mark.parametrize("n_train,n_eval,match", [(1, 10, "at least 2 are needed"),
                                                   (50, 0, "evaluation set is empty")])
def test_too_little_data_is_a_clear_error(data, n_train, n_eval, match):
    (x, y), (xt, yt) = data
    with pytest.raises(CompressionError, match=match):
        compress(mlp(), parse_recipe(RECIPE), (x[:n_train], y[:n_train]),
                 (xt[:n_eval], yt[:n_eval]), progress=False)


def test_rho_capped_without_overflow():
    from compressor.recipes import AdmmSpec
    spec = AdmmSpec(rounds=400, rho=0.05, rho_growth=10.0, rho_max=100.0)
    assert spec.rho_at(320) == 100.0 and spec.rho_at(0) == 0.05


@pytest.mark.parametrize("change,match", [
    (lambda x, y: (x, y[:-1]), r"train: 600 images but 599 labels"),          # IndexError
    (lambda x, y: (x, y + 100), r"labels need 110 classes"),                   # torch target
    (lambda x, y: (x[:, :, :4], y), r"does not take the data's samples"),      # torch shapes
    (lambda x, y: (x, y + 0.5), r"train: labels must be class indices .* label 0 is 0.5"),
    (lambda x, y: (x, -y - 1), r"label 0 is -1"),
    # (N, 1) labels: val accuracy was scored N x N (938 %), training crashed in torch
    (lambda x, y: (x, y[:, None]), r"train: labels must be a 1-D array .* shape \(600, 1\)"),
])
def test_bad_data_is_refused_before_training(data, monkeypatch, change, match):
    """The CLI checked this; the API trained into an IndexError or a torch error mid-epoch,
    or truncated float labels silently."""
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained"))
    (x, y), val = data
    with pytest.raises(CompressionError, match=match):
        compress(mlp(), parse_recipe(RECIPE), change(x, y), val, progress=False)


def test_column_labels_of_the_evaluation_set_are_refused(data, monkeypatch):
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained"))
    train, (x, y) = data
    with pytest.raises(CompressionError, match=r"val: labels must be a 1-D array of class "
                                               r"indices, not shape \(297, 1\)"):
        compress(mlp(), parse_recipe(RECIPE), train, (x, y[:, None]), progress=False)


def test_an_unwritable_checkpoint_path_is_refused_before_training(data, tmp_path,
                                                                  monkeypatch):
    """It failed at the first save, after pretraining, with a bare IsADirectoryError or
    FileExistsError."""
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "afile").write_text("x")
    for path, match in ((tmp_path, r"checkpoint .*: a folder is there; name the file"),
                        (tmp_path / "afile" / "run.ckpt", r"checkpoint .*run.ckpt: .*afile is "
                                                          r"a file, where a folder is needed")):
        with pytest.raises(CompressionError, match=match):
            compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)


@pytest.mark.parametrize("model", ["mlp", None])
def test_a_model_that_is_not_a_module_is_one_line(data, model):
    """It was an AttributeError ('str' object has no attribute 'training')."""
    with pytest.raises(CompressionError, match=rf"model: a torch.nn.Module .*, not "
                                               rf"{type(model).__name__}"):
        compress(model, parse_recipe(RECIPE), *data, progress=False)


def test_a_recipe_name_is_refused_naming_load_recipe(data):
    with pytest.raises(CompressionError, match=r"recipe: a Recipe \(compressor.load_recipe"):
        compress(mlp(), "lenet5_block", *data, progress=False)


def _damaged(path, tmp_path, change):
    ck = torch.load(path, weights_only=True)
    change(ck)
    torch.save(ck, tmp_path / "damaged.ckpt")
    return tmp_path / "damaged.ckpt"


def _admm_stage(ck):
    """The finished checkpoint turned into one mid-ADMM, its Z of the first layer mis-shaped."""
    w = {n: ck["model"][f"{n}.weight"] for n in ("1", "3")}
    ck.update(stage="admm", step=1, frozen={}, optimizer=None, admm={
        "rho": 1.0, "Z": {"1": torch.zeros(3, 3), "3": w["3"].clone()},
        "U": {n: torch.zeros_like(t) for n, t in w.items()}})


@pytest.mark.parametrize("change,match", [
    (lambda ck: ck.pop("history"), r"ValueError: missing history"),
    (lambda ck: ck.update(stage="finetune"), r"stage 'finetune' is none of pretrain, admm"),
    (lambda ck: ck["frozen"]["3"].pop("qmax"), r"KeyError: 'qmax'"),
    (lambda ck: (_admm_stage(ck), ck["admm"].pop("Z")), r"ValueError: ADMM state lacks Z"),
    (lambda ck: (_admm_stage(ck), ck["admm"].update(U=[1])),
     r"ValueError: ADMM Z, U or keep is not a dict"),
])
def test_damaged_checkpoint_is_one_line_before_training(data, straight, tmp_path, monkeypatch,
                                                        change, match):
    """A checkpoint of this run with entries missing or mis-shaped was a KeyError traceback,
    or (a Z of the wrong shape) a torch error once ADMM had begun."""
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained"))
    path = _damaged(straight[1], tmp_path, change)
    with pytest.raises(CompressionError, match=r"damaged.ckpt: damaged \(.*" + match) as e:
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)
    assert "\n" not in str(e.value) and str(e.value).endswith("rerun with --no-resume "
                                                              "(resume=False)")


@pytest.mark.parametrize("change,match", [
    (_admm_stage, r"ADMM Z of 1 is \(3, 3\), its weight is \(32, 64\)"),
    (lambda ck: ck["frozen"]["3"].update(mask=torch.ones(2, 2, dtype=torch.bool)),
     r"frozen mask of 3 is \(2, 2\)"),
    (lambda ck: ck["frozen"].pop("3"), r"frozen mask for layers \['1'\], this run constrains"),
])
def test_misshaped_checkpoint_state_is_one_line_before_training(data, straight, tmp_path,
                                                                monkeypatch, change, match):
    """A Z of the wrong shape failed in torch only once ADMM had begun."""
    monkeypatch.setattr(pipeline._Run, "_epoch", lambda *a, **k: pytest.fail("trained"))
    path = _damaged(straight[1], tmp_path, change)
    with pytest.raises(CompressionError, match=r"damaged.ckpt: does not fit this model \("
                                               + match) as e:
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)
    assert "\n" not in str(e.value)


def test_resuming_at_another_thread_count_warns(data, straight, tmp_path, monkeypatch):
    """The thread count changes the order of torch's sums: a run with training left goes on,
    not bitwise, and says so at compress's caller; a finished one trains nothing: silent."""
    import warnings
    now = torch.get_num_threads()
    assert torch.load(straight[1], weights_only=True)["torch_threads"] == now
    record = pipeline._Run._record

    def interrupted(self, stage, opt, **info):
        record(self, stage, opt, **info)
        if stage == "retrain":
            raise KeyboardInterrupt
    monkeypatch.setattr(pipeline._Run, "_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=tmp_path / "run.ckpt",
                 progress=False)
    monkeypatch.setattr(pipeline._Run, "_record", record)

    path = _damaged(tmp_path / "run.ckpt", tmp_path, lambda ck: ck.update(torch_threads=now + 3))
    with pytest.warns(UserWarning, match=rf"began with {now + 3} torch thread\(s\) and goes "
                                         rf"on with {now} .* not be bitwise") as caught:
        compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)
    assert [w.filename for w in caught] == [__file__]
    for ckpt, change in ((tmp_path / "run.ckpt", lambda ck: ck.pop("torch_threads")),
                         (straight[1], lambda ck: ck.update(torch_threads=now + 3))):
        path = _damaged(ckpt, tmp_path, change)   # not recorded (older ones); finished
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compress(mlp(), parse_recipe(RECIPE), *data, checkpoint=path, progress=False)