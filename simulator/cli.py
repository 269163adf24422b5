"""The ``xbarsim`` command line.

    xbarsim compile MODEL.onnx -o PROGRAM_DIR [--preset NAME|FILE.yaml] [--set KEY=VALUE ...]
    xbarsim simulate PROGRAM_DIR [--input IN.npz] [--outputs OUT.npz] [--json REPORT.json]
                     [--trace TRACE.json]
    xbarsim run [MODEL.onnx] [--preset ...] [--set ...] [--input IN.npz | --random N]
                [--outputs OUT.npz] [--json REPORT.json] [--trace TRACE.json] [--plots DIR]
    xbarsim listing PROGRAM_DIR [--tile T [--core C]] [-o FILE]
    xbarsim presets

Every user mistake ends with one line ``error: ...`` on stderr and exit code 2; nothing
already written is removed. The compiler, models and compressor are imported lazily.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import XbarsimError
from .fileio import check_writable_folder, is_special_file, names_a_folder, open_descriptor
from .simulate import DEFAULT_TRACE_CAP

EXIT_USER_ERROR = 2
#: Ctrl-C (128 + SIGINT), as the shells and every xbarsim command; a closed pipe (128 + SIGPIPE)
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class UserError(XbarsimError):
    """A command-line mistake (missing file, bad argument)."""


def _fail(msg: str) -> int:
    # one line whatever the message holds (a parser's error can carry newlines)
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return EXIT_USER_ERROR


class OneLineParser(argparse.ArgumentParser):
    """argparse with the house rule for mistakes: one line ``error: ...``, exit code 2
    (argparse's default prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} -h)\n")


def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="puma",
                   help="machine preset name (puma, isaac, small) or a YAML file [puma]")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set adc.bits=6 --set xbar.rows=256 "
                        "(adc.bits=none: ideal ADC)")
    p.add_argument("--replicate", type=positive_int, default=1, metavar="N",
                   help="up to N copies of each convolution's crossbars, in proportion to "
                        "its output pixels, each computing a band of rows [1: none]")
    p.add_argument("--vfu-cores", choices=("own", "shared"), default="own",
                   help="pooling, residual adds and other VFU layers on a core of their own "
                        "(faster) or sharing the MVM layers' cores (fewer cores and tiles, "
                        "less area) [own]")


TORCH_MAX_OPSET = 23
"""Highest opset the pinned torch's TorchScript exporter writes
(``torch.onnx._constants.ONNX_MAX_OPSET``; a test keeps the two equal)."""


