"""ONNX export of zoo models (or any module) with a fixed opset and static shapes.

Uses torch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and
works offline in torch 2.2-2.13. The graph has one input named ``input`` and one output
named ``logits``; the batch dimension is 1 unless asked otherwise.

>>> from models import export
>>> export("lenet5", "lenet5.onnx")                                  # random weights
>>> export("lenet5", "lenet5.onnx", weights="lenet5.pt", verify=True)
"""
import inspect
import io
import math
import numbers
import os
import shlex
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.checkpoints import check_finite, load_dict
from models.errors import ModelError
from models.zoo import build
from simulator.cli import TORCH_MAX_OPSET
from simulator.errors import first_line
from simulator.fileio import atomic_write, check_writable_folder, names_a_folder

#: Opset used unless the caller names another.
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


#: ``torch.onnx.export``'s switch to the TorchScript exporter, where it has one (an older
#: torch has no ``dynamo`` keyword and uses that exporter anyway).
TORCHSCRIPT_EXPORTER = ({"dynamo": False} if "dynamo" in inspect.signature(
    torch.onnx.export).parameters else {})


#: ``verify``: the relative part of the tolerance, of the largest |logit|.
VERIFY_RTOL = 1e-5

def check_opset(opset, error=ModelError) -> None:
    """``opset`` is an integer the exporter writes and onnxruntime runs: 9..TORCH_MAX_OPSET."""
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) \
            or not 9 <= opset <= TORCH_MAX_OPSET:
        raise error(f"opset = {opset!r}: must be an integer in 9..{TORCH_MAX_OPSET} "
                    f"(below 9 torch writes graphs onnxruntime cannot run)")


def is_sample_shape(shape) -> bool:
    """Whether ``shape`` is one sample's shape: a sequence of integer sizes >= 1."""
    return not isinstance(shape, (str, bytes)) and hasattr(shape, "__iter__") and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape)


