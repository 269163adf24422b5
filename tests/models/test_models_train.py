"""Training: LeNet-5 learns the 8x8 digits in seconds; checkpoints resume exactly."""
import json

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.onnx_export import run_onnxruntime
from models.train import train

# Digits are placed in a 28x28 frame by the loader (models.data.digits_to_28).
DIGITS_RECIPE = {"epochs": 10, "lr": 3e-3, "lr_decay": 0.75, "batch_size": 32}


def test_lenet5_learns_digits(tmp_path):
    acc = train("lenet5", "digits", seed=0, out_dir=tmp_path, progress=False, **DIGITS_RECIPE)
    assert acc >= 0.95
    record = json.loads((tmp_path / "lenet5.json").read_text())
    assert record["test_accuracy"] == acc and record["epochs"] == 10
    assert "pixel / 255" in record["normalisation"]
    x = np.zeros((1, 1, 28, 28), np.float32)
    assert run_onnxruntime(tmp_path / "lenet5.onnx", x).shape == (1, 10)
    state = torch.load(tmp_path / "lenet5.pt", weights_only=True)
    assert "features.0.weight" in state


def _final_state(out_dir):
    return torch.load(out_dir / "lenet5.pt", weights_only=True)


def test_resume_continues_the_same_run(tmp_path):
    quick = {"limit": 200, "batch_size": 32, "progress": False, "seed": 1}
    straight = train("lenet5", "digits", 3, out_dir=tmp_path / "a", **quick)
    train("lenet5", "digits", 2, out_dir=tmp_path / "b", **quick)
    resumed = train("lenet5", "digits", 3, out_dir=tmp_path / "b", **quick)
    assert json.loads((tmp_path / "b" / "lenet5.json").read_text())["resumed_from_epoch"] == 2
    assert resumed == straight
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for key in a:
        assert torch.equal(a[key], b[key]), key

    ckpt = torch.load(tmp_path / "b" / "lenet5.ckpt", weights_only=True)
    assert ckpt["epoch"] == 3 and {"model", "optimizer", "history"} <= set(ckpt)
    with pytest.raises(ModelError, match="seed=1 \\(now 2\\)"):
        train("lenet5", "digits", 4, out_dir=tmp_path / "b", **{**quick, "seed": 2})
    # fewer epochs than the checkpoint holds handed back the 3-epoch model as a 2-epoch one
    with pytest.raises(ModelError, match="holds 3 epochs, more than the 2 asked for"):
        train("lenet5", "digits", 2, out_dir=tmp_path / "b", **quick)
    # resume=False starts afresh in the same folder
    train("lenet5", "digits", 1, out_dir=tmp_path / "b", resume=False, **{**quick, "seed": 2})


