"""Compression recipes: YAML files saying which layers get which constraint, and the schedule.

A recipe is validated completely before any training: an unknown field, a layer pattern that
matches no layer, or an impossible target raises :class:`CompressionError` with one line
naming the field, the value and what is allowed. Shipped recipes live in
``compressor/recipes/`` and can be named without a path (``lenet5_block``).

Format (every section but ``layers`` optional; defaults shown)::

    name: lenet5_block
    description: free text
    geometry: {rows: 128, cols: 128, cell_bits: 2, weight_bits: 8, mapping: differential}
    seed: 0                 # data order of every stage
    batch_size: 64
    pretrain: {epochs: 0, lr: 1.0e-3}     # plain training first (for untrained models)
    admm:
      rounds: 4             # Z/U updates; each after epochs_per_round epochs of W-step
      epochs_per_round: 1
      lr: 2.0e-3            # Adam
      rho: 0.1              # penalty of round 0, per squared weight unit
      rho_growth: 2.0       # rho of round r: min(rho_max, rho * rho_growth**r)
      rho_max: 10.0
      ramp_rounds: 0        # < rounds; round r < ramp projects onto keep**((r+1)/(ramp+1))
                            # (n: geometric from the crossbar rows down to n)
      penalty: gradient     # gradient: rho (W - Z + U) joins the loss gradient in Adam;
                            # proximal: applied after each Adam step, decoupled (AdamW-like)
    retrain: {epochs: 2, lr: 2.0e-4, lr_decay: 1.0, keep: last, learn_scale: false}
                            # masked (fake-quantized) fine-tuning; epoch e at
                            # lr * lr_decay**e (pretrain takes lr_decay too); keep: best ends
                            # on the epoch with the highest accuracy on compress()'s
                            # evaluation set, keep: average on the mean weights of the last
                            # average_epochs (4) epochs (SWA); learn_scale: the layers'
                            # scales train too (LSQ)
    distill: {alpha: 0.0, temperature: 4.0}  # knowledge distillation from the dense model
                            # in the ADMM W-step and retraining; alpha 0: off
    layers:                 # first matching rule wins; unmatched layers stay dense float
      - match: "features.*"               # module name or fnmatch glob (or a list of them)
        sparsity: {structure: blocks, keep: 0.5}   # tinyadc(_packed)(_signed) take n:
        quant: {bits: 8, mapping: differential, pow2: false}  # bits/mapping default: geometry
                            # pow2: true projects onto power-of-two scales in ADMM; fold
                            # trains free scales, then folds them exactly (compressor.fold);
                            # per_channel: true, a scale per output channel
      - match: classifier.4
        # no sparsity/quant: leave this layer dense
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from simulator.config import read_yaml

from .constraints import Constraint, QuantSpec
from .errors import CompressionError
from .geometry import CrossbarGeometry
from .projections import ALL_STRUCTURES, PER_SEGMENT

#: Folder of the recipes shipped with the package.
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
#: Module types whose ``weight`` a recipe can constrain (matched by class name).
COMPRESSIBLE = ("Linear", "Conv1d", "Conv2d", "Conv3d")


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """A plain or masked training stage."""

    epochs: int = 0
    """Passes over the training set."""
    lr: float = 1e-3
    """Adam learning rate of the first epoch."""
    lr_decay: float = 1.0
    """Factor the learning rate is multiplied by after each epoch: epoch ``e`` (from 0)
    runs at ``lr * lr_decay**e``; in (0, 1]."""
    keep: str = "last"
    """Which weights the stage ends with: ``last`` (the last epoch's), ``best`` (the epoch
    with the highest accuracy on the evaluation set given to :func:`~compressor.compress`,
    measured after every epoch; ties to the earlier: checkpoint selection on a validation
    split, so pass one that is not the test set) or ``average`` (the mean of the last
    ``average_epochs`` epochs' weights, then snapped to the levels: stochastic weight
    averaging, Izmailov et al. 2018, as SWALP, Yang et al. 2019, uses it for low-precision
    training; it selects nothing). Only the retraining stage chooses (its every epoch is
    feasible, and the mean of masked weights keeps the mask)."""
    average_epochs: int = 4
    """``keep: average``: how many of the last epochs are averaged (at most ``epochs``)."""
    learn_scale: bool = False
    """Retraining only: each quantized layer's scale (weight units per level) trains with
    the weights, LSQ's gradient on its logarithm (Esser et al. 2020), from the hard
    projection's; False keeps that scale. A recipe's fixed ``scale`` and ``pow2: true``
    scales stay as they are (``pow2: fold`` folds the learned one)."""


_RETRAIN = TrainSpec(epochs=2, lr=2e-4)
#: Default of ``average_epochs`` (left out of fingerprints, so older checkpoints still match).
AVERAGE_EPOCHS = TrainSpec().average_epochs
#: Values of ``retrain.keep``.
KEEP = ("last", "best", "average")
PENALTIES = ("gradient", "proximal")


@dataclass(frozen=True, slots=True)
class AdmmSpec:
    """The ADMM stage: ``rounds`` × (W-step of ``epochs_per_round`` epochs, Z- and U-update)."""

    rounds: int = 4
    """Number of Z/U updates."""
    epochs_per_round: int = 1
    """Epochs of penalised training (W-step) before each Z/U update."""
    lr: float = 2e-3
    """Adam learning rate of the W-step."""
    rho: float = 0.1
    """Penalty weight of round 0 (``ρ/2 ‖W − Z + U‖²``), per squared weight unit."""
    rho_growth: float = 2.0
    """Factor ρ grows by after each round (>= 1)."""
    rho_max: float = 10.0
    """Cap on ρ."""
    ramp_rounds: int = 0
    """Progressive ADMM in one run (after Ye et al. 2019, who restart ADMM per stage): over
    the first ``ramp_rounds`` rounds the Z-step projects onto a looser sparsity target that
    tightens geometrically towards the recipe's (:meth:`Constraint.relaxed`); from round
    ``ramp_rounds`` on it is the recipe's. 0: the recipe's target from round 0. Level sets
    are never relaxed. (Measured once on the compression benchmark's hardest point: it did
    not help there; see benchmarks/compression.py.)"""
    penalty: str = "gradient"
    """How the W-step applies ``ρ/2 ‖W − Z + U‖²``. ``gradient``: its gradient is added to the
    loss's before the Adam step (Zhang et al.'s form). Adam divides every coordinate's step
    by its gradient's running RMS, so wherever the penalty's gradient outweighs the loss's
    the weight moves at ~lr towards ``Z`` whatever ρ is. ``proximal``: the Adam step sees the
    loss alone and is followed by the penalty's exact proximal step at the same lr η,
    ``W ← (W + ηρ (Z − U)) / (1 + ηρ)``, so ρ sets the pull (a fraction ηρ/(1+ηρ) of the gap
    per step) as decoupled weight decay does in AdamW (Loshchilov & Hutter 2019). Its ρ
    scale differs: the equilibrium offset from ``Z`` is about (Adam's normalized step)/ρ, so
    a tight end needs ρ in the hundreds."""

    def rho_at(self, r: int) -> float:
        """ρ of round ``r`` (from 0)."""
        if self.rho_growth > 1 and r * math.log(self.rho_growth) > math.log(
                self.rho_max / self.rho):
            return self.rho_max                      # capped (growth**r may overflow)
        return min(self.rho_max, self.rho * self.rho_growth**r)

    def tightness(self, r: int) -> float:
        """How far round ``r``'s sparsity target is along the ramp: 1 = the recipe's."""
        return 1.0 if r >= self.ramp_rounds else (r + 1) / (self.ramp_rounds + 1)


@dataclass(frozen=True, slots=True)
class DistillSpec:
    """Knowledge distillation (Hinton et al. 2015) from the dense model compression starts
    from (after ``pretrain``): the ADMM W-step and retraining minimise
    ``(1 - alpha) · CE(labels) + alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``.
    The teacher is fixed and the data unaugmented, so its logits are computed once per
    training image (one forward pass) and kept in the checkpoint."""

    alpha: float = 0.0
    """Weight of the distillation term, in [0, 1]; 0 turns distillation off."""
    temperature: float = 4.0
    """Softmax temperature ``T`` of both distributions (> 0)."""


@dataclass(frozen=True, slots=True)
class LayerRule:
    """Layers whose names match any of ``patterns`` (fnmatch) get ``constraint``."""

    patterns: tuple[str, ...]
    constraint: Constraint
    inherited: tuple[str, ...] = field(default=(), compare=False)
    """Quant fields (``bits``, ``mapping``) the rule left to the geometry's defaults: a
    recipe moved onto another machine's crossbars takes that machine's."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """A validated recipe (see the module doc for the YAML form)."""

    name: str
    layers: tuple[LayerRule, ...]
    geometry: CrossbarGeometry = field(default_factory=CrossbarGeometry)
    admm: AdmmSpec = field(default_factory=AdmmSpec)
    retrain: TrainSpec = field(default_factory=lambda: _RETRAIN)
    pretrain: TrainSpec = field(default_factory=TrainSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    batch_size: int = 64
    seed: int = 0
    description: str = ""

    def with_epochs(self, n: int) -> Recipe:
        """Every training stage that runs at all runs ``n`` epochs (ADMM: per round; ``keep:
        average`` averages at most all ``n``)."""
        _check_int(n, "epochs", 1)
        average = (min(n, self.retrain.average_epochs) if self.retrain.keep == "average"
                   else self.retrain.average_epochs)
        return replace(self, admm=replace(self.admm, epochs_per_round=n),
                       retrain=replace(self.retrain, epochs=n if self.retrain.epochs else 0,
                                       average_epochs=average),
                       pretrain=replace(self.pretrain,
                                        epochs=n if self.pretrain.epochs else 0))

    def resolve(self, model) -> dict[str, Constraint]:
        """``{module name: constraint}`` for the layers of ``model`` the rules constrain.

        Raises :class:`CompressionError` for a pattern that matches no compressible layer.
        """
        modules = dict(model.named_modules())
        layers = [n for n, m in modules.items() if type(m).__name__ in COMPRESSIBLE]
        out: dict[str, Constraint] = {}
        taken: dict[str, int] = {}       # layer -> the rule that took it (first match wins)
        for i, rule in enumerate(self.layers):
            for pat in rule.patterns:
                hits = [n for n in layers if fnmatch.fnmatchcase(n, pat)]
                if not hits:
                    what = (f"is a {type(modules[pat]).__name__}, not one of "
                            f"{'/'.join(COMPRESSIBLE)}" if pat in modules else
                            "matches no layer")
                    raise CompressionError(
                        f"recipe.layers[{i}].match={pat!r}: {what}; compressible layers: "
                        f"{', '.join(layers) or 'none'}")
                if all(taken.get(n, i) != i for n in hits):   # a rule that can never apply
                    raise CompressionError(
                        f"recipe.layers[{i}].match={pat!r}: every layer it matches "
                        f"({', '.join(hits)}) is taken by recipe.layers[{taken[hits[0]]}] "
                        f"(the first matching rule wins); put the narrower rule first")
                for n in hits:
                    if n in taken:
                        continue
                    taken[n] = i
                    c = rule.constraint
                    if c.structure is None and c.quant is None:
                        continue       # a rule that leaves the layer as it is
                    if c.structure is not None and getattr(modules[n], "groups", 1) > 1:
                        # the compiler lays a grouped conv out block-diagonally over
                        # all input channels; geometry reads the (C_in/groups) weight
                        raise CompressionError(
                            f"recipe.layers[{i}].match={pat!r}: {n!r} is a grouped "
                            f"convolution (groups={modules[n].groups}); structured "
                            f"constraints ({c.structure}) are stated on groups=1 layers' "
                            f"crossbars: give it a quantization-only rule or leave it out")
                    if modules[n].weight.numel() == 0:
                        raise CompressionError(
                            f"recipe.layers[{i}].match={pat!r}: {n!r} has no weights "
                            f"(shape {tuple(modules[n].weight.shape)}): nothing to prune "
                            f"or quantize; leave it out")
                    out[n] = c
        return out

    def to_dict(self) -> dict:
        """Plain-data form (JSON-ready); :func:`parse_recipe` of it gives an equal recipe."""
        d = asdict(self)
        d["geometry"] = self.geometry.to_dict()
        d["layers"] = [{"match": list(r.patterns), **r.constraint.describe()}
                       for r in self.layers]
        if not d["admm"]["ramp_rounds"]:
            # added after checkpoints existed: at its default it is left out, so those
            # checkpoints' fingerprints still match
            del d["admm"]["ramp_rounds"]
        if d["admm"]["penalty"] == "gradient":  # likewise
            del d["admm"]["penalty"]
        if not d["distill"]["alpha"]:  # likewise: off leaves the fingerprint as it was
            del d["distill"]
        for stage in ("pretrain", "retrain"):  # likewise
            if d[stage]["keep"] == "last":
                del d[stage]["keep"]
            if not d[stage]["learn_scale"]:
                del d[stage]["learn_scale"]
            if d[stage]["average_epochs"] == AVERAGE_EPOCHS:
                del d[stage]["average_epochs"]
        return d

    def fingerprint(self) -> str:
        """Canonical JSON of the whole recipe, its name and description included (checkpoints
        store it; :func:`same_result` compares two)."""
        return json.dumps(self.to_dict(), sort_keys=True)


#: Recipe fields that label a run and shape nothing in it.
_LABELS = ("name", "description")


def _shaping(recipe):
    """A decoded fingerprint without its labels: what shapes the result."""
    return ({k: v for k, v in recipe.items() if k not in _LABELS} if isinstance(recipe, dict)
            else recipe)


def same_result(fingerprint_a: str | None, fingerprint_b: str | None) -> bool:
    """Whether two :meth:`Recipe.fingerprint` strings shape the same result: equal but for
    the labels (a recipe renamed, copied to another file or re-described still resumes)."""
    def shaping(fp):
        try:
            return _shaping(json.loads(fp))
        except (TypeError, ValueError):
            return fp
    return fingerprint_a is not None and shaping(fingerprint_a) == shaping(fingerprint_b)


_UNSET = object()   # a recipe key one fingerprint has and the other does not


def recipe_difference(saved: str | None, current: str) -> str:
    """The first setting in which two fingerprints that are not :func:`same_result` differ,
    e.g. ``admm.epochs_per_round: checkpoint 1, this run 2``."""
    try:
        a, b = _shaping(json.loads(saved)), _shaping(json.loads(current))
    except (TypeError, ValueError):
        return "its recipe is not recorded in a form to compare"

    def first(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            k = next(k for k in sorted(set(a) | set(b), key=str)
                     if a.get(k, _UNSET) != b.get(k, _UNSET))
            return first(a.get(k, _UNSET), b.get(k, _UNSET), f"{key}.{k}" if key else k)
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            return next(first(x, y, f"{key}[{i}]") for i, (x, y) in enumerate(zip(a, b))
                        if x != y)
        return key, a, b

    def show(v):
        return "not set (its default)" if v is _UNSET else json.dumps(v)
    key, a, b = first(a, b, "")
    return f"{key or 'the recipe'}: checkpoint {show(a)}, this run {show(b)}"


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read and validate a recipe file, or a shipped recipe by name (``lenet5_block``)."""
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise CompressionError(f"recipe: a file path or shipped recipe name, not "
                               f"{type(path_or_name).__name__} {path_or_name!r}")
    p = Path(path_or_name)
    if not p.is_file() and (RECIPE_DIR / f"{p}.yaml").is_file():
        p = RECIPE_DIR / f"{p}.yaml"
    if not p.is_file():
        raise CompressionError(f"recipe {str(path_or_name)!r}: no such file or shipped recipe; "
                               f"shipped: {', '.join(shipped_recipes())}")
    data = read_yaml(p, CompressionError, label="recipe ")   # as presets: no key twice
    if not isinstance(data, dict):
        raise CompressionError(f"recipe {p}: {'empty' if data is None else 'not a mapping'}; "
                               f"a recipe maps fields (name, geometry, layers, ...) to values")
    return parse_recipe(data, default_name=p.stem)


def shipped_recipes() -> list[str]:
    """Names of the recipes in :data:`RECIPE_DIR`."""
    return sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))