def _to_onnx(model: nn.Module, sample: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript;
        # its LSTM batch-size warning does not apply (h0/c0 are built from the input's shape).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # nn.LSTM's shape checks
        # past its opset 20 the exporter writes the opset asked with its opset-20 ops, all
        # still valid there (every zoo model passes --verify up to 23): nothing to warn of
        warnings.filterwarnings("ignore", message="Exporting to ONNX opset version .* is not "
                                                  "supported")
        torch.onnx.export(model, (sample,), buf, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, do_constant_folding=True, **TORCHSCRIPT_EXPORTER)
    return buf.getvalue()


def _inline_identity_initializers(graph: onnx.GraphProto) -> None:
    """Replace ``Identity(initializer)`` nodes by initializers of their own.

    The exporter de-duplicates equal tensors (e.g. the zero biases of freshly folded
    BatchNorms) and re-creates them with Identity nodes; a compiler wants every Conv/Gemm
    weight to be an initializer.
    """
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    used = {name for node in keep for name in node.input}
    used |= {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    alive = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(alive)


def run_onnxruntime(path: str | os.PathLike, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """Run an exported model on ``x`` with onnxruntime (CPU) and return its logits."""
    from compiler.reference import onnxruntime_session
    sess = onnxruntime_session(path, threads)
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def _check_training_options(name: str, kw: dict, weights: Path) -> None:
    """Weights that ``xbarsim train`` wrote sit beside ``NAME.json``, which records the
    builder options they were trained with. Options that set no weight's shape (the input
    size of a ResNet or VGG, a recurrent model's sequence length) load into any build, so
    a re-export without them went out at the default input size; refuse that."""
    import json

    from models.zoo import _options
    record = weights.with_suffix(".json")
    try:
        trained = json.loads(record.read_text())
    except (OSError, ValueError):
        return                                       # not written by train: nothing to check
    if not isinstance(trained, dict):
        return
    other = trained.get("model")
    if other != name:
        from models import MODEL_NAMES
        if isinstance(other, str) and other in MODEL_NAMES:   # else torch's key list said it
            raise ModelError(f"--weights {weights} holds {other} weights ({record.name} "
                             f"says so), not {name}'s; export {other}, or pass {name}'s "
                             f"weights")
        return

    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v
    recorded = trained.get("model_kwargs") or {}
    try:        # both through the builder's rules ("false" and False are one flag)
        want = _options(name, {k: norm(v) for k, v in recorded.items()})
    except ModelError:
        return                                       # a record of another version
    given = _options(name, kw)
    differ = {k: recorded[k] for k in recorded
              if k in given and norm(given[k]) != norm(want[k])}
    if differ:
        # quoted: a list prints with spaces and brackets, which the shell would split or glob
        opts = " ".join(f"--opt {shlex.quote(f'{k}={v}')}" for k, v in differ.items())
        raise ModelError(f"--weights {weights} was trained with other options ({record}): "
                         f"add {opts}")


def export(name_or_module: str | nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
           *, batch: int = 1, dynamic_batch: bool = False,
           input_shape: tuple[int, ...] | None = None, weights: str | os.PathLike | None = None,
           verify: bool = False, atol: float = 1e-4, seed: int | None = 0, **kw) -> Path:
    """Export a zoo model (by name, built with options ``kw``) or a module to ONNX at ``path``.

    ``input_shape`` is the per-sample shape (no batch); zoo modules carry it as
    ``sample_shape``. ``weights`` loads a state dict first. ``batch`` fixes the batch size of
    the static input; ``dynamic_batch`` makes it symbolic (``batch``). The model is checked
    with ``onnx.checker``; ``verify`` also compares onnxruntime with PyTorch (``atol`` plus
    ``VERIFY_RTOL`` of the largest logit).
    Returns the path written.
    """
    if isinstance(name_or_module, str):
        model, name = build(name_or_module, seed=seed, **kw), name_or_module
    elif isinstance(name_or_module, nn.Module):
        if kw:
            raise ModelError(f"builder options {sorted(kw)} only apply to zoo names")
        model, name = name_or_module, getattr(name_or_module, "zoo_name", "")
    else:
        raise ModelError(f"export takes a zoo name or a torch module, got {type(name_or_module)}")
    check_opset(opset)
    if not (isinstance(atol, numbers.Real) and math.isfinite(atol) and atol >= 0):
        raise ModelError(f"atol = {atol!r}: must be a finite number >= 0")
    shape = input_shape if input_shape is not None else getattr(model, "sample_shape", ())
    if not is_sample_shape(shape):
        raise ModelError(f"input_shape = {shape!r}: must be a tuple of sizes >= 1, one "
                         f"sample's shape without the batch, e.g. (1, 28, 28)")
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise ModelError("module has no sample_shape; pass input_shape=(C, H, W) or similar")
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ModelError(f"batch = {batch!r}: must be an integer >= 1")
    if weights is not None and isinstance(name_or_module, str):
        _check_training_options(name_or_module, kw, Path(weights))
    if weights is not None:
        state = load_dict(weights, ModelError, "weights")
        if {"model", "optimizer", "epoch"} <= set(state):
            raise ModelError(f"--weights {weights}: an xbarsim train checkpoint (weights, "
                             f"optimizer, epoch); pass the .pt beside it, which holds the "
                             f"weights alone")
        check_finite(state, weights, ModelError)
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError) as e:
            detail = " ".join(str(e).split())      # torch puts the mismatch on line 2
            raise ModelError(f"cannot load weights {weights} into {name or 'model'}: "
                             f"{detail}") from e
    if weights is not None and Path(weights).resolve() == Path(path).resolve():
        raise ModelError(f"-o {path}: is the --weights file; the export would overwrite it")

    was_training = model.training
    model.eval()
    sample = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0))
    try:
        proto = onnx.load_from_string(_to_onnx(model, sample, opset, dynamic_batch))
    except (RuntimeError, ValueError, TypeError) as e:   # the tracer on a degenerate model
        raise ModelError(f"cannot export {name or 'model'} with input {tuple(sample.shape)}: "
                         f"{first_line(e)}") from e
    finally:
        model.train(was_training)
    _inline_identity_initializers(proto.graph)
    onnx.helper.set_model_props(proto, {"xbarsim.model": name or type(model).__name__,
                                        "xbarsim.opset": str(opset)})
    onnx.checker.check_model(proto, full_check=True)
    if Path(path).is_dir() or names_a_folder(path):
        there = "a folder is there" if Path(path).is_dir() else "names a folder"
        raise ModelError(f"-o {os.fspath(path)}: {there}; name the .onnx file to write")
    path = Path(path)
    check_writable_folder(path.parent, f"-o {path}", ModelError)   # a file on the way: said
    with atomic_write(path) as tmp:
        onnx.save(proto, tmp)
        if verify:   # before the file takes its name: a failed check leaves the old one
            with torch.no_grad():
                expected = model.eval()(sample).numpy()
            model.train(was_training)
            got = run_onnxruntime(tmp, sample.numpy())
            # float32 rounding grows with the logits: atol plus 1e-5 of their size (logits
            # of ~600 differed by 2e-4 and a correct export was refused)
            tol = atol + VERIFY_RTOL * float(np.max(np.abs(expected), initial=0.0))
            err = float(np.max(np.abs(got - expected)))
            if err > tol:
                raise ModelError(f"{path}: onnxruntime differs from PyTorch by {err:.3g} > "
                                 f"{tol:.3g} (atol={atol} + {VERIFY_RTOL} x max |logit|); "
                                 f"nothing was written")
    return path
