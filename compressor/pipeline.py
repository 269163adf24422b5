"""The compression run: pretrain → ADMM → hard projection → masked retraining → snap.

>>> from compressor import compress, load_recipe
>>> result = compress(model, load_recipe("lenet5_block"), (x_train, y_train), (x_val, y_val),
...                   checkpoint="runs/lenet5.ckpt")
>>> result.accuracy          # {"dense": ..., "projected": ..., "final": ...}

``method="magnitude"`` is the baseline: the same hard projection applied to the (pretrained)
weights directly — structured magnitude pruning with the same structure and the same
crossbar budget — followed by the same retraining (same code, learning rate and masks-as-
parametrizations), lengthened by the epochs ADMM spent in its rounds so both arms train for
the same number of epochs. The arms differ only in how the mask was found, so the accuracy
gap is ADMM's gain and not extra training. ``accuracy["projected"]`` (right after the hard
projection, before retraining) shows how far each arm had already moved onto the set.

With ``distill`` in the recipe (:class:`~compressor.recipes.DistillSpec`) both arms' training
after ``pretrain`` also matches the dense model's softened outputs (knowledge distillation),
the dense logits of every training image computed once when compression starts.

With ``retrain.keep: best`` the run ends on the retraining epoch whose model scored highest
on the evaluation set (``val`` below, which should then be a validation split, not the test
set); every retraining epoch is feasible (masked and quantized), so any of them can be kept.
``CompressionResult.selected_epoch`` says which. With ``retrain.keep: average`` it ends on
the mean of the last ``average_epochs`` epochs' weights (stochastic weight averaging; a
model with BatchNorm then re-estimates its statistics over the training set), snapped.

Randomness: the data order, drawn for each epoch from a numpy generator seeded with
``(recipe.seed, stage, round, epoch)``, and torch's random ops (Dropout) within an epoch,
from torch's generator seeded from the same key (the caller's torch state is restored
after); model initialisation is the caller's. A checkpoint
(``torch.save`` of state dicts, read back with ``weights_only=True``) is written after every
ADMM round and every retraining epoch; a run resumed from it gives the same weights as an
uninterrupted one. It records a digest of the model and data the run started from, so a
checkpoint of another start (other weights or architecture, another data set or limit) is
refused rather than resumed. A loss or weight that turns non-finite stops the run with an
error before that epoch is checkpointed.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.checkpoints import load_dict, save_atomic
# evaluate: top-1 accuracy (0..1), eval mode
from models.train import evaluate, predict_logits, warn_if_threads_changed
from simulator.errors import first_line
from simulator.fileio import check_writable_folder

from .admm import ADMM
from .connectivity import feeding_layers, project_layers
from .constraints import Constraint
from .errors import CompressionError
from .fold import check_foldable, fold_pow2_scales
from .geometry import from_crossbar, to_crossbar
from .layout import layer_views
from .masking import RETRAIN_NUMERICS, Frozen, install, learned_scales, levels, snap
from .projections import PACKED, SIGNED, keep_mask
from .recipes import Recipe, recipe_difference, same_result

METHODS = ("admm", "magnitude")
STAGES = ("pretrain", "admm", "retrain", "done")   # a run's stages, in order (checkpoints)
# Checkpoints record how their projections were made: 2 = chained Linear layers projected
# connected (compressor.connectivity); a version-1 checkpoint is refused, not resumed.
PROJECTION_VERSION = 2


@dataclass
class LayerResult:
    """One compressed layer's outcome (arrays in torch layout)."""

    constraint: Constraint
    mask: np.ndarray
    """Boolean keep mask of the structure."""
    scale: float | np.ndarray | None
    """Weight units per integer level (float32-representable): one, or with ``per_channel``
    one per output channel (1-D); None if unquantized."""
    levels: np.ndarray | None
    """Integer weights ``q`` (int64) with ``weight == float32(q) * float32(scale)`` (a
    per-channel scale broadcast along the weight's first axis)."""
    view: tuple[int, ...] | None = None
    """The shape its constraint read the weight as, e.g. ``(out, C, H, W)`` for a TinyADC
    Linear after Flatten of a map (:mod:`compressor.layout`); None: its own."""


