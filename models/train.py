"""Train a zoo model on a data set, with seeded data order, per-epoch checkpoints and resume.

>>> from models.train import train
>>> acc = train("lenet5", "fashion-mnist", epochs=12, out_dir="runs/lenet5")

Randomness: the initial weights come from ``torch`` seeded with ``seed`` (inside
``fork_rng``, so the global state is untouched); the data order of epoch ``e`` comes from a
numpy ``Generator`` seeded with ``(seed, 1, e)``. The two streams are independent, and an
interrupted run resumed from its checkpoint gives the same weights as an uninterrupted one.

Files in ``out_dir`` (``NAME`` = model name): ``NAME.ckpt`` (model + optimizer + epoch,
rewritten after every epoch), ``NAME.pt`` (final state dict), ``NAME.onnx`` (opset 17,
batch 1), ``NAME.json`` (accuracy, recipe, timings).
"""
import hashlib
import json
import math
import numbers
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models import data as datasets
from models.checkpoints import load_dict, save_atomic
from models.errors import ModelError
from models.onnx_export import DEFAULT_OPSET, check_opset, export
from models.zoo import ZOO, _options, build, options_for_data
from simulator.errors import first_line
from simulator.fileio import atomic_write, check_writable_folder

#: Threads torch uses here (the target machines have 2 cores; more oversubscribes).
TORCH_THREADS = 2
# Checkpoint fields that must match for a resume to continue the same run.
# the data by its contents, not its name: a file replaced between runs was resumed, and
# ./d.npz against d.npz (or fmnist against fashion-mnist) refused
_RESUME_KEYS = ("model", "model_kwargs", "data_sha256", "seed", "lr", "lr_decay",
                "weight_decay", "batch_size", "limit")


def limit_torch_threads() -> None:
    """Cap torch at ``TORCH_THREADS`` threads; a caller that asked for fewer (a busy
    machine, ``OMP_NUM_THREADS=1``) keeps its setting."""
    torch.set_num_threads(min(torch.get_num_threads(), TORCH_THREADS))