def parse_recipe(data, default_name: str = "recipe") -> Recipe:
    """Validate a recipe given as plain data (the parsed YAML)."""
    top = _mapping(data, "recipe", {"name", "description", "geometry", "seed", "batch_size",
                                    "pretrain", "admm", "retrain", "distill",
                                    "layers"})
    geometry = CrossbarGeometry.from_dict(_mapping(top.get("geometry", {}), "recipe.geometry"),
                                          where="recipe.geometry")
    admm = AdmmSpec(**_mapping(top.get("admm", {}), "recipe.admm", set(AdmmSpec.__slots__)))
    for k in ("rounds", "epochs_per_round"):
        _check_int(getattr(admm, k), f"recipe.admm.{k}", 1)
    for k in ("lr", "rho", "rho_max"):
        _check_positive(getattr(admm, k), f"recipe.admm.{k}")
    _check_positive(admm.rho_growth, "recipe.admm.rho_growth", low=1.0, inclusive=True)
    if admm.rho > admm.rho_max:
        raise CompressionError(f"recipe.admm.rho={admm.rho!r}: must be <= "
                               f"recipe.admm.rho_max={admm.rho_max!r} (rho is capped there "
                               f"from round 0); raise rho_max too")
    _check_int(admm.ramp_rounds, "recipe.admm.ramp_rounds", 0)
    if admm.penalty not in PENALTIES:
        raise CompressionError(f"recipe.admm.penalty={admm.penalty!r}: must be "
                               f"{' or '.join(PENALTIES)}")
    if admm.ramp_rounds >= admm.rounds:
        raise CompressionError(f"recipe.admm.ramp_rounds={admm.ramp_rounds}: must be below "
                               f"recipe.admm.rounds={admm.rounds} (the last rounds project "
                               f"onto the recipe's target)")
    stages = {}
    for stage, default in (("pretrain", TrainSpec()), ("retrain", _RETRAIN)):
        spec = replace(default, **_mapping(top.get(stage, {}), f"recipe.{stage}",
                                           set(TrainSpec.__slots__)))
        _check_int(spec.epochs, f"recipe.{stage}.epochs", 0)
        _check_positive(spec.lr, f"recipe.{stage}.lr")
        _check_positive(spec.lr_decay, f"recipe.{stage}.lr_decay")
        if spec.lr_decay > 1:
            raise CompressionError(f"recipe.{stage}.lr_decay={spec.lr_decay!r}: must be in "
                                   f"(0, 1] (a factor per epoch)")
        allowed = KEEP if stage == "retrain" else ("last",)
        if spec.keep not in allowed:
            raise CompressionError(f"recipe.{stage}.keep={spec.keep!r}: must be "
                                   + (f"{', '.join(allowed[:-1])} or {allowed[-1]}"
                                      if len(allowed) > 1 else allowed[0])
                                   + ("" if stage == "retrain" else
                                      " (only the retrain stage selects an epoch)"))
        _check_int(spec.average_epochs, f"recipe.{stage}.average_epochs", 1)
        if spec.keep != "average" and spec.average_epochs != AVERAGE_EPOCHS:
            raise CompressionError(f"recipe.{stage}.average_epochs={spec.average_epochs}: "
                                   f"only keep: average averages epochs (this stage keeps "
                                   f"{spec.keep})")
        if spec.keep == "average" and spec.average_epochs > spec.epochs:
            raise CompressionError(f"recipe.{stage}.average_epochs={spec.average_epochs}: "
                                   f"must be at most recipe.{stage}.epochs={spec.epochs} (the "
                                   f"last epochs are averaged)")
        if not isinstance(spec.learn_scale, bool) or (spec.learn_scale and stage != "retrain"):
            raise CompressionError(f"recipe.{stage}.learn_scale={spec.learn_scale!r}: must be "
                                   + ("true or false" if stage == "retrain" else
                                      "false (only retraining has level sets to scale)"))
        stages[stage] = spec
    distill = DistillSpec(**_mapping(top.get("distill", {}), "recipe.distill",
                                     set(DistillSpec.__slots__)))
    _check_positive(distill.temperature, "recipe.distill.temperature")
    a = distill.alpha
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1:
        raise CompressionError(f"recipe.distill.alpha={a!r}: must be a number in [0, 1] "
                               f"(the distillation term's weight)")
    batch_size, seed = top.get("batch_size", 64), top.get("seed", 0)
    # a batch of one is dropped as a ragged last batch (BatchNorm cannot train on it)
    _check_int(batch_size, "recipe.batch_size", 2)
    _check_int(seed, "recipe.seed", 0)
    raw_layers = top.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise CompressionError(f"recipe.layers={raw_layers!r}: must be a non-empty list of "
                               f"rules (match: + sparsity: and/or quant:)")
    rules = tuple(_rule(r, f"recipe.layers[{i}]", geometry) for i, r in enumerate(raw_layers))
    name, description = top.get("name", default_name), top.get("description", "")
    for key, v in (("name", name), ("description", description)):
        # text (a number reads as its digits); it goes into the fingerprint and the metadata
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise CompressionError(f"recipe.{key}={v!r}: must be text")
    return Recipe(name=str(name), layers=rules, geometry=geometry, admm=admm,
                  retrain=stages["retrain"], pretrain=stages["pretrain"], distill=distill,
                  batch_size=batch_size, seed=seed, description=str(description))