@dataclass
class CompressionResult:
    """What :func:`compress` returns; ``model`` holds the final (snapped) weights."""

    model: nn.Module
    recipe: Recipe
    method: str
    layers: dict[str, LayerResult]
    accuracy: dict[str, float]
    """Accuracy (0..1) on :func:`compress`'s ``val`` set (a validation split, or the test
    split if that is what was given): ``dense`` (start), ``projected`` (after hard
    projection, before retraining) and ``final``."""
    history: list[dict] = field(default_factory=list)
    """One record per epoch/round: stage, indices, loss, ρ, residuals, accuracy."""
    dense_state: dict | None = None
    """State dict of the dense model compression started from (after ``pretrain``), so the
    hardware loop can compare against exactly that model."""
    selected_epoch: int | None = None
    """With ``retrain.keep: best``, the retraining epoch (from 1) whose weights were kept;
    None when the last epoch's are (``keep: last``) or a mean of several (``keep: average``)."""
    output_scale: float = 1.0
    """``model``'s logits times this are the unfolded model's (``pow2: fold`` divides them
    by the product of the scale residuals, :mod:`compressor.fold`); 1 otherwise."""

    def kept_blocks(self) -> dict[str, np.ndarray]:
        """Per layer, which crossbar blocks of the recipe's geometry hold a kept weight: a
        ``(row_blocks, col_blocks)`` bool array (crossbar orientation, rows = inputs)."""
        g = self.recipe.geometry
        return {n: g.blocks(to_crossbar(r.mask, r.view)).any(axis=(1, 3))
                for n, r in self.layers.items()}

    def shared_blocks(self, other: CompressionResult) -> dict[str, tuple[int, int, int]]:
        """Per layer: (blocks both runs keep, blocks this run keeps, blocks ``other``
        keeps). Under block pruning, two runs that keep the same blocks trained the same
        sub-network; only the weights in it differ. (Under finer structures nearly every
        block holds a kept weight, so equal counts say little there.)"""
        theirs = other.kept_blocks()
        return {n: (int((k & theirs[n]).sum()), int(k.sum()), int(theirs[n].sum()))
                for n, k in self.kept_blocks().items() if n in theirs}


