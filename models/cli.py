"""``xbarsim train`` and ``xbarsim export``: the models package's command-line verbs.

The main CLI (``simulator/cli.py``) calls ``register(subparsers)``; each subcommand stores its
handler as ``func`` (``args.func(args)`` returns the exit code). Importing this module does not
import torch; the handlers do. User errors print one line ``error: ...`` to stderr and return 2.

    xbarsim train lenet5 --data fashion-mnist --epochs 12 --out runs/lenet5
    xbarsim train lenet5 --data digits --epochs 10 --batch-size 32 --lr 3e-3 --lr-decay 0.75
    xbarsim export resnet18 -o resnet18.onnx --opt in_channels=1 --opt image_size=28
"""
import argparse
import ast
import sys

from models import MODEL_NAMES
from models.errors import NO_TORCH, ModelError
from simulator.cli import TORCH_MAX_OPSET, int_in, positive_int

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def _error(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)  # always one line
    return EXIT_USER_ERROR


def _check_model(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}; choose from: {', '.join(MODEL_NAMES)}")


def _parse_options(pairs: list[str] | None) -> dict:
    """``["width=0.5", "hidden=(64,32)"]`` -> ``{"width": 0.5, "hidden": (64, 32)}``."""
    options = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ModelError(f"--opt takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``xbarsim train``: train, checkpoint, export; print the test accuracy."""
    try:
        _check_model(args.model)
        try:
            from models.train import train
        except ImportError as e:
            raise ModelError(f"{NO_TORCH} ({e})") from e
        acc = train(args.model, args.data, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, seed=args.seed, out_dir=args.out,
                    resume=not args.no_resume, limit=args.limit, progress=not args.quiet,
                    model_kwargs=_parse_options(args.opt), lr_decay=args.lr_decay)
    except ModelError as e:
        return _error(e)
    except BrokenPipeError:   # the reader of stdout left: xbarsim's main says nothing
        raise
    except OSError as e:  # an output folder that cannot be written, a full disk
        return _error(f"{e.strerror or e}: {e.filename or ''}")
    except KeyboardInterrupt:
        print(f"interrupted; the last finished epoch is checkpointed in {args.out}: "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{args.model}: test accuracy {acc:.4f}; weights, ONNX and record in {args.out}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``xbarsim export``: write a zoo model as ONNX (random or given weights)."""
    try:
        _check_model(args.model)
        try:
            from models.onnx_export import export
            from models.zoo import _options
        except ImportError as e:
            raise ModelError(f"{NO_TORCH} ({e})") from e
        options = _parse_options(args.opt)
        # builder options only: export's own parameters (path, batch, seed, atol...) share
        # its keyword arguments and would clash with the command's or silently change them
        _options(args.model, options)
        path = export(args.model, args.output, args.opset, batch=args.batch,
                      dynamic_batch=args.dynamic_batch, weights=args.weights,
                      verify=args.verify, seed=args.seed, **options)
    except ModelError as e:
        return _error(e)
    except BrokenPipeError:   # the reader of stdout left: xbarsim's main says nothing
        raise
    except OSError as e:  # an output folder that cannot be written, a full disk
        return _error(f"{e.strerror or e}: {e.filename or ''}")
    print(f"wrote {path}" + ("; onnxruntime matches PyTorch on a sample (--verify)"
                             if args.verify else ""))
    return EXIT_OK


def register(subparsers) -> None:
    """Add the ``train`` and ``export`` subcommands to an argparse ``subparsers`` object."""
    names = ", ".join(MODEL_NAMES)
    opt_help = "builder option KEY=VALUE (repeatable), e.g. width=0.25 or hidden=(64,32)"

    p = subparsers.add_parser("train", help="train a zoo model and export it to ONNX",
                              description="Train a zoo model with Adam; checkpoint every "
                              "epoch; write NAME.pt, NAME.onnx and NAME.json.")
    p.add_argument("model", help=f"zoo model: {names}")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, digits, a folder of IDX or train/test .npz files, "
                        "or an .npz file (default: fashion-mnist)")
    p.add_argument("--epochs", type=int, default=10, help="epochs in total (default: 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--lr-decay", type=float, default=1.0,
                   help="learning rate factor per epoch (default: 1.0)")
    p.add_argument("--batch-size", type=int_in(2, 1 << 20), default=128,
                   help="batch size, >= 2 (default: 128)")
    p.add_argument("--seed", type=int_in(0, 2 ** 63 - 1), default=0,
                   help="seed for init and data order")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use at most N training and N test examples (quick runs)")
    p.add_argument("--out", default="xbarsim-out/train",
                   help="output folder (default: xbarsim-out/train)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help=opt_help)
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if the output folder holds a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("export", help="export a zoo model to ONNX",
                              description="Export a zoo model to ONNX (static shapes, input "
                              "'input', output 'logits').")
    e.add_argument("model", help=f"zoo model: {names}")
    e.add_argument("-o", "--output", required=True, help="ONNX file to write")
    e.add_argument("--opset", type=int_in(9, TORCH_MAX_OPSET), default=17,
                   help=f"ONNX opset, 9..{TORCH_MAX_OPSET} (default: 17; below 9 torch "
                        f"writes BatchNorm and recurrent graphs onnxruntime cannot run; "
                        f"below 11 it reads a recurrent model's last step with Slice, "
                        f"which the compiler does not lower)")
    e.add_argument("--batch", type=positive_int, default=1,
                   help="static batch size (default: 1)")
    e.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    e.add_argument("--weights", help="state dict (.pt) to load, e.g. from xbarsim train")
    e.add_argument("--seed", type=int_in(0, 2 ** 63 - 1), default=0,
                   help="seed of the random init")
    e.add_argument("--opt", action="append", metavar="KEY=VALUE", help=opt_help)
    e.add_argument("--verify", action="store_true",
                   help="check onnxruntime against PyTorch after export")
    e.set_defaults(func=cmd_export)