def _rule(raw, where: str, geom: CrossbarGeometry) -> LayerRule:
    r = _mapping(raw, where, {"match", "sparsity", "quant"})
    match = r.get("match")
    patterns = (match,) if isinstance(match, str) else tuple(match) if isinstance(
        match, list) else ()
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise CompressionError(f"{where}.match={match!r}: must be a module name or glob, "
                               f"or a list of them")
    structure = amount = quant = None
    if r.get("sparsity") is not None:
        sp = _mapping(r["sparsity"], f"{where}.sparsity", {"structure", "keep", "n"})
        structure = sp.get("structure")
        if structure not in ALL_STRUCTURES:
            raise CompressionError(f"{where}.sparsity.structure={structure!r}: must be one "
                                   f"of {', '.join(ALL_STRUCTURES)}")
        key = "n" if structure in PER_SEGMENT else "keep"
        other = "keep" if key == "n" else "n"
        if other in sp:
            raise CompressionError(f"{where}.sparsity.{other}: not used by structure "
                                   f"{structure!r}; give {key}: instead")
        if key not in sp:
            raise CompressionError(f"{where}.sparsity.{key}: missing (structure {structure!r})")
        amount = sp[key]
    if r.get("quant") is not None:
        q = _mapping(r["quant"], f"{where}.quant",
                     {"bits", "mapping", "pow2", "scale", "per_channel", "exact_scale"})
        quant = QuantSpec(bits=q.get("bits", geom.weight_bits),
                          mapping=q.get("mapping", geom.mapping),
                          pow2=q.get("pow2", False), scale=q.get("scale"),
                          per_channel=q.get("per_channel", False),
                          exact_scale=q.get("exact_scale", False))
    c = Constraint(structure=structure, amount=amount, quant=quant)
    c.check(geom, where)
    inherited = tuple(k for k in ("bits", "mapping") if quant is not None and k not in q)
    return LayerRule(patterns=patterns, constraint=c, inherited=inherited)


def _mapping(v, where: str, allowed: set | None = None) -> dict:
    if not isinstance(v, dict):
        raise CompressionError(f"{where}={v!r}: must be a mapping")
    if allowed is not None:
        for k in v:
            if k not in allowed:
                raise CompressionError(
                    f"{where}.{k}: unknown field; allowed: {', '.join(sorted(allowed))}")
    return v


def _check_int(v, where: str, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise CompressionError(f"{where}={v!r}: must be an integer >= {low}")


def _check_positive(v, where: str, low: float = 0.0, inclusive: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v >= low if inclusive else v > low)
    if not ok:
        hint = ""
        if isinstance(v, str) and _is_number(v):   # a quoted number: say why
            hint = " (a number, not text: drop the quotes)"
        raise CompressionError(f"{where}={v!r}: must be a finite number "
                               f"{'>=' if inclusive else '>'} {low:g}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