def compress(model: nn.Module, recipe: Recipe, train: tuple[np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray], *, method: str = "admm",
             checkpoint: str | os.PathLike | None = None, resume: bool = True,
             progress: bool = True) -> CompressionResult:
    """Compress ``model`` in place by ``recipe``; ``train``/``val`` are ``(x, y)`` arrays
    (float32 inputs, int64 labels). ``val`` is the set every epoch is scored on, and
    ``retrain.keep: best`` selects on it: give a validation split, not the test images the
    results are reported on. Validates the recipe against the model before training.
    Results are bitwise reproducible at the same torch thread count (the checkpoint records
    it; resuming at another one warns), CPU and torch version.
    """
    if method not in METHODS:
        raise CompressionError(f"method={method!r}: must be one of {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise CompressionError(f"model: a torch.nn.Module (e.g. models.build(...)), not "
                               f"{type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise CompressionError(f"recipe: a Recipe (compressor.load_recipe(path or shipped "
                               f"name)), not {type(recipe).__name__}")
    _check_data(model, train, val)     # the CLI's checks, for callers of the API too
    layers = recipe.resolve(model)
    if not layers:
        raise CompressionError(f"recipe {recipe.name!r} constrains no layer of this model")
    _warn_pruning_nothing(model, layers, recipe.geometry)
    fold = [n for n, c in layers.items() if c.quant is not None and c.quant.pow2 == "fold"]
    if fold:
        check_foldable(model, fold)     # before any training
    if checkpoint is not None:   # the first save, after pretraining, would fail on it
        _check_checkpoint_path(Path(checkpoint))
    run = _Run(model, recipe, layers, method, train, val, checkpoint, progress)
    if resume and run.ckpt_path is not None and run.ckpt_path.is_file():
        run.load()
    result = run.go()
    return fold_pow2_scales(result, fold) if fold else result


def _check_checkpoint_path(path: Path) -> None:
    """Refuse a checkpoint path that is a folder, or whose folder cannot take files."""
    if path.is_dir():
        raise CompressionError(f"checkpoint {path}: a folder is there; name the file to keep "
                               f"the run's checkpoint in, e.g. runs/model.ckpt")
    check_writable_folder(path.parent, f"checkpoint {path}", CompressionError)


def _check_data(model: nn.Module, train, val) -> None:
    """Refuse, before any training, data that would fail inside an epoch (an IndexError, a
    torch shape error) or train on silently changed labels (floats truncated)."""
    from models.errors import ModelError
    from models.train import check_fits
    labels = []
    for what, split in (("train", train), ("val", val)):
        if not isinstance(split, (tuple, list)) or len(split) != 2:
            raise CompressionError(f"{what}: an (images, labels) pair of arrays")
        x, y = np.asarray(split[0]), np.asarray(split[1])
        if y.ndim != 1:   # an (N, 1) column compared with (N,) predictions broadcast to N x N
            raise CompressionError(f"{what}: labels must be a 1-D array of class indices, not "
                                   f"shape {y.shape}")
        if len(x) != len(y):
            raise CompressionError(f"{what}: {len(x)} images but {len(y)} labels")
        if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.bool_):
            raise CompressionError(f"{what}: labels must be class indices (integers >= 0), "
                                   f"not {y.dtype}")
        bad = ~np.isfinite(y) | (y != np.rint(y)) | (y < 0) if y.size else np.zeros(0, bool)
        if bad.any():
            raise CompressionError(f"{what}: labels must be class indices (integers >= 0); "
                                   f"label {int(np.argmax(bad))} is {y[np.argmax(bad)].item()!r}")
        labels.append(y.astype(np.int64))
    was_training = model.training    # check_fits runs it in eval mode: give it back as it was
    try:
        check_fits(model, np.asarray(train[0], np.float32), np.concatenate(labels), "model")
    except ModelError as e:
        raise CompressionError(str(e)) from None
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _torch_stream(rng: np.random.Generator):
    """Torch's random ops (Dropout) draw from a stream seeded by ``rng``, a stage's own key:
    a resumed run repeats them, and the caller's torch state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(1 << 62)))
        yield


def _loss(distill):
    """The training loss ``f(logits, labels, teacher_logits)``: cross-entropy, or with
    ``distill`` (a :class:`DistillSpec`) its mix with the distillation term."""
    ce = nn.functional.cross_entropy
    if distill is None or not distill.alpha:
        return lambda out, y, teacher: ce(out, y)
    a, t = distill.alpha, distill.temperature

    def mixed(out, y, teacher):
        # T**2 keeps the soft term's gradient on the hard term's scale (Hinton et al. 2015)
        soft = nn.functional.kl_div(nn.functional.log_softmax(out / t, 1),
                                    nn.functional.log_softmax(teacher / t, 1),
                                    reduction="batchmean", log_target=True)
        return (1 - a) * ce(out, y) + a * t * t * soft
    return mixed


def _warn_pruning_nothing(model: nn.Module, layers: dict, geom) -> None:
    """Warn, before training, of each layer whose sparsity rule keeps every group of its
    crossbars (keep 0.3 of one block rounds to 1 of 1; TinyADC n at or above its rows per
    read): it trains and reports as constrained, and stays dense."""
    from .geometry import to_crossbar
    from .projections import PER_SEGMENT, keep_mask
    modules = dict(model.named_modules())
    for name, c in layers.items():
        per_segment = c.structure in PER_SEGMENT
        if c.structure is None or (not per_segment and c.amount >= 1):
            continue       # keep: 1 asks for every group (a recipe's "this one stays")
        shape = tuple(to_crossbar(modules[name].weight.detach()).shape)
        ones = np.ones(shape)       # all of one sign: the most a signed structure keeps
        if keep_mask(ones, geom, c.structure, c.amount, sign=ones).all():
            what = (f"n = {c.amount} per column segment" if per_segment
                    else f"keep = {c.amount}")
            warnings.warn(f"{name}: {c.structure} with {what} prunes nothing on its "
                          f"{shape[0]} x {shape[1]} crossbar matrix ({geom.rows} x "
                          f"{geom.cols} crossbars): every group is kept, the layer stays dense",
                          stacklevel=3)


def _origin_digest(model: nn.Module, *arrays: tuple[np.ndarray, ...]) -> str:
    """Hex digest of a model's state (names, dtypes, shapes, values) and the data arrays."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    for pair in arrays:
        for a in pair:
            h.update(f"{a.dtype}|{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _set_lr(opt: torch.optim.Optimizer, spec, epoch: int) -> None:
    """Learning rate of ``epoch`` of a training stage: ``lr * lr_decay**epoch``."""
    for g in opt.param_groups:
        g["lr"] = spec.lr * spec.lr_decay**epoch


class _Run:
    """One compression run's state; ``stage``/``step`` say what is done (for resume)."""

    def __init__(self, model, recipe, layers, method, train, val, checkpoint, progress):
        self.model, self.recipe, self.layers, self.method = model, recipe, layers, method
        self.x, self.y = np.asarray(train[0], np.float32), np.asarray(train[1], np.int64)
        self.xt, self.yt = np.asarray(val[0], np.float32), np.asarray(val[1], np.int64)
        if len(self.x) < 2:
            raise CompressionError(f"training set holds {len(self.x)} image(s); at least 2 "
                                   f"are needed (a batch of one cannot train BatchNorm)")
        if len(self.xt) == 0:
            raise CompressionError("evaluation set is empty: every epoch is scored on it")
        self.ckpt_path = Path(checkpoint) if checkpoint is not None else None
        # what the run starts from: a checkpoint of another start is refused, not resumed
        self.origin = (None if self.ckpt_path is None else
                       _origin_digest(model, (self.x, self.y), (self.xt, self.yt)))
        self.progress = progress
        # {consumer: producer} of chained layers: their projections stay connected
        self.feeds = feeding_layers(model, layers, torch.from_numpy(self.x[:1]))
        # {name: (out, C, H, W)}: TinyADC (and aligned_rows) Linear layers after Flatten of a
        # map read it as the chip's crossbars do, (h, w, c)
        self.views = layer_views(model, layers, torch.from_numpy(self.x[:1]))
        self.stage, self.step = "pretrain", 0
        self.opt_state = None
        self.admm_state = None
        self.frozen: dict[str, Frozen] = {}
        self.history: list[dict] = []
        self.accuracy: dict[str, float] = {}
        self.dense_state: dict | None = None
        self.teacher: torch.Tensor | None = None  # dense logits per training image (distill)
        self.best_state: dict | None = None  # retrain.keep best: the best epoch's weights
        self.mean_state: dict | None = None  # retrain.keep average: the running mean so far

    # -- stages ---------------------------------------------------------------------------

    def go(self) -> CompressionResult:
        r = self.recipe
        if self.stage == "pretrain":
            opt = self._optimizer(r.pretrain.lr)
            while self.step < r.pretrain.epochs:
                _set_lr(opt, r.pretrain, self.step)
                loss = self._epoch(opt, 0, 0, self.step, f"pretrain {self.step + 1}/"
                                   f"{r.pretrain.epochs}")
                self._record("pretrain", opt, loss=loss)
            self.accuracy["dense"] = evaluate(self.model, self.xt, self.yt)
            self.dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if r.distill.alpha:
                self.teacher = predict_logits(self.model, self.x)
            self._advance("admm" if self.method == "admm" else "retrain")
        if self.stage == "admm":
            self._admm()
            self._advance("retrain")
        if self.stage == "retrain":
            self._retrain()
            self._advance("done")
        return self._result()

    def _admm(self) -> None:
        a, geom = self.recipe.admm, self.recipe.geometry

        def targets(rnd):  # progressive ADMM: looser sparsity in the ramp's rounds
            return {n: c.relaxed(a.tightness(rnd), geom) for n, c in self.layers.items()}
        admm = ADMM(self.model, targets(self.step), geom, a.rho_at(self.step), self.feeds,
                    self.views)
        if self.admm_state is not None:
            admm.load_state_dict(self.admm_state)
        opt = self._optimizer(a.lr)
        while self.step < a.rounds:
            rnd = self.step
            admm.set_rho(a.rho_at(rnd))
            admm.layers = targets(rnd)
            loss = 0.0
            hooks = ({"penalty_grad": admm.add_penalty_grad} if a.penalty == "gradient" else
                     {"after_step": lambda: admm.proximal_step(opt.param_groups[0]["lr"])})
            for e in range(a.epochs_per_round):
                loss = self._epoch(opt, 1, rnd, e, f"admm round {rnd + 1}/{a.rounds} "
                                   f"epoch {e + 1}/{a.epochs_per_round}", **hooks)
            residual = admm.update()
            self.admm_state = admm.state_dict()
            self._record("admm", opt, loss=loss, rho=admm.rho,
                         residual=max(residual.values()), moved=max(admm.moved.values()))
        self.admm_state = None

    def _retrain(self) -> None:
        r = self.recipe.retrain
        if not self.frozen:  # first entry: hard projection fixes masks and scales
            with torch.no_grad():
                modules = dict(self.model.named_modules())
                projected = project_layers(self.layers, {n: modules[n].weight
                                                         for n in self.layers},
                                           self.recipe.geometry, self.feeds, self.views)
                for n, c in self.layers.items():
                    w = modules[n].weight
                    proj, scale, keep = projected[n]
                    # signed structures rank each sign apart: a kept weight keeps its sign
                    sign = (np.where(keep, np.sign(w.detach().cpu().numpy()), 0).astype(np.int8)
                            if c.structure in SIGNED else None)
                    w.copy_(proj)
                    qmin, qmax = c.quant.levels if c.quant is not None else (0, 0)
                    self.frozen[n] = Frozen(keep, scale, qmin, qmax, sign)
            install(self.model, self.frozen, self._tile(), self._learned())
            self.accuracy["projected"] = evaluate(self.model, self.xt, self.yt)
        epochs = self._retrain_epochs()
        opt = self._optimizer(r.lr)
        while self.step < epochs:
            _set_lr(opt, r, self.step)
            loss = self._epoch(opt, 2, 0, self.step, f"retrain {self.step + 1}/{epochs}")
            self._record("retrain", opt, loss=loss)
        if self.best_state is not None:  # keep: best (checkpoint selection on the eval set)
            self.model.load_state_dict(self.best_state)
            if self.progress:
                k = self._selected_epoch()
                tqdm.write(f"{self.recipe.name} retrain: kept epoch {k} of {epochs} "
                           f"(accuracy {self._retrain_accuracies()[k - 1]:.4f})")
        if self.mean_state is not None:  # keep: average
            self.model.load_state_dict({**self.model.state_dict(), **self.mean_state})
            self._renormalize()
            if self.progress:
                tqdm.write(f"{self.recipe.name} retrain: kept the mean of the last "
                           f"{self.recipe.retrain.average_epochs} epochs' weights")

    def _retrain_epochs(self) -> int:
        epochs = self.recipe.retrain.epochs
        if self.method == "magnitude":  # same training budget as the ADMM arm
            epochs += self.recipe.admm.rounds * self.recipe.admm.epochs_per_round
        return epochs

    def _accumulate_mean(self) -> None:
        """``keep: average``: fold this epoch's floating-point state into the running mean
        if it is one of the last ``average_epochs``."""
        count = self.step - (self._retrain_epochs() - self.recipe.retrain.average_epochs)
        if count < 1:
            return
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                 if v.is_floating_point()}
        if self.mean_state is None:
            self.mean_state = state
        else:
            for k, v in self.mean_state.items():
                v.add_(state[k].sub_(v).div_(count))

    def _renormalize(self) -> None:
        """BatchNorm statistics of averaged weights: re-estimated over the training set (the
        mean of each epoch's running statistics belongs to no one set of weights)."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for m in self.model.modules()):
            return
        bs = self.recipe.batch_size
        batches = (torch.from_numpy(self.x[i:i + bs]) for i in range(0, len(self.x), bs)
                   if len(self.x[i:i + bs]) > 1)
        # update_bn runs the model in train mode, Dropout included: a stream of its own
        # (stage 3 after pretrain 0, ADMM 1, retrain 2), as each epoch has
        rng = np.random.default_rng((self.recipe.seed, 3, 0, 0))
        with _torch_stream(rng), torch.no_grad():
            torch.optim.swa_utils.update_bn(batches, self.model)

    # -- plumbing -------------------------------------------------------------------------

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        # fused: one kernel per step instead of ~10 passes per parameter; unfused Adam was
        # half of a VGG-style training step on 2 CPU cores (profiled)
        # parameters by name: removing a parametrization re-registers its weight last, so
        # the module order differs between a run and its resumption, and a saved state is
        # matched to parameters by position (swapped moments crashed the fused kernel)
        params = [p for _, p in sorted(self.model.named_parameters())]
        opt = torch.optim.Adam(params, lr=lr, fused=True)
        if self.opt_state is not None:  # resumed mid-stage
            saved = self.opt_state["state"]
            if any(k in saved and "exp_avg" in saved[k]
                   and tuple(saved[k]["exp_avg"].shape) != tuple(p.shape)
                   for k, p in enumerate(params)):
                raise CompressionError(
                    f"{self.recipe.name}: the checkpoint's optimizer state does not fit the "
                    f"model's parameters (written by an older xbarsim?); rerun with "
                    f"--no-resume (resume=False)")
            opt.load_state_dict(self.opt_state)
            self.opt_state = None
        return opt

    def _epoch(self, opt, stage_id: int, rnd: int, epoch: int, desc: str,
               penalty_grad=None, after_step=None) -> float:
        self.model.train()
        rng = np.random.default_rng((self.recipe.seed, stage_id, rnd, epoch))
        order = rng.permutation(len(self.x))
        with _torch_stream(rng):
            return self._steps(opt, order, desc, penalty_grad, after_step)

    def _steps(self, opt, order, desc, penalty_grad, after_step) -> float:
        bs = self.recipe.batch_size
        teacher = self.teacher  # None until pretraining is done, and without distillation
        loss_fn = _loss(self.recipe.distill if teacher is not None else None)
        total, seen = 0.0, 0
        with tqdm(total=math.ceil(len(order) / bs), desc=desc, disable=not self.progress,
                  leave=False) as bar:
            for i in range(0, len(order), bs):
                idx = order[i:i + bs]
                if len(idx) < 2 and seen:  # BatchNorm cannot train on a batch of one
                    break
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(self.model(torch.from_numpy(self.x[idx])),
                               torch.from_numpy(self.y[idx]),
                               None if teacher is None else teacher[torch.from_numpy(idx)])
                value = loss.item()
                if not math.isfinite(value):   # nothing of this epoch is checkpointed
                    raise CompressionError(
                        f"{self.recipe.name}: training diverged in {desc} (loss {value}); "
                        f"lower the learning rate (lr {opt.param_groups[0]['lr']:g}); the last "
                        f"checkpoint is from before this epoch")
                total += value * len(idx)
                seen += len(idx)
                loss.backward()
                if penalty_grad is not None:
                    penalty_grad()
                opt.step()
                if after_step is not None:
                    after_step()
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}")
        if not self._finite():
            # the last step can diverge after its loss was checked
            raise CompressionError(
                f"{self.recipe.name}: training diverged in {desc} (non-finite weights or "
                f"outputs); lower "
                f"the learning rate (lr {opt.param_groups[0]['lr']:g}); the last checkpoint "
                f"is from before this epoch")
        return total / max(1, seen)

    def _finite(self) -> bool:
        """Weights, and the outputs on the first training batch (eval mode, no side
        effects), all finite."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            return False
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(torch.from_numpy(self.x[:self.recipe.batch_size]))
        finally:
            self.model.train(was)
        return bool(torch.isfinite(out).all())

    def _record(self, stage: str, opt, **info) -> None:
        self.step += 1
        acc = evaluate(self.model, self.xt, self.yt)
        if (stage == "retrain" and self.recipe.retrain.keep == "best"
                and acc > max(self._retrain_accuracies(), default=-1.0)):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if stage == "retrain" and self.recipe.retrain.keep == "average":
            self._accumulate_mean()
        self.history.append({"stage": stage, "step": self.step, **info, "accuracy": acc})
        if self.progress:
            extra = ", ".join(f"{k} {v:.4g}" for k, v in info.items())
            tqdm.write(f"{self.recipe.name} {stage} {self.step}: {extra}, accuracy {acc:.4f}")
        self.opt_state = opt.state_dict()
        self.save()
        self.opt_state = None

    def _advance(self, stage: str) -> None:
        self.stage, self.step = stage, 0
        if stage == "done":
            self.frozen = learned_scales(self.model, self.frozen)
            snap(self.model, self.frozen)
            self._repack()
            self.accuracy["final"] = evaluate(self.model, self.xt, self.yt)
        self.save()

    def _repack(self) -> None:
        """Re-apply support-dependent structures (``tinyadc_packed``) to the snapped weights:
        weights that rounded to 0 in retraining can empty a row, which moves the compiler's
        packed crossbars; zero what would then exceed ``n`` (rarely anything)."""
        modules = dict(self.model.named_modules())
        for n, c in self.layers.items():
            if c.structure not in PACKED:
                continue
            w = modules[n].weight
            arr = w.detach().cpu().double().numpy()
            view = self.views.get(n)
            m = to_crossbar(arr, view)
            keep = np.ascontiguousarray(from_crossbar(
                keep_mask(m * m, self.recipe.geometry, c.structure, c.amount, sign=m),
                arr.shape, view))
            if np.array_equal(keep, arr != 0):
                continue
            with torch.no_grad():
                w.mul_(torch.as_tensor(keep, dtype=w.dtype))
            f = self.frozen[n]
            self.frozen[n] = Frozen(f.mask & keep, f.scale, f.qmin, f.qmax, f.sign)

    def _tile(self) -> tuple[int, int]:
        """The crossbar's ``(rows, cols)``: sparse Linear layers retrain tile by tile."""
        return self.recipe.geometry.rows, self.recipe.geometry.cols

    def _learned(self) -> frozenset[str]:
        """Layers whose scale retraining learns (``retrain.learn_scale``): quantized ones
        with a free, float scale (a recipe's fixed ``scale`` and ``pow2: true`` stay)."""
        if not self.recipe.retrain.learn_scale:
            return frozenset()
        return frozenset(n for n, c in self.layers.items() if c.quant is not None
                         and c.quant.scale is None and c.quant.pow2 is not True)

    def _retrain_accuracies(self) -> list[float]:
        return [h["accuracy"] for h in self.history if h["stage"] == "retrain"]

    def _selected_epoch(self) -> int | None:
        """``keep: best``: the first retraining epoch (from 1) with the highest accuracy."""
        accs = self._retrain_accuracies()
        if self.recipe.retrain.keep != "best" or not accs:
            return None
        return int(np.argmax(accs)) + 1

    def _result(self) -> CompressionResult:
        modules = dict(self.model.named_modules())
        out = {n: LayerResult(self.layers[n], f.mask, f.scale, levels(modules[n].weight, f),
                              self.views.get(n))
               for n, f in self.frozen.items()}
        return CompressionResult(self.model, self.recipe, self.method, out, dict(self.accuracy),
                                 list(self.history), self.dense_state, self._selected_epoch())

    # -- checkpoints ----------------------------------------------------------------------

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        state = {
            "fingerprint": self.recipe.fingerprint(), "method": self.method,
            "projection": PROJECTION_VERSION, "retrain_numerics": RETRAIN_NUMERICS,
            "torch_threads": torch.get_num_threads(),
            "views": {n: list(v) for n, v in self.views.items()},
            "feeds": dict(self.feeds),
            "origin": self.origin,
            "stage": self.stage, "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.opt_state, "admm": self.admm_state, "history": self.history,
            "accuracy": self.accuracy, "dense": self.dense_state, "teacher": self.teacher,
            "best_state": self.best_state, "mean_state": self.mean_state,
            "frozen": {n: {"mask": torch.from_numpy(f.mask),
                           "scale": (torch.from_numpy(f.scale) if np.ndim(f.scale)
                                     else f.scale),    # a tensor: weights_only loads it
                           "qmin": f.qmin, "qmax": f.qmax,
                           **({} if f.sign is None else {"sign": torch.from_numpy(f.sign)})}
                       for n, f in self.frozen.items()},
        }
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic(state, self.ckpt_path)   # never a half-written checkpoint

    def load(self) -> None:
        p = self.ckpt_path
        ck = load_dict(p, CompressionError, "checkpoint")
        if ck.get("method") != self.method:
            raise CompressionError(f"checkpoint {p}: of method {ck.get('method')!r}, this run's "
                                   f"is {self.method!r}; delete it or choose another path")
        if not same_result(ck.get("fingerprint"), self.recipe.fingerprint()):
            diff = recipe_difference(ck.get("fingerprint"), self.recipe.fingerprint())
            raise CompressionError(f"checkpoint {p}: from another recipe ({diff}); delete it "
                                   f"or choose another path")
        if ck.get("origin", self.origin) != self.origin:   # absent: written before it was kept
            raise CompressionError(f"checkpoint {p}: from a run that started from another "
                                   f"model or data (weights, architecture, data set or "
                                   f"limit); delete it or do not resume")
        views = {n: tuple(v) for n, v in ck.get("views", {}).items()}
        if views != self.views:    # absent: written before views, when there were none
            raise CompressionError(
                f"checkpoint {p}: projected with layer views {views or 'none'}, this run "
                f"has {self.views or 'none'} (a Linear after Flatten of a map is constrained "
                f"in the chip's (h, w, c) order where the structure needs it, "
                f"compressor.layout): delete it to rerun")
        feeds = ck.get("feeds", self.feeds)   # absent: written before they were recorded
        if feeds != self.feeds:   # its masks or ADMM state were ranked with other producers
            raise CompressionError(
                f"checkpoint {p}: its layers were coupled as {feeds or 'none'} "
                f"(consumer: producer), this run couples {self.feeds or 'none'} "
                f"(compressor.connectivity): delete it to rerun")
        if ck.get("projection", 1) != PROJECTION_VERSION:
            raise CompressionError(f"checkpoint {p}: written before chained layers were "
                                   f"projected connected (compressor.connectivity); its masks "
                                   f"may read dead neurons: delete it to rerun")
        try:   # a damaged or hand-edited checkpoint: one line now, not a traceback mid-run
            self._check_state(ck)
            self.frozen = {n: Frozen(f["mask"].numpy(),
                                     f["scale"].numpy() if torch.is_tensor(f["scale"])
                                     else f["scale"], f["qmin"], f["qmax"],
                                     f["sign"].numpy() if "sign" in f else None)
                           for n, f in ck["frozen"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CompressionError(f"checkpoint {p}: damaged ({type(e).__name__}: "
                                   f"{first_line(e)}); delete it or rerun with --no-resume "
                                   f"(resume=False)") from e
        misfit = self._misfit(ck)
        if misfit:
            raise CompressionError(f"checkpoint {p}: does not fit this model ({misfit}); "
                                   f"delete it or do not resume")
        if ck["stage"] != "done":   # a finished run trains nothing more
            # absent: not recorded then; stacklevel 4: compress's caller
            warn_if_threads_changed(p, ck.get("torch_threads"), stacklevel=4)
        if ck["stage"] == "retrain":  # parametrized module names
            numerics = ck.get("retrain_numerics", 1)
            if numerics != RETRAIN_NUMERICS:
                # valid to go on (the same function), but say so: not bitwise the run it began
                warnings.warn(f"checkpoint {p}: retraining began with numerics {numerics} "
                              f"and goes on with {RETRAIN_NUMERICS} (the same function summed "
                              f"in another order): the weights will not be bitwise those of "
                              f"an uninterrupted run", stacklevel=3)
            install(self.model, self.frozen, self._tile(), self._learned())
        try:
            self.model.load_state_dict(ck["model"])
        except (RuntimeError, KeyError) as e:
            raise CompressionError(f"checkpoint {p}: does not fit this model "
                                   f"({first_line(e)}); delete it or do not resume") from e
        self.stage, self.step = ck["stage"], ck["step"]
        self.opt_state, self.admm_state = ck["optimizer"], ck["admm"]
        self.history, self.accuracy = list(ck["history"]), dict(ck["accuracy"])
        self.dense_state = ck.get("dense")
        self.teacher = ck.get("teacher")
        self.best_state = ck.get("best_state")
        self.mean_state = ck.get("mean_state")

    def _check_state(self, ck: dict) -> None:
        """Refuse (ValueError) a checkpoint whose run state would fail only once
        training is under way: an unknown stage, missing entries, entries of the wrong kind
        (:meth:`_misfit` compares the shapes)."""
        missing = [k for k in ("stage", "step", "model", "optimizer", "admm", "history",
                               "accuracy", "frozen") if k not in ck]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if ck["stage"] not in STAGES:
            raise ValueError(f"stage {ck['stage']!r} is none of {', '.join(STAGES)}")
        if isinstance(ck["step"], bool) or not isinstance(ck["step"], int) or ck["step"] < 0:
            raise ValueError(f"step {ck['step']!r} is not an integer >= 0")
        if not isinstance(ck["accuracy"], dict) or not all(
                isinstance(h, dict) and "stage" in h and "accuracy" in h for h in ck["history"]):
            raise ValueError("accuracy or history is not the records a run writes")
        if ck["optimizer"] is not None and not {"state", "param_groups"} <= set(ck["optimizer"]):
            raise ValueError("optimizer is not an optimizer's state dict")
        frozen = ck["frozen"].values()
        tensors = [f["mask"] for f in frozen] + [f["sign"] for f in frozen if "sign" in f]
        admm = ck["admm"]
        if admm is not None:   # mid-ADMM: ADMM.state_dict() (keep: absent in older ones)
            missing = [k for k in ("rho", "Z", "U") if k not in admm]
            if missing:
                raise ValueError(f"ADMM state lacks {', '.join(missing)}")
            if isinstance(admm["rho"], bool) or not isinstance(admm["rho"], (int, float)):
                raise ValueError(f"ADMM rho {admm['rho']!r} is not a number")
            per_layer = [admm[k] for k in ("Z", "U", "keep") if admm.get(k) is not None]
            if not all(isinstance(d, dict) for d in per_layer):
                raise ValueError("ADMM Z, U or keep is not a dict of layer: tensor")
            tensors += [t for d in per_layer for t in d.values()]
        if not all(torch.is_tensor(t) for t in tensors):
            raise ValueError("a mask or ADMM state holds something other than tensors")

    def _misfit(self, ck: dict) -> str:
        """How a checkpoint's masks and ADMM state (checked by :meth:`_check_state`) do not
        fit the constrained layers' weights ('' if they do): another model's, or damaged."""
        modules = dict(self.model.named_modules())
        shapes = {n: tuple(modules[n].weight.shape) for n in self.layers}
        parts = []
        if ck["frozen"]:
            parts.append(("frozen mask", {n: f["mask"] for n, f in ck["frozen"].items()}, True))
            parts.append(("frozen sign", {n: f["sign"] for n, f in ck["frozen"].items()
                                          if "sign" in f}, False))   # signed structures only
        if ck["admm"] is not None:
            parts += [(f"ADMM {k}", ck["admm"][k], True) for k in ("Z", "U", "keep")
                      if k != "keep" or ck["admm"].get(k)]   # keep: absent in older ones
        for what, tensors, every in parts:
            names = set(tensors)
            if names - set(shapes) or every and names != set(shapes):
                return f"{what} for layers {sorted(names)}, this run constrains {sorted(shapes)}"
            for n, t in tensors.items():
                if tuple(t.shape) != shapes[n]:
                    return f"{what} of {n} is {tuple(t.shape)}, its weight is {shapes[n]}"
        return ""
