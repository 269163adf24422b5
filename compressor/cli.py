"""``xbarsim compress``: the compressor's command-line verb.

    xbarsim compress lenet5_fmnist --recipe lenet5_block --data fashion-mnist -o lenet5_c.onnx
    xbarsim compress mlp --recipe mlp_aligned_pow2 --data digits -o mlp.onnx --epochs 1 --baseline
    xbarsim compress runs/lenet5/lenet5.pt --recipe my.yaml --data ./my_idx_folder -o out.onnx
    xbarsim compress mlp --recipe mlp_aligned_pow2 --data digits -o m.onnx --preset isaac

MODEL is a zoo name (fresh weights; the recipe's ``pretrain`` stage, or ``--pretrain N``,
trains them first), a shipped pretrained name (``lenet5_fmnist``), or a state dict ``.pt``
(its architecture from ``--arch`` or from the ``NAME.json`` that ``xbarsim train`` writes next
to it). ``--preset`` puts the recipe on that machine's crossbars (as ``xbarsim compile``
takes them), so the freed crossbars are the ones that machine has; ``--set`` changes the
machine's keys, or alone the recipe's crossbars (puma with its size, levels and mapping)
where it says and nothing else. The run is checkpointed
next to the output (``OUT.ckpt``); the same command again resumes it. After compressing,
the dense and the compressed models are compiled and simulated and printed side by side
(``--no-hw`` skips it; :mod:`compressor.hardware`): with ``--preset`` both on that
machine; else (``--set``'s keys on top of each) the dense model on puma as shipped (its
16-bit weights and mapping) and the compressed ones on puma with the recipe's levels
(weight bits, cells, mapping), both on the recipe's crossbar size, as
``benchmarks/compression.py`` compares them.
``simulator/cli.py`` calls :func:`register`; importing this module does not import torch.
User errors print one line ``error: ...`` on stderr and return 2.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from simulator.cli import TORCH_MAX_OPSET, int_in
from simulator.errors import first_line

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def register(subparsers) -> None:
    """Add the ``compress`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "compress", help="ADMM-prune and quantize a model for crossbars, export QDQ ONNX",
        description="Compress a model by a recipe (ADMM, masked retraining, snap to levels) "
                    "and write a QDQ ONNX model with crossbar metadata for xbarsim compile.")
    p.add_argument("model", help="zoo name, shipped pretrained name (lenet5_fmnist), or a "
                                 "state dict .pt")
    p.add_argument("--recipe", required=True,
                   help="recipe YAML file or shipped recipe name (lenet5_block, lenet5_tinyadc, "
                        "vgg_block_quant, mlp_aligned_pow2, resnet18_columns)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, digits, a folder of IDX or train/test .npz files, or "
                        "an .npz file (default: fashion-mnist)")
    p.add_argument("-o", "--output", required=True, help="QDQ ONNX file to write")
    p.add_argument("--epochs", type=int, help="run every training stage for N epochs "
                                              "(ADMM: per round) instead of the recipe's")
    p.add_argument("--pretrain", type=int, metavar="N", help="plain training epochs first "
                                                             "(default: the recipe's)")
    p.add_argument("--limit", type=int, help="use at most N training and N test examples")
    p.add_argument("--arch", help="zoo architecture of a .pt state dict")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="zoo builder option (repeatable), e.g. width=0.25")
    p.add_argument("--preset", help="take the crossbar geometry from this machine preset "
                                     "(puma, isaac, small) or YAML file instead of the recipe's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the machine: of --preset, or else of puma on the "
                        "recipe's crossbars (its size, levels and mapping), e.g. xbar.rows=64")
    p.add_argument("--baseline", action="store_true",
                   help="also run magnitude pruning with the same structure and budget, "
                        "written to OUT-magnitude.onnx")
    p.add_argument("--opset", type=int_in(13, TORCH_MAX_OPSET), default=19,
                   help=f"ONNX opset, 13..{TORCH_MAX_OPSET} (per-channel DequantizeLinear; "
                        f"default: 19; 21 stores 9..16-bit levels as int16); checked before "
                        f"training")
    p.add_argument("--json", help="write a JSON summary (accuracy, per-layer occupancy)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-hw", action="store_true",
                   help="skip the hardware loop (compile + simulate dense and compressed)")
    p.add_argument("--hw-images", type=int, default=200, metavar="N",
                   help="test images the hardware loop simulates (default: 200)")
    p.add_argument("--replicate", type=int, default=1, metavar="N",
                   help="the hardware loop compiles dense and compressed alike with up to N "
                        "copies of each convolution's crossbars (default: 1, none)")
    p.add_argument("--vfu-cores", choices=("own", "shared"), default="own",
                   help="the hardware loop gives pooling and other VFU layers a core of their "
                        "own (faster) or packs them onto the MVM layers' cores (less area) "
                        "(default: own)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)


def cmd_compress(args: argparse.Namespace) -> int:
    """Handler of ``xbarsim compress``; returns the exit code."""
    from models.errors import ModelError
    from simulator.errors import ConfigError

    from .errors import CompressionError
    checkpoints = _checkpoint_times(args)     # to name only what this run saves
    try:
        return _compress(args)
    except (CompressionError, ModelError, ConfigError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:   # the reader of stdout left: xbarsim's main says nothing
        raise
    except OSError as e:  # an unwritable output, a full disk
        print(f"error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        saved = [c for c, t in _checkpoint_times(args).items()
                 if t is not None and t != checkpoints.get(c)]
        again = ("the command again without --no-resume" if args.no_resume
                 else "the same command again")
        # a checkpoint from before this run is not named as its progress (it may be another
        # recipe's), but is said to be untouched where it would be resumed from
        earlier = [c for c, t in checkpoints.items() if t is not None and c not in saved]
        print(f"interrupted; progress is checkpointed in {', '.join(map(str, saved))}: run "
              f"{again} to resume" if saved else
              "interrupted before anything was checkpointed" + (
                  f"; {', '.join(map(str, earlier))}, there before this run, is untouched"
                  if earlier and not args.no_resume else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


def _checkpoint_times(args) -> dict:
    """``{checkpoint path: its modification time, None where absent}`` of the run's
    checkpoints."""
    try:
        paths = [_ckpt(p) for _, p in _outputs(args)]
    except ValueError:  # no usable output path: nothing is checkpointed
        return {}
    return {c: c.stat().st_mtime_ns if c.is_file() else None for c in paths}


def _compress(args) -> int:
    from .errors import CompressionError
    from .recipes import load_recipe
    for flag in ("epochs", "pretrain", "limit", "hw_images", "replicate"):
        v = getattr(args, flag)
        if v is not None and (v < (0 if flag == "pretrain" else 1)):
            raise CompressionError(f"--{flag.replace('_', '-')}={v}: must be >= "
                                   f"{0 if flag == 'pretrain' else 1}")
    recipe = load_recipe(args.recipe)  # validated before loading data or training
    if args.epochs is not None:
        recipe = recipe.with_epochs(args.epochs)
    if args.preset or args.overrides:
        recipe = _with_machine(recipe, *_hw_machine(args, recipe), _machine_flags(args))
    if args.pretrain is not None:
        from dataclasses import replace
        recipe = replace(recipe, pretrain=replace(recipe.pretrain, epochs=args.pretrain))
    _check_paths(args)                 # before any data is loaded or anything trained

    import numpy as np

    from models.data import load_splits
    try:
        from models.train import check_fits, limit_torch_threads, predict_logits

        from .export import export_qdq
        from .pipeline import compress
    except ImportError as e:   # an install without the [torch] extra
        from models.errors import NO_TORCH
        raise CompressionError(f"{NO_TORCH} ({e})") from e
    limit_torch_threads()
    train, test = load_splits(args.data, args.limit)
    model = _load_model(args, train, test)
    # the data must fit the model before any training starts
    check_fits(model, train[0], np.concatenate([train[1], test[1]]), f"model {args.model}")
    # retrain.keep=best picks an epoch by accuracy: on training images held out for it,
    # never on the test split the results are reported on
    train, val = _hold_out(train) if recipe.retrain.keep == "best" else (train, test)
    if val is not test:
        print(f"retrain.keep=best: epochs are compared on {len(val[0])} training images held "
              f"out of training (10 %); accuracies below are on them, 'test' on the test split")
    runs = _outputs(args)
    start = copy.deepcopy(model.state_dict())
    summary, correct, results = {}, {}, {}
    dense_model = None
    for method, path in runs:
        model.load_state_dict(start)
        res = compress(model, recipe, train, val, method=method, checkpoint=_ckpt(path),
                       resume=not args.no_resume, progress=not args.quiet)
        if dense_model is None:  # the weights compression started from (after pretrain)
            dense_model = _dense_after_pretrain(res, start)
            from models.data import num_classes   # a --limit subset may lack some
            _warn_if_untrained(res.accuracy["dense"], num_classes(args.data, train[1], test[1]),
                               args.model)
        export_qdq(res, path, opset=args.opset, verify=test[0][:64])
        summary[method] = _report(res, path, None if val is test else test)
        results[method] = res
        correct[method] = predict_logits(res.model, test[0]).argmax(1).numpy() == test[1]
    if len(summary) == 2:
        from models.train import accuracy_difference_interval
        a, m = (float(correct[k].mean()) for k in ("admm", "magnitude"))
        lo, hi = accuracy_difference_interval([(correct["admm"], correct["magnitude"])])
        summary["admm_vs_magnitude"] = {"difference_pp": 100 * (a - m), "ci95_pp": [lo, hi],
                                        "images": int(len(test[1]))}
        print(f"ADMM vs magnitude pruning, same structure and crossbar budget: "
              f"{a:.4f} vs {m:.4f} ({(a - m) * 100:+.2f} points; 95 % interval over the "
              f"{len(test[1])} test images {lo:+.2f} to {hi:+.2f})")
        structures = {r.constraint.structure for r in results["admm"].layers.values()}
        if structures <= {"blocks", None} and "blocks" in structures:
            # where ADMM chose its own blocks, or only other weights in magnitude's
            shared = results["admm"].shared_blocks(results["magnitude"])
            both, mine, theirs = (sum(v[i] for v in shared.values()) for i in (0, 1, 2))
            summary["admm_vs_magnitude"]["blocks_shared"] = {n: list(v[:2])
                                                             for n, v in shared.items()}
            print(f"crossbar blocks ADMM keeps that magnitude pruning keeps too: {both} of "
                  f"{mine}" + (" (the same sub-network: only its weights differ)"
                               if both == mine == theirs else ""))
    if not args.no_hw:
        from compiler.errors import CompilerError
        from simulator.errors import XbarsimError
        try:
            summary["hardware"] = _hardware(args, recipe, dense_model, runs, train, test)
        except (CompilerError, XbarsimError) as e:  # the compression itself succeeded
            msg = " ".join(str(e).split())
            print(f"warning: hardware loop skipped: {msg}", file=sys.stderr)
            summary["hardware"] = {"error": msg}
    if args.json:
        from simulator.fileio import atomic_write
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary  -> {args.json}")
    return EXIT_OK


def _warn_if_untrained(accuracy: float, classes: int, model: str) -> None:
    """Say so when the model compression starts from scores about chance for ``classes``
    classes: nothing it reports then measures compression (a zoo name has fresh weights)."""
    if classes > 1 and accuracy < 1.5 / classes:
        print(f"warning: the dense {model!r} scores {accuracy:.1%} before compression, about "
              f"chance for {classes} classes: untrained, or trained on other data. Train it "
              f"on this data first (--pretrain N, or a recipe's pretrain epochs) or start "
              f"from weights trained on it (a .pt, or the shipped lenet5_fmnist for "
              f"fashion-mnist)", file=sys.stderr)


def _dense_after_pretrain(res, start):
    """A copy of the dense model compression started from (after the recipe's pretrain
    stage, which ran inside ``compress``)."""
    dense = copy.deepcopy(res.model)
    dense.load_state_dict(res.dense_state if res.dense_state is not None else start)
    return dense.eval()


def _hardware(args, recipe, dense_model, runs, train, test) -> dict:
    """Compile + simulate the dense model and each compressed one (:func:`_hw_machine`);
    print them side by side and return the figures."""
    import tempfile

    from models.onnx_export import export

    from .hardware import compare, evaluate_hardware
    dense_cfg, cfg = _hw_machine(args, recipe, dense=True), _hw_machine(args, recipe)
    x, y = test[0][:args.hw_images], test[1][:args.hw_images]
    cal = train[0][:64]
    n = args.replicate
    print(f"hardware loop: dense on {' '.join([dense_cfg[0], *dense_cfg[1]])}, compressed on "
          f"{' '.join([cfg[0], *cfg[1]])} ({len(x)} test images simulated"
          + (f", up to {n} copies of each convolution)" if n > 1 else ")"))
    with tempfile.TemporaryDirectory(prefix="xbarsim-dense-") as tmp:
        dense_path = export(dense_model, Path(tmp) / "dense.onnx", args.opset,
                            dynamic_batch=True)
        dense = _side("dense model", evaluate_hardware, dense_path, dense_cfg, x, y,
                      calibration=cal, geometry=recipe.geometry, replicate=n,
                      vfu_cores=args.vfu_cores)
    variants = {method: _side(f"compressed model ({method})", evaluate_hardware, path, cfg, x,
                              y, calibration=cal, replicate=n, vfu_cores=args.vfu_cores)
                for method, path in runs}
    compare(dense, variants)
    return {"machine": cfg, "dense_machine": dense_cfg, "dense": dense, **variants}


def _side(which: str, evaluate, *a, **k):
    """``evaluate(*a, **k)``, its compiler or simulator error saying which side failed."""
    from simulator.errors import XbarsimError   # CompilerError is one too
    try:
        return evaluate(*a, **k)
    except XbarsimError as e:
        raise XbarsimError(f"{which}: {e}") from e


def _hw_machine(args, recipe, dense: bool = False):
    """``(preset, overrides)`` the hardware loop uses: ``--preset`` (and its ``--set``s) when
    given, for both sides; else puma on the recipe's crossbar size, with the recipe's levels
    (weight bits, cells, mapping) for the compressed models and as shipped for the dense
    one (a dense model on a few-bit machine would be quantized there, hiding what the
    levels save), ``--set``'s keys on top of each."""
    if args.preset:
        return (args.preset, list(args.overrides))
    g = recipe.geometry
    size = [f"xbar.rows={g.rows}", f"xbar.cols={g.cols}"] + (
        [] if g.active_rows is None else [f"xbar.active_rows={g.active_rows}"])
    if dense:   # as shipped, whatever --set changes besides (an ADC key moved its weights)
        return ("puma", size + list(args.overrides))
    levels = size + [f"xbar.cell_bits={g.cell_bits}", f"xbar.mapping={g.mapping}",
                     f"weight_bits={g.weight_bits}"]
    if args.overrides:
        # --set alone changes the recipe's crossbars where it says, not into puma's (a key
        # such as adc.adaptive=true left the recipe pruning 128x128 16-bit offset crossbars);
        # training reads this machine too, so the conductance range is the recipe's as well
        levels += [f"xbar.g_min_us={g.g_min_us}", f"xbar.g_max_us={g.g_max_us}"]
    return ("puma", levels + list(args.overrides))


def _machine_flags(args) -> str:
    """The machine flags as given, for errors."""
    return " ".join(([f"--preset {args.preset}"] if args.preset else [])
                    + [f"--set {o}" for o in args.overrides])


def _with_machine(recipe, preset: str, overrides: list[str], given: str):
    """``recipe`` on the crossbars of a machine config, re-validated (e.g. TinyADC's ``n``
    against the machine's rows); ``given``: the flags that chose the machine."""
    from simulator.config import load_config

    from .errors import CompressionError
    from .geometry import CrossbarGeometry
    from .recipes import parse_recipe
    data = recipe.to_dict()
    data["geometry"] = CrossbarGeometry.from_config(load_config(preset, overrides)).to_dict()
    for rule, layer in zip(recipe.layers, data["layers"]):
        for key in rule.inherited:          # the file's geometry's default: the machine's now
            del layer["quant"][key]
    try:
        return parse_recipe(data)
    except CompressionError as e:   # the machine's crossbars, not the recipe file, changed
        raise CompressionError(f"{given}: on these crossbars {e}") from e


def _ckpt(output: str | Path) -> Path:
    return Path(output).with_suffix(".ckpt")


def _outputs(args) -> list[tuple[str, Path]]:
    """``(method, ONNX path)`` of each run the command makes."""
    out = Path(args.output)
    return [("admm", out)] + ([("magnitude", out.with_name(f"{out.stem}-magnitude.onnx"))]
                              if args.baseline else [])


def _check_paths(args) -> None:
    """Refuse, before any training, output paths that would fail or overwrite each other
    only at the end: no file name, a folder, the checkpoint's own name, a ``--json`` that is
    one of the run's files; and make the folders they go in (which fails now if it can)."""
    from .errors import CompressionError
    from simulator.fileio import check_writable_folder, names_a_folder
    out = Path(args.output)
    if not out.name or out.name in (".", "..") or out.is_dir() or names_a_folder(args.output):
        raise CompressionError(f"-o {args.output!r}: must name a file to write, e.g. "
                               f"out/model.onnx")
    if out.suffix == ".ckpt":
        raise CompressionError(f"-o {args.output}: .ckpt is the run's checkpoint "
                               f"({_ckpt(out).name}); name the ONNX file .onnx")
    runs = _outputs(args)
    for _, p in runs:
        if _ckpt(p).is_dir():
            raise CompressionError(f"{_ckpt(p)}: a folder is there, where the run keeps its "
                                   f"checkpoint; choose another -o")
    files = {p.resolve(): f"{m} output" for m, p in runs}
    files.update({_ckpt(p).resolve(): f"{m} checkpoint" for m, p in runs})
    model = Path(args.model)
    inputs = ({model.resolve(): "input state dict",
               model.with_suffix(".json").resolve(): "input model's record",
               # xbarsim train's checkpoint beside its .pt: resuming it is worth keeping
               model.with_suffix(".ckpt").resolve(): "input model's training checkpoint"}
              if model.suffix == ".pt" else {})
    from models.data import data_files
    from models import demo
    if args.model in demo.PRETRAINED and not args.arch:
        inputs.update({(demo.PRETRAINED_DIR / f"{args.model}.{k}").resolve():
                       "shipped pretrained model" for k in ("pt", "onnx", "json")})
    recipe = Path(args.recipe)
    if recipe.is_file():
        inputs[recipe.resolve()] = "recipe file"
    inputs.update({p.resolve(): "data file" for p in data_files(args.data)})
    for p in files:
        if p in inputs:
            raise CompressionError(f"{p}: is the {inputs[p]}; the output would overwrite "
                                   f"it: choose another -o")
    files.update(inputs)
    folders = [out.parent]
    if args.json:
        j = Path(args.json)
        if not j.name or j.name in (".", "..") or j.is_dir() or names_a_folder(args.json):
            raise CompressionError(f"--json {args.json!r}: must name a file to write")
        if j.resolve() in files:
            raise CompressionError(f"--json {args.json}: is also the run's "
                                   f"{files[j.resolve()]}; choose another path")
        folders.append(j.parent)
    for folder, flag in zip(folders, (f"-o {args.output}", f"--json {args.json}")):
        check_writable_folder(folder, flag, CompressionError)


def _load_model(args, train, test):
    from models import zoo
    from models.cli import _parse_options  # KEY=VALUE, as in xbarsim train --opt
    from models.demo import PRETRAINED, load_pretrained

    from .errors import CompressionError
    name = args.model
    if name in PRETRAINED and not args.arch:
        if args.opt:
            raise CompressionError(f"--opt {' '.join(args.opt)}: {name} is a shipped trained "
                                   f"model with fixed options; --opt applies to zoo names "
                                   f"and state dicts")
        return load_pretrained(name)
    path = Path(name)
    arch, options = args.arch, _parse_options(args.opt)
    from_record = False   # arch and options read from xbarsim train's record
    if path.suffix == ".pt":
        if not path.is_file():
            raise CompressionError(f"{name}: no such state dict file")
        record = path.with_suffix(".json")
        if arch is None and record.is_file():  # written by xbarsim train
            try:
                info = json.loads(record.read_text(encoding="utf-8"))
                arch, kwargs = info.get("model"), info.get("model_kwargs", {})
            except (ValueError, AttributeError) as e:  # not JSON, or not an object
                raise CompressionError(f"{record}: not the JSON record xbarsim train writes "
                                       f"beside a state dict ({e}); pass --arch") from e
            bad = ("no 'model'" if "model" not in info else
                   f"model {arch!r}" if not isinstance(arch, str) else
                   f"model_kwargs {kwargs!r}" if not isinstance(kwargs, dict) else None)
            if bad:
                raise CompressionError(f"{record}: not the JSON record xbarsim train writes "
                                       f"('model' a zoo name, 'model_kwargs' an object; it "
                                       f"has {bad}); pass --arch")
            options, from_record = {**kwargs, **options}, True
        if arch is None:
            raise CompressionError(f"{name}: a state dict needs --arch (one of "
                                   f"{', '.join(zoo.ZOO)}); no {record.name} beside it")
    elif name in PRETRAINED:   # with --arch (without it, loaded above)
        raise CompressionError(f"--arch {arch}: only for a .pt state dict; {name} is a shipped "
                               f"model (its own architecture)")
    elif name in zoo.ZOO:
        if arch is not None and arch != name:
            raise CompressionError(f"--arch {arch}: only for a .pt state dict; {name!r} is a "
                                   f"zoo name (its own architecture)")
        arch = name
    else:
        raise CompressionError(f"model {name!r}: not a zoo name ({', '.join(zoo.ZOO)}), a "
                               f"pretrained name ({', '.join(PRETRAINED)}) or a .pt file")
    from models.data import num_classes
    from models.errors import ModelError
    classes = num_classes(args.data, train[1], test[1])
    try:
        options = {**zoo.options_for_data(arch, train[0].shape[1:]), "num_classes": classes,
                   **options}
        model = zoo.build(arch, seed=0, **options)
    except ModelError as e:
        if not from_record:
            raise
        # the architecture or options came from the record beside the .pt: name it; without
        # --opt, not zoo's hint about --opt's Python literals but the builder's own error
        why = e if args.opt or e.__cause__ is None else (
            f"model {arch!r} with {options} does not build: {first_line(e.__cause__)}")
        raise CompressionError(f"{path.with_suffix('.json')}: {why}") from e
    if path.suffix == ".pt":
        from models.checkpoints import check_finite, load_dict
        state = load_dict(path, CompressionError, "state dict")
        check_finite(state, path, CompressionError, "state dict")
        mismatch = _state_mismatch(model.state_dict(), state)
        if mismatch:
            raise CompressionError(f"cannot load {name} into {arch}: {mismatch}")
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError) as e:
            raise CompressionError(f"cannot load {name} into {arch}: "
                                   f"{first_line(e)}") from e
    return model


def _a_type(value) -> str:
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _state_mismatch(expected: dict, state: dict) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``expected`` (the
    first few entries that are not tensors, else missing, unexpected and mis-shaped ones),
    or '' if nothing does."""
    import torch

    def few(names):
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    not_tensors = [f"{k} is {_a_type(v)}, not a tensor" for k, v in sorted(state.items())
                   if not isinstance(v, torch.Tensor)]
    if not_tensors:   # torch's own error names it only on its second line
        return few(not_tensors)
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shaped = [f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
              for k in sorted(set(expected) & set(state))
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = ([f"missing {few(missing)}"] if missing else []) \
        + ([f"unexpected {few(unexpected)}"] if unexpected else []) \
        + ([f"shape of {few(shaped)}"] if shaped else [])
    return "; ".join(parts) + ("; pass the --arch/--opt it was trained with" if parts else "")


def _hold_out(train, fraction: float = 0.1):
    """A seeded ``fraction`` of the training images (at least one) as a validation split."""
    import numpy as np
    x, y = train
    if len(x) < 2:
        from .errors import CompressionError
        raise CompressionError(f"retrain.keep=best: {len(x)} training image(s); need at least "
                               f"2 to hold some out for choosing the epoch")
    order = np.random.default_rng(0).permutation(len(x))
    n = max(1, int(round(fraction * len(x))))
    return (x[order[n:]], y[order[n:]]), (x[order[:n]], y[order[:n]])


def _report(res, path: Path, test=None) -> dict:
    """Print a per-layer table and return the JSON summary of one run; ``test``: the test
    split, when the run's accuracies were tracked on a held-out part of the training data."""
    import torch

    from models.train import evaluate

    from .export import scale_json
    from .geometry import occupancy, to_crossbar
    acc = res.accuracy
    test_acc = None if test is None else evaluate(res.model, *test)
    chosen = "" if res.selected_epoch is None else f" (retrain epoch {res.selected_epoch})"
    print(f"{res.method}: accuracy dense {acc['dense']:.4f} -> projected "
          f"{acc['projected']:.4f} -> final {acc['final']:.4f}{chosen}"
          + ("" if test_acc is None else f"; test {test_acc:.4f}") + f"; wrote {path}")
    if res.output_scale != 1.0:
        print(f"pow2 fold: its logits times {res.output_scale:.6g} are the float-scale "
              f"model's (class decisions unchanged; output_scale in the ONNX metadata)")
    layers = {}
    modules = dict(res.model.named_modules())
    for name, lr in res.layers.items():
        w = modules[name].weight.detach().numpy()
        occ = occupancy(to_crossbar(w, lr.view), res.recipe.geometry)
        layers[name] = {"constraint": lr.constraint.describe(), "scale": scale_json(lr.scale),
                        **occ, **({} if lr.view is None else {"crossbar_view": list(lr.view)})}
        print(f"  {name:24s} density {occ['density']:6.1%}  grid blocks "
              f"{occ['blocks_nonzero']:4d}/{occ['blocks_total']:<4d}  max nonzeros/column "
              f"segment {occ['max_nonzeros_per_segment']}"
              + ("  (rows in the chip's (h, w, c) order)" if lr.view is not None else ""))
    if res.layers:
        # the chip packs a strip's kept rows, so its crossbars (the hardware loop's count)
        # and, for the packed TinyADC structures, its bit lines differ from this grid's
        print("  (counted on the fixed crossbar grid, before the compiler packs kept rows: "
              "the hardware loop counts the chip's crossbars)")
    return {"output": str(path), "recipe": res.recipe.name, "accuracy": acc, "layers": layers,
            "output_scale": res.output_scale,
            "history": res.history, "selected_epoch": res.selected_epoch,
            # the count at the end only (a resume at another count warned): results are
            # bitwise those of another run at the same count throughout (and CPU, torch)
            "torch_threads": torch.get_num_threads(),
            **({} if test_acc is None else {"test_accuracy": test_acc})}