def warn_if_threads_changed(path, saved, *, stacklevel: int) -> None:
    """A run resumed at another torch thread count goes on validly, but its sums split
    across threads in another order: say that its weights will not be bitwise those of an
    uninterrupted run. Call it only where training remains. ``saved``: the count the
    checkpoint recorded (None: not recorded); ``stacklevel``: warnings.warn's, counted from
    here (3: the caller's caller)."""
    now = torch.get_num_threads()
    if saved is not None and saved != now:
        warnings.warn(f"checkpoint {path}: the run began with {saved} torch thread(s) and goes "
                      f"on with {now} (sums added in another order): the weights will not be "
                      f"bitwise those of an uninterrupted run", stacklevel=stacklevel)


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` (put in eval mode) on images ``x``, batched, without gradients."""
    model.eval()
    with torch.no_grad():
        parts = [model(torch.from_numpy(x[i:i + batch_size]))
                 for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on images ``x`` and labels ``y``."""
    if len(x) == 0:
        raise ModelError("no images to evaluate: an accuracy needs at least one")
    pred = predict_logits(model, x, batch_size).argmax(1).numpy()
    return int((pred == y).sum()) / len(x)


def accuracy_difference_interval(pairs, n_boot: int = 2000, seed: int = 0,
                                 level: float = 0.95) -> tuple[float, float]:
    """Interval, in percentage points, of the mean over runs of (accuracy A - accuracy B),
    from a paired bootstrap over the evaluation images: every resample draws the same
    images for every model, so what two models get right together cancels.

    ``pairs``: one ``(correct_a, correct_b)`` per run (data-order seed), each a boolean
    array over the same images. The interval says how much the finite evaluation set alone
    moves the difference; the spread between training runs is not in it."""
    arrays = [np.asarray(x, np.float64) for pair in pairs for x in pair]
    if not arrays or any(x.ndim != 1 or x.shape != arrays[0].shape for x in arrays):
        raise ValueError("pairs: need at least one (correct_a, correct_b) pair of equal-length "
                         "1-D arrays")
    d = np.mean([a - b for a, b in zip(arrays[::2], arrays[1::2])], 0)
    rng = np.random.default_rng(seed)            # this purpose's own stream
    chunk = max(1, min(n_boot, (1 << 22) // max(1, d.size)))   # bounded memory per draw
    boots = np.concatenate([d[rng.integers(0, d.size, (min(chunk, n_boot - i), d.size))]
                            .mean(1) for i in range(0, n_boot, chunk)])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(100 * boots, [tail, 100 - tail])
    return float(lo), float(hi)


def _describe(data) -> str:
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    (xtr, _), (xte, _) = data
    return f"arrays train{tuple(xtr.shape)} test{tuple(xte.shape)}"


def _arrays_digest(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes: in-memory data has no name, and
    other data of the same shapes must not resume a run."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()


def _load_checkpoint(path: Path, config: dict) -> dict:
    ckpt = load_dict(path, ModelError, "checkpoint")
    old = ckpt.get("config", {})
    if not isinstance(old, dict) or "model" not in ckpt:
        raise ModelError(f"checkpoint {path}: not a training checkpoint of xbarsim train")
    if "data_sha256" in old and old["data_sha256"] is None and "data_sha256" in config:
        raise ModelError(f"checkpoint {path} predates data digests (it knew its data set by "
                         f"name only); start over (--no-resume; resume=False from Python)")
    differ = [k for k in _RESUME_KEYS if old.get(k) != config[k]]
    if differ:
        what = ", ".join(f"{k}={old.get(k)!r} (now {config[k]!r})" for k in differ)
        raise ModelError(f"checkpoint {path} is from another run ({what}); "
                         f"use another output folder, or start over (--no-resume; resume=False "
                         f"from Python)")
    return ckpt


def check_fits(model: nn.Module, x: np.ndarray, y: np.ndarray, what: str) -> None:
    """Refuse, in one line, a model that cannot take the data's samples or has fewer
    outputs than the labels' classes (say an option overriding what the data gave)."""
    model.eval()
    with torch.no_grad():
        try:
            out = model(torch.from_numpy(np.ascontiguousarray(x[:1])))
        except (RuntimeError, ValueError, IndexError) as e:
            raise ModelError(f"{what} does not take the data's samples of shape "
                             f"{tuple(x.shape[1:])}: {first_line(e)}") from e
    declared = tuple(getattr(model, "sample_shape", ()) or ())
    if declared and math.prod(declared) != math.prod(x.shape[1:]):
        # it ran (an RNN takes any length, an adaptive pool any size), but it would be
        # exported and compiled for ``declared``, not for the data it trained on
        raise ModelError(f"{what} is built for samples of shape {declared}, the data's are "
                         f"{tuple(x.shape[1:])}; drop the option that sets it")
    classes = int(y.max()) + 1 if len(y) else 0
    if out.ndim != 2 or out.shape[1] < classes:
        raise ModelError(f"{what} gives {tuple(out.shape[1:])} outputs per sample, but the "
                         f"data's labels need {classes} classes")


def _run_epoch(model, opt, x, y, batch_size, rng, bar) -> float:
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = rng.permutation(len(x))
    total, seen = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        if len(idx) < 2 and seen:  # BatchNorm cannot train on a batch of one
            break
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(1, seen)


def train(model_name: str, data, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128,
          seed: int = 0, out_dir: str | os.PathLike = "xbarsim-out/train", resume: bool = True,
          limit: int | None = None, progress: bool = True, *, model_kwargs: dict | None = None,
          lr_decay: float = 1.0, weight_decay: float = 0.0, opset: int = DEFAULT_OPSET) -> float:
    """Train zoo model ``model_name`` with Adam and return its test accuracy (0..1).

    ``data``: a spec for ``models.data.load`` ("fashion-mnist", "digits", a folder, an
    .npz) or ``((x_train, y_train), (x_test, y_test))`` arrays, read by the loaders' rules
    (uint8 pixels / 255, floats in [0, 1], ``(N, H, W)`` given a channel axis, labels class
    indices). The model is fitted to the
    data's sample shape and class count; ``model_kwargs`` adds builder options. The learning
    rate of epoch e (from 0) is ``lr * lr_decay**e``. ``limit`` caps the number of training
    and of test examples. With ``resume``, a checkpoint in ``out_dir`` from the same run
    continues where it stopped (asking for more epochs than it has extends it).

    Results are bitwise reproducible at the same torch thread count (recorded as
    ``torch_threads``; resuming at another one warns), CPU and torch version.
    """
    if model_name not in ZOO:
        raise ModelError(f"unknown model {model_name!r}; choose from: {', '.join(ZOO)}")
    # before the data loads; and "seed" or "name" would clash with build()'s own arguments
    _options(model_name, model_kwargs or {})
    # batch_size 1 would train one example an epoch: a ragged batch of one is dropped
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 2),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ModelError(f"{name} = {value!r}: must be an integer >= {low}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) \
            or lr <= 0:  # NaN: refused
        raise ModelError(f"lr = {lr!r}: must be a finite number > 0")
    if not 0 < lr_decay <= 1:   # NaN fails too; < 0 would ascend the loss every other epoch
        raise ModelError(f"lr_decay = {lr_decay}: must be in (0, 1] (the learning rate's "
                         f"factor per epoch)")
    if not 0 <= weight_decay < math.inf:
        raise ModelError(f"weight_decay = {weight_decay}: must be a finite number >= 0")
    check_opset(opset)   # before training, not at the export after it
    limit_torch_threads()
    datasets.check_limit(limit)
    # before the data loads and anything trains: a file there said only "File exists"
    check_writable_folder(out_dir, f"out_dir {out_dir}", ModelError)
    # numpy numbers pass the checks above, but json.dumps and torch.load(weights_only=True)
    # refuse them in the record and the checkpoint: keep plain Python numbers
    epochs, batch_size, seed = int(epochs), int(batch_size), int(seed)
    lr, lr_decay, weight_decay = float(lr), float(lr_decay), float(weight_decay)
    limit = None if limit is None else int(limit)
    if isinstance(data, (str, os.PathLike)):
        (xtr, ytr), (xte, yte) = datasets.load_splits(data, limit)
    else:   # the loaders' rules: uint8 pixels / 255, floats in [0, 1], class indices
        for (x, y), split in zip(data, ("train", "test")):
            if len(x) != len(y):
                raise ModelError(f"{split} split: {len(x)} images but {len(y)} labels")
        (xtr, ytr), (xte, yte) = (
            (datasets._as_images(np.asarray(a[0]), f"{split} images")[:limit],
             datasets._as_labels(np.asarray(a[1]), f"{split} labels")[:limit])
            for a, split in zip(data, ("train", "test")))
        datasets.check_same_image_size(xtr, xte, "data arrays")
    if len(xtr) == 0 or len(xte) == 0:
        raise ModelError(f"data set {_describe(data)} has an empty train or test split")
    if len(xtr) < 2:
        raise ModelError(f"data set {_describe(data)}: {len(xtr)} training example; at least 2 "
                         f"are needed (a batch of one cannot train BatchNorm)")
    options = {**options_for_data(model_name, xtr.shape[1:]),
               "num_classes": datasets.num_classes(data, ytr, yte), **(model_kwargs or {})}
    config = {"model": model_name, "model_kwargs": options, "data": _describe(data),
              "data_sha256": _arrays_digest(xtr, ytr, xte, yte),
              "seed": seed, "lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay,
              "batch_size": batch_size, "limit": limit,
              # not a resume key: another count resumes with a warning, not a refusal
              "torch_threads": torch.get_num_threads()}

    model = build(model_name, seed=seed, **options)
    check_fits(model, xtr, np.concatenate([ytr, yte]), f"{model_name} {options}")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    out = Path(out_dir)
    ckpt_path = out / f"{model_name}.ckpt"
    start, history, elapsed = 0, [], 0.0
    if resume and ckpt_path.is_file():
        ckpt = _load_checkpoint(ckpt_path, config)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            start, history = ckpt["epoch"], list(ckpt["history"])
            if isinstance(start, bool) or not isinstance(start, int) or not (
                    0 <= start == len(history)):
                raise ValueError(f"epoch {start!r} with {len(history)} epochs of history")
            elapsed = float(ckpt["seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            # a damaged or hand-edited checkpoint: name it, not the line that tripped
            raise ModelError(f"checkpoint {ckpt_path}: damaged ({type(e).__name__}: "
                             f"{first_line(e)}); start over with --no-resume") from e
        if start > epochs:   # it would hand back the longer-trained model as this one
            raise ModelError(f"checkpoint {ckpt_path} holds {start} epochs, more than the "
                             f"{epochs} asked for; ask for {start} or more (a finished run "
                             f"exports as it is), or start over with --no-resume")
        if start < epochs:   # a finished run only evaluates and exports: bitwise the same
            warn_if_threads_changed(ckpt_path, ckpt["config"].get("torch_threads"),
                                    stacklevel=3)
    resumed_from = start

    n_batches = math.ceil(len(xtr) / batch_size)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr * lr_decay**epoch
        rng = np.random.default_rng((seed, 1, epoch))  # data order, independent of init
        with tqdm(total=n_batches, desc=f"{model_name} epoch {epoch + 1}/{epochs}",
                  disable=not progress, leave=False) as bar:
            loss = _run_epoch(model, opt, xtr, ytr, batch_size, rng, bar)
        if not (math.isfinite(loss) and all(torch.isfinite(p).all() for p in
                                            model.parameters())):
            # before its checkpoint: the last finished epoch stays the one to resume from
            raise ModelError(f"training diverged in epoch {epoch + 1} (loss {loss:.4g}); try a "
                             f"smaller --lr (it is {lr:g})")
        acc = evaluate(model, xte, yte)
        elapsed += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "loss": loss, "test_accuracy": acc})
        if progress:
            tqdm.write(f"{model_name} epoch {epoch + 1}/{epochs}: loss {loss:.4f}, "
                       f"test accuracy {acc:.4f}")
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                      "epoch": epoch + 1, "history": history, "seconds": elapsed,
                      "config": config}, ckpt_path)

    acc = evaluate(model, xte, yte)
    save_atomic(model.state_dict(), out / f"{model_name}.pt")
    export(model, out / f"{model_name}.onnx", opset)
    record = {**config, "epochs": max(epochs, start), "test_accuracy": acc,
              "test_examples": len(xte), "train_examples": len(xtr),
              "normalisation": datasets.NORMALISATION, "train_seconds": round(elapsed, 2),
              "resumed_from_epoch": resumed_from, "history": history,
              "torch_version": torch.__version__, "onnx_opset": opset}
    with atomic_write(out / f"{model_name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return acc