@pytest.mark.parametrize("damage,match", [
    (lambda c: c.pop("optimizer"), "KeyError: 'optimizer'"),
    (lambda c: c.pop("history"), "KeyError: 'history'"),
    (lambda c: c["model"].update({k: v[:1] for k, v in list(c["model"].items())[:1]}),
     "RuntimeError: Error"),
])
def test_a_damaged_checkpoint_is_one_error_naming_it(tmp_path, damage, match):
    """It passed the same-run check, then the resume crashed with a traceback."""
    quick = {"limit": 64, "batch_size": 32, "progress": False, "seed": 1}
    train("mlp", "digits", 1, out_dir=tmp_path, **quick)
    ckpt = torch.load(tmp_path / "mlp.ckpt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, tmp_path / "mlp.ckpt")
    with pytest.raises(ModelError, match=f"checkpoint .*mlp.ckpt: damaged \\({match}") as e:
        train("mlp", "digits", 2, out_dir=tmp_path, **quick)
    assert "\n" not in str(e.value)


def test_train_on_arrays_and_other_models(tmp_path):
    # two classes a brightness offset apart: 57.5 % is the majority class, which an
    # untrained (or never-stepped) model scores (pixels in [0, 1], as the loaders require)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    x = (0.5 * rng.random((40, 1, 12, 12)) + 0.5 * y[:, None, None, None]).astype(np.float32)
    for name in ("mlp", "lstm"):
        acc = train(name, ((x, y), (x, y)), 10, lr=1e-2, batch_size=8, out_dir=tmp_path,
                    progress=False)
        assert acc >= 0.8, (name, acc)
        assert (tmp_path / f"{name}.onnx").is_file()


def test_train_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        train("nonet", "digits", 1, out_dir=tmp_path)
    # each names its culprit (one shared message matched whichever check fired)
    with pytest.raises(ModelError, match=r"^lr = 0: must be a finite number > 0$"):
        train("lenet5", "digits", 1, lr=0, out_dir=tmp_path)
    with pytest.raises(ModelError, match=r"^batch_size = 1: must be an integer >= 2$"):
        train("lenet5", "digits", 1, batch_size=1, out_dir=tmp_path)
    with pytest.raises(ModelError, match=r"^epochs = -1: must be an integer >= 0$"):
        train("lenet5", "digits", -1, out_dir=tmp_path)
    for kw, msg in (({"epochs": 1.5}, r"^epochs = 1.5: must be an integer"),   # TypeErrors
                    ({"batch_size": 64.0}, r"^batch_size = 64.0: must be an integer"),
                    ({"seed": None}, r"^seed = None: must be an integer >= 0$")):
        with pytest.raises(ModelError, match=msg):
            train("lenet5", "digits", **{"epochs": 1, **kw}, out_dir=tmp_path)
    for decay in (float("nan"), -0.5, 0.0, 1.5):
        with pytest.raises(ModelError, match=r"lr_decay = .*: must be in \(0, 1\]"):
            train("lenet5", "digits", 1, lr_decay=decay, out_dir=tmp_path)
    # an option that overrides what the data gives is refused before training, in a line
    with pytest.raises(ModelError, match="data's labels need 10 classes"):
        train("lenet5", "digits", 1, limit=64, out_dir=tmp_path,
              model_kwargs={"num_classes": 5}, progress=False)
    with pytest.raises(ModelError, match=r"does not take the data's samples of shape"):
        train("lenet5", "digits", 1, limit=64, out_dir=tmp_path,
              model_kwargs={"in_channels": 3}, progress=False)
    # arrays whose labels do not pair with the images (64 images, 80 labels trained on the
    # first 64); a limit below 1 (-5 dropped the last 5 examples)
    x = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    with pytest.raises(ModelError, match="train split: 64 images but 80 labels"):
        train("mlp", ((x, np.zeros(80, int)), (x[:16], np.zeros(16, int))), 1,
              out_dir=tmp_path, progress=False)
    for limit in (0, -5):
        with pytest.raises(ModelError, match=f"limit = {limit}: must be an integer >= 1"):
            train("lenet5", "digits", 1, limit=limit, out_dir=tmp_path, progress=False)
    from models.data import load
    assert len(load("digits", "test", limit=np.int64(5))[0]) == 5     # numpy counts too
    assert not list(tmp_path.glob("*.pt"))


def test_bidirectional_classifier_reads_the_backward_final_state():
    """The backward recurrence has read the whole sequence at step 0: changing only the
    first row must reach the classifier through it (at the last step it has read one row)."""
    from models.zoo import build
    for cell in ("lstm", "gru", "rnn"):
        m = build(cell, bidirectional=True, seed=0).eval()
        x = torch.zeros(1, 28, 28)
        x2 = x.clone()
        x2[0, 0] = 1.0
        with torch.no_grad():
            feats = []
            for inp in (x, x2):
                out, _ = getattr(m, cell)(inp)
                feats.append(torch.cat([out[:, -1, :64], out[:, 0, 64:]], 1))
            assert not torch.allclose(feats[0][:, 64:], feats[1][:, 64:])
            assert torch.allclose(m(x2), m.fc(feats[1]))


def test_accuracy_difference_interval_is_a_paired_bootstrap():
    import numpy as np
    import pytest

    from models.train import accuracy_difference_interval
    rng = np.random.default_rng(0)
    a = rng.random(10_000) < 0.9
    assert accuracy_difference_interval([(a, a)]) == (0.0, 0.0)          # same decisions
    assert accuracy_difference_interval([(a | True, a & False)]) == (100.0, 100.0)
    # B disagrees with A on 4 % of the images, half each way: the paired interval is about
    # +-1.96 * sqrt(0.04 / n) wide around the true difference 0, far narrower than two
    # independent 90 % accuracies would give (+-0.83 pp)
    b = a.copy()
    flip = rng.choice(a.size, 400, replace=False)
    b[flip] = ~b[flip]
    lo, hi = accuracy_difference_interval([(a, b)])
    d = 100 * (a.mean() - b.mean())
    assert lo < d < hi and 0.6 * 0.392 < (hi - lo) / 2 < 1.4 * 0.392
    # two seeds: the interval of their mean difference, paired over the same images
    lo2, hi2 = accuracy_difference_interval([(a, b), (a, b)])
    assert (lo2, hi2) == pytest.approx((lo, hi), abs=1e-9)
    with pytest.raises(ValueError, match="equal-length"):
        accuracy_difference_interval([(a, b[:10])])


def test_arrays_are_read_by_the_loaders_rules(tmp_path):
    """uint8 arrays trained on 0..255 while the record (and every other path) said / 255;
    (N, H, W) images and (N, 1) labels crashed in torch."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, 40)
    raw = train("mlp", ((x, y), (x, y)), 1, out_dir=tmp_path / "a", progress=False)
    scaled = x[:, 0].astype(np.float32) / 255               # and no channel axis
    assert train("mlp", ((scaled, y), (scaled, y)), 1, out_dir=tmp_path / "b",
                 progress=False) == raw
    with pytest.raises(ModelError, match=r"train labels: labels must be one class index"):
        train("mlp", ((x, y[:, None]), (x, y)), 1, out_dir=tmp_path / "c", progress=False)


def _two_class_arrays(n=40, side=8):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = (0.5 * rng.random((n, 1, side, side)) + 0.5 * y[:, None, None, None])
    return x.astype(np.float32), y


def test_other_arrays_of_the_same_shapes_do_not_resume(tmp_path):
    """Arrays were told apart by their shapes only: a second task of the same shapes in the
    same folder resumed the first one's checkpoint and reported its model."""
    x, y = _two_class_arrays()
    quick = {"batch_size": 8, "out_dir": tmp_path, "progress": False}
    train("mlp", ((x, y), (x, y)), 1, **quick)
    with pytest.raises(ModelError, match=r"is from another run \(data_sha256="):
        train("mlp", ((x, 1 - y), (x, 1 - y)), 1, **quick)
    train("mlp", ((x.copy(), y), (x, y)), 2, **quick)       # the same data does resume
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert record["resumed_from_epoch"] == 1 and len(record["data_sha256"]) == 64


def test_numpy_numbers_write_the_record_and_a_loadable_checkpoint(tmp_path):
    """np.int64 limit or seed crashed at the JSON write, after training, and left a
    checkpoint torch.load(weights_only=True) refused."""
    numbers = {"limit": np.int64(60), "seed": np.int64(1), "batch_size": np.int64(16),
               "lr": np.float64(1e-3), "lr_decay": np.float32(0.5),
               "weight_decay": np.float64(0.0)}
    train("mlp", "digits", np.int64(1), out_dir=tmp_path, progress=False, **numbers)
    record = json.loads((tmp_path / "mlp.json").read_text())
    assert record["limit"] == 60 and record["seed"] == 1 and record["lr_decay"] == 0.5
    assert torch.load(tmp_path / "mlp.ckpt", weights_only=True)["config"]["seed"] == 1
    train("mlp", "digits", 2, out_dir=tmp_path, progress=False, **numbers)
    assert json.loads((tmp_path / "mlp.json").read_text())["resumed_from_epoch"] == 1


def test_array_splits_of_different_image_sizes_are_refused_before_training(tmp_path):
    """They trained a whole epoch, then the test split crashed in torch."""
    x, y = _two_class_arrays()
    x_test, _ = _two_class_arrays(side=10)
    with pytest.raises(ModelError, match=r"data arrays: training images are \(1, 8, 8\) but "
                                         r"test images \(1, 10, 10\)"):
        train("mlp", ((x, y), (x_test, y)), 1, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["seed", "name"])
def test_model_options_named_like_build_arguments_are_refused(tmp_path, option):
    """They reached build(name, seed=..., **options) and crashed with a TypeError."""
    with pytest.raises(ModelError, match=f"model 'mlp' has no option {option}; it takes: "):
        train("mlp", "digits", 1, out_dir=tmp_path, model_kwargs={option: 3})


def test_the_thread_count_is_recorded_and_a_change_on_resume_warns(tmp_path):
    """Results depend on torch's thread count (sums split across threads): a resume at
    another count goes on, but says it is not bitwise the uninterrupted run."""
    import warnings
    quick = {"limit": 64, "batch_size": 32, "progress": False}
    train("mlp", "digits", 1, out_dir=tmp_path, **quick)
    now = torch.get_num_threads()
    assert json.loads((tmp_path / "mlp.json").read_text())["torch_threads"] == now
    ckpt = torch.load(tmp_path / "mlp.ckpt", weights_only=True)
    assert ckpt["config"]["torch_threads"] == now
    ckpt["config"]["torch_threads"] = now + 3
    torch.save(ckpt, tmp_path / "mlp.ckpt")
    with warnings.catch_warnings():     # finished: it only evaluates and exports, silent
        warnings.simplefilter("error")
        train("mlp", "digits", 1, out_dir=tmp_path, **quick)
    with pytest.warns(UserWarning, match=rf"mlp.ckpt: the run began with {now + 3} torch "
                                         rf"thread\(s\) and goes on with {now} .* not be "
                                         r"bitwise those of an uninterrupted run") as caught:
        train("mlp", "digits", 2, out_dir=tmp_path, **quick)
    assert [w.filename for w in caught] == [__file__]      # where train was called
    ckpt = torch.load(tmp_path / "mlp.ckpt", weights_only=True)
    del ckpt["config"]["torch_threads"]     # a checkpoint from before it was recorded
    torch.save(ckpt, tmp_path / "mlp.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train("mlp", "digits", 3, out_dir=tmp_path, **quick)


def test_an_accuracy_of_no_images_is_refused():
    from models import build
    from models.train import evaluate
    with pytest.raises(ModelError, match="no images to evaluate"):
        evaluate(build("mlp", hidden=(4,)), np.zeros((0, 1, 28, 28), np.float32),
                 np.zeros(0, np.int64))


def test_an_opset_the_export_refuses_is_refused_before_training(tmp_path):
    with pytest.raises(ModelError, match="opset = 8: must be an integer in 9"):
        train("mlp", "digits", 1, out_dir=tmp_path, limit=64, progress=False, opset=8)
    assert not list(tmp_path.iterdir())


def test_a_data_file_is_resumed_by_its_contents_not_its_name(tmp_path):
    """A named data set was keyed by its spelling: a file replaced between runs resumed the
    old checkpoint, and ./d.npz against d.npz was refused as another run."""
    x, y = _two_class_arrays()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    quick = {"batch_size": 8, "out_dir": tmp_path / "o", "progress": False}
    train("mlp", str(tmp_path / "d.npz"), 1, **quick)
    train("mlp", str(tmp_path / "." / "d.npz"), 2, **quick)       # the same contents resume
    assert json.loads((tmp_path / "o" / "mlp.json").read_text())["resumed_from_epoch"] == 1
    np.savez(tmp_path / "d.npz", x_train=x, y_train=1 - y, x_test=x, y_test=1 - y)
    with pytest.raises(ModelError, match=r"is from another run \(data_sha256="):
        train("mlp", str(tmp_path / "d.npz"), 3, **quick)


def test_a_diverged_run_stops_before_its_checkpoint(tmp_path):
    """lr 1e8: it finished with exit 0, NaN weights, and a record that was not JSON."""
    with pytest.raises(ModelError, match=r"training diverged in epoch 1 \(loss nan\); try a "
                                         r"smaller --lr \(it is 1e\+08\)"):
        train("lenet5", "digits", 2, lr=1e8, limit=100, batch_size=32, out_dir=tmp_path,
              progress=False)
    assert not (tmp_path / "lenet5.ckpt").exists() and not (tmp_path / "lenet5.pt").exists()


@pytest.mark.parametrize("epoch", [-3, 1.7, True])
def test_a_checkpoint_with_a_bad_epoch_is_named_damaged(tmp_path, epoch):
    x, y = _two_class_arrays()
    quick = {"batch_size": 8, "out_dir": tmp_path, "progress": False}
    train("mlp", ((x, y), (x, y)), 1, **quick)
    ckpt = torch.load(tmp_path / "mlp.ckpt", weights_only=True)
    ckpt["epoch"] = epoch
    torch.save(ckpt, tmp_path / "mlp.ckpt")
    with pytest.raises(ModelError, match=r"mlp.ckpt: damaged .*--no-resume"):
        train("mlp", ((x, y), (x, y)), 2, **quick)


def test_a_checkpoint_from_before_data_digests_says_so(tmp_path):
    x, y = _two_class_arrays()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    quick = {"batch_size": 8, "out_dir": tmp_path / "o", "progress": False}
    train("mlp", str(tmp_path / "d.npz"), 1, **quick)
    ckpt = torch.load(tmp_path / "o" / "mlp.ckpt", weights_only=True)
    ckpt["config"]["data_sha256"] = None     # what a named data set stored before
    torch.save(ckpt, tmp_path / "o" / "mlp.ckpt")
    with pytest.raises(ModelError, match="predates data digests"):
        train("mlp", str(tmp_path / "d.npz"), 2, **quick)