def int_in(lo: int, hi: int):
    """An argparse type: an integer in ``lo..hi``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer in {lo}..{hi}")
        return v
    return parse


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return v


def _load_npz(path: str) -> dict[str, np.ndarray]:
    from .fileio import read_npz
    if not Path(path).exists():
        raise UserError(f"input file {path!r} does not exist")
    return read_npz(path, UserError)


def _check_output_args(args) -> None:
    """Refuse, before any work, output requests that cannot be met; create the folders the
    output files go into, so a finished simulation is never lost to a missing folder."""
    if getattr(args, "output", None) is not None:     # compile's program folder
        if not str(args.output).strip():
            raise UserError("-o/--output: empty path; name the program folder to write")
        out = Path(args.output)
        if out.exists() and not out.is_dir():   # Program.save refuses it, after compiling
            raise UserError(f"-o {args.output}: a file is there; a program is saved as a "
                            f"folder: name a new or existing folder")
        # its parent must take files: found now, not after compiling
        check_writable_folder(Path(args.output).resolve().parent, f"-o {args.output}",
                              UserError)
    check_output_files(args, {})


#: The options that name an output file: argparse dest -> the option a message names.
OUTPUT_FILE_OPTIONS = {"json": "--json", "trace": "--trace", "outputs": "--outputs",
                       "listing_file": "-o"}


def check_output_files(args, inputs: dict) -> None:
    """Before any work: each of :data:`OUTPUT_FILE_OPTIONS` (and ``--plots``' folder)
    must name a file in a folder that takes files, no two the same, none an input
    (``inputs``: path -> what it is) nor the plots folder or a plot in it; so a finished
    simulation is never lost to a bad path and never overwrites what it read or wrote."""
    taken = {Path(p).resolve(): what for p, what in inputs.items() if p}

    def take(path: Path, what: str, flag: str) -> None:
        target = path.resolve()
        if target in taken:
            raise UserError(f"{flag}: is also the {taken[target]}; choose another path")
        taken[target] = what

    plots = getattr(args, "plots", None)
    if plots:   # the folder and the PNGs it will get, whichever flag comes first
        from .report import PLOT_FILES
        take(Path(plots), "--plots folder", f"--plots {plots}")
        for name in PLOT_FILES:
            take(Path(plots) / name, f"--plots folder's {name}", f"--plots {plots}")
    for key, option in OUTPUT_FILE_OPTIONS.items():
        value = getattr(args, key, None)
        if not value:
            continue
        flag, path = f"{option} {value}", Path(value)
        take(path, f"{option} file", flag)
        if path.is_dir() or names_a_folder(value):
            raise UserError(f"{flag}: a folder is there; name a file to write")
        if open_descriptor(value) is not None or is_special_file(path):
            continue   # /dev/stdout, a pipe: written in place, no temp file beside it
        if not path.parent.is_dir() and path.parent.exists():
            raise UserError(f"{flag}: {path.parent} is a file, not a folder")
        check_writable_folder(path.parent, flag, UserError)
    if plots:   # made last: nothing is created for a request refused above
        check_writable_folder(Path(plots), f"--plots {plots}", UserError)


@contextlib.contextmanager
def _naming_failures(flag: str, path):
    """An OS error writing an output (a full disk, /dev/full) names its flag and path."""
    try:
        yield
    except BrokenPipeError:   # a reader that left: main's quiet exit, not a failed write
        raise
    except OSError as e:
        raise UserError(f"{flag} {path}: {e.strerror or e}") from e


def _write_outputs(report, args) -> None:
    if getattr(args, "layers", False):
        print(report.layers_table())
    if getattr(args, "json", None):
        with _naming_failures("--json", args.json):
            report.to_json(args.json)
        print(f"report   -> {args.json}")
    if getattr(args, "trace", None):
        with _naming_failures("--trace", args.trace):
            n = report.save_trace(args.trace)
        cut = report.trace_truncated
        kept = len(report.trace_events)      # n also counts the per-agent name records
        print(f"trace    -> {args.trace} ({n} events; open in ui.perfetto.dev)"
              + (f"; cut at its {kept}-event cap, the run went on past it (--trace-cap "
                 f"raises it)" if cut else ""))
    if getattr(args, "outputs", None) and report.outputs:
        from .fileio import atomic_write
        arrays = {k: v for k, v in report.outputs.items() if not k.endswith(":int")}
        # through an open file: np.savez adds no ".npz" to the name (a FIFO, /dev/stdout)
        with (_naming_failures("--outputs", args.outputs), atomic_write(args.outputs) as tmp,
              open(tmp, "wb") as f):
            np.savez(f, **arrays)
        print(f"outputs  -> {args.outputs}")
    if getattr(args, "plots", None):
        with _naming_failures("--plots", args.plots):
            written = report.plot(args.plots)
        for p in written:
            print(f"plot     -> {p}")


def cmd_presets(args) -> int:
    from .config import load_config, preset_names
    for name in preset_names():
        c = load_config(name)
        print(f"{name:8s} {c.xbar.rows}x{c.xbar.cols} xbar, {c.xbar.cell_bits}-bit cells, "
              f"{c.weight_bits}-bit weights, {c.dac.bits}-bit DAC, {c.adc.bits}-bit ADC "
              f"({c.adc.model}), {c.core.mvmus} MVMUs x {c.tile.cores} cores x "
              f"{c.node.tiles} tiles  [{c.source}]")
    return 0


def cmd_compile(args) -> int:
    from compiler import compile_model
    from .config import load_config
    _check_output_args(args)
    cfg = load_config(args.preset, args.overrides)
    prog = compile_model(args.model, cfg, progress=not args.quiet, replicate=args.replicate,
                         vfu_cores=args.vfu_cores)
    prog.save(args.output)
    m = prog.mapping
    print(f"compiled {args.model} -> {args.output}: {m.get('crossbars', '?')} crossbars, "
          f"{m.get('cores', '?')} cores, {m.get('tiles', prog.n_tiles)} tiles, "
          f"{prog.n_instructions} instructions")
    over = m.get("edram_overflow_tiles", 0)
    if over:   # costs stay tile.edram_kb's: say it where the user looks
        print(f"note: {over} tile(s) need more than the {m['edram_words']}-word eDRAM (up to "
              f"{m['mem_words_max']} words); costs model tile.edram_kb as if it fit")
    return 0


def cmd_simulate(args) -> int:
    from .program import Program
    from .simulate import simulate
    _check_output_args(args)
    folder = Path(args.program)
    check_output_files(args, {args.input: "--input file",
                              folder / "manifest.json": "program's manifest",
                              folder / "program.npz": "program's arrays"})
    prog = Program.load(args.program)
    if args.outputs and not args.input and prog.inputs:
        raise UserError("--outputs needs --input: without inputs simulate runs timing only "
                        "and computes no output values")
    inputs = _load_npz(args.input) if args.input else None
    rep = simulate(prog, inputs, trace=bool(args.trace), trace_cap=args.trace_cap)
    print(rep.summary())
    _write_outputs(rep, args)
    return 0


def cmd_listing(args) -> int:
    from .fileio import atomic_write
    from .program import Program
    if args.listing_file is not None and not args.listing_file.strip():
        raise UserError("-o/--output: empty path; name the file to write (or leave -o out "
                        "for stdout)")
    folder = Path(args.program)
    check_output_files(args, {folder / "manifest.json": "program's manifest",
                              folder / "program.npz": "program's arrays"})
    prog = Program.load(folder)
    text = prog.listing(args.tile, args.core)
    if args.listing_file is None:
        sys.stdout.write(text)
        return 0
    with _naming_failures("-o", args.listing_file), atomic_write(args.listing_file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"listing  -> {args.listing_file}")
    return 0


def cmd_run(args) -> int:
    from compiler.run import run_model
    run_model(args)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("xbarsim")
    except PackageNotFoundError:      # run from a checkout that was never pip-installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="xbarsim", description="Compile, simulate and compress DNNs for ReRAM crossbar "
                                    "accelerators.")
    ap.add_argument("--version", action="version", version=f"xbarsim {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("presets", help="list the shipped machine presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("compile", help="compile an ONNX model to a program folder")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="program folder to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_machine_args(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("simulate", help="simulate a compiled program")
    p.add_argument("program", help="program folder (from xbarsim compile)")
    p.add_argument("--input", help=".npz with one array per graph input, batch first")
    p.add_argument("--outputs", help="write the simulated outputs to this .npz")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--trace", help="write a Chrome/Perfetto timeline trace")
    p.add_argument("--trace-cap", type=positive_int, default=DEFAULT_TRACE_CAP, metavar="N",
                   help=f"most trace events kept; a longer run's trace is cut there and "
                        f"says so [{DEFAULT_TRACE_CAP}]")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("listing", help="print a compiled program's instruction streams as "
                                       "assembly, per core and control stream")
    p.add_argument("program", help="program folder (from xbarsim compile)")
    p.add_argument("--tile", type=int, metavar="T", help="only tile T's streams")
    p.add_argument("--core", type=int, metavar="C", help="only core C of --tile's tile")
    p.add_argument("-o", "--output", dest="listing_file", metavar="FILE",
                   help="write the listing to FILE [stdout]")
    p.set_defaults(func=cmd_listing)

    p = sub.add_parser("run", help="compile + simulate + compare with onnxruntime "
                                   "(no model: the bundled LeNet-5 demo)")
    p.add_argument("model", nargs="?", help="ONNX model file [bundled LeNet-5]")
    _add_machine_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--input", help=".npz with one array per graph input, batch first")
    g.add_argument("--random", type=positive_int, metavar="N", help="N random inputs")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="demo: use only the first N bundled images")
    p.add_argument("--outputs", help="write the simulated outputs to this .npz")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--trace", help="write a Chrome/Perfetto timeline trace")
    p.add_argument("--trace-cap", type=positive_int, default=DEFAULT_TRACE_CAP, metavar="N",
                   help=f"most trace events kept; a longer run's trace is cut there and "
                        f"says so [{DEFAULT_TRACE_CAP}]")
    p.add_argument("--plots", help="write plots (PNG) into this folder")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument("--out", help="demo: folder for report, trace and plots [xbarsim-out]")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_run)

    for mod in ("models.cli", "compressor.cli", "compiler.sweep"):
        _register_optional(mod, sub)
    return ap


def _register_optional(module: str, sub) -> None:
    """Sub-commands from packages that need extra dependencies (torch, dask) register
    themselves; if the package cannot be imported, its commands are simply absent."""
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    mod.register(sub)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    # a user reads what to do, not which line of ours raised it
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    try:   # the optional commands' modules load here: a Ctrl-C now is no traceback either
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    fmt, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        return int(args.func(args) or 0)
    except XbarsimError as e:
        return _fail(str(e))
    except BrokenPipeError:   # `xbarsim run ... | head`: the reader left; nothing to say
        try:   # and nothing more to write: Python's flush at exit would complain again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except OSError as e:      # missing file, a file where a folder belongs, disk full...
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except ValueError as e:   # errors of models/compressor (DataError, CompressionError...)
        if type(e).__module__.split(".")[0] in ("models", "compressor", "compiler"):
            return _fail(str(e))
        raise
    except MemoryError as e:  # e.g. --random 100000000000: numpy names the size
        return _fail(f"out of memory ({e}); ask for a smaller batch or model")
    except KeyboardInterrupt:   # as sweep, compress and train
        _fail("interrupted")
        return EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = fmt


if __name__ == "__main__":
    sys.exit(main())
