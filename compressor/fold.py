"""Power-of-two weight scales by exact cross-layer folding (``quant: {pow2: fold}``).

A quantized layer stores ``W = s · q``. Write its scale as ``s = 2**k · r`` with
``r ∈ [1/√2, √2)``. ReLU, max/average pooling, flatten and reshape are positively
homogeneous, ``f(c·x) = c·f(x)`` for ``c > 0``, so a network that is a chain of linear
layers and such ops computes the same function if each layer keeps its integer levels ``q``
at the power-of-two scale ``2**k``, and every tensor downstream of it is read as divided by
the product ``R`` of the residuals ``r`` met so far: a layer's bias becomes ``b / R``, a
BatchNorm's mean and shift ``/ R``, and the logits come out divided by the last ``R``
(``CompressionResult.output_scale``), which leaves every class decision unchanged. This is the
scale equivariance that cross-layer equalization uses (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019), applied to the residual of each
scale's nearest power of two. The integer levels, masks and crossbars do not change, so
integer-only scales cost no accuracy where the graph allows the fold, and no retraining.

Where it does not allow it (a tensor with ``R != 1`` reaches a sigmoid, tanh, softmax, a
clipping activation, or an add/concat of two tensors with different ``R``, as in a residual
block), :func:`check_foldable` and :func:`fold_pow2_scales` raise a one-line
:class:`CompressionError` that names the node; ``pow2: true`` (projection onto power-of-two
scales during ADMM) works on any graph.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from simulator.errors import first_line

from .errors import CompressionError

# Modules and functions with f(c·x) = c·f(x) for every c > 0 (eval mode).
_HOMOGENEOUS_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_HOMOGENEOUS_FUNCTIONS = {
    torch.relu, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
    torch.transpose, torch.permute, nn.functional.relu, nn.functional.leaky_relu,
    nn.functional.dropout, nn.functional.max_pool1d, nn.functional.max_pool2d,
    nn.functional.max_pool3d, nn.functional.avg_pool1d, nn.functional.avg_pool2d,
    nn.functional.avg_pool3d, nn.functional.adaptive_avg_pool1d,
    nn.functional.adaptive_avg_pool2d, nn.functional.adaptive_max_pool2d,
    operator.getitem}
_HOMOGENEOUS_METHODS = {"relu", "view", "reshape", "flatten", "permute", "transpose",
                        "contiguous", "squeeze", "unsqueeze", "__getitem__"}
_SHAPE_METHODS = {"size", "dim"}               # return shapes, not tensors: no scale
_SAME_SCALE = {operator.add, torch.add, torch.cat, torch.stack, torch.maximum}
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def split_pow2(scale: float) -> tuple[float, float]:
    """``(2**k, r)`` with ``scale = 2**k · r`` and ``k`` the nearest power's exponent
    (``r ∈ [1/√2, √2)``, in float64)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise CompressionError(f"scale={scale!r}: must be a positive finite number")
    p = 2.0 ** round(math.log2(scale))
    return p, scale / p


def check_foldable(model: nn.Module, names) -> None:
    """Raise :class:`CompressionError` unless the scales of layers ``names`` fold exactly
    into ``model`` (see the module doc). Touches nothing; run it before training."""
    # sqrt of distinct primes: two tensors get equal test divisors only if the same folded
    # layers lie upstream of both, which is when their real divisors are equal too
    primes = [p for p in range(2, 10 * len(names) + 30)
              if all(p % d for d in range(2, int(p ** 0.5) + 1))]
    _walk(model, {n: math.sqrt(p) for n, p in zip(names, primes)}, apply=False)


def fold_pow2_scales(result, names=None):
    """A copy of ``result`` (a :class:`~compressor.pipeline.CompressionResult`) whose
    quantized layers ``names`` (default: every quantized layer) store their levels at the
    nearest power-of-two scale, with the residuals folded downstream (module doc). Its
    ``output_scale`` says by what to multiply its logits to get ``result``'s."""
    layers = dict(result.layers)
    quantized = [n for n, lay in layers.items() if lay.scale is not None]
    names = quantized if names is None else list(names)
    for n in names:
        if n not in layers or layers[n].scale is None:
            raise CompressionError(f"pow2 fold: {n!r} is not a quantized layer of this result; "
                                   f"quantized: {', '.join(quantized) or 'none'}")
        if np.ndim(layers[n].scale):
            raise CompressionError(f"pow2 fold: {n!r} has a scale per output channel; the fold "
                                   f"moves one scale per layer into what follows (use pow2: "
                                   f"true for a power of two per channel)")
    split = {n: split_pow2(layers[n].scale) for n in names}
    model = copy.deepcopy(result.model).eval()
    out_r = _walk(model, {n: r for n, (_, r) in split.items()}, apply=True)
    modules = dict(model.named_modules())
    for n, (p, _) in split.items():
        lay = layers[n]
        w = modules[n].weight
        with torch.no_grad():   # exact: a power of two times small integers
            w.copy_(torch.as_tensor(lay.levels.astype("float32") * float(p), dtype=w.dtype))
        c = lay.constraint   # what the layer now stores: power-of-two scales by the fold
        layers[n] = replace(lay, scale=float(p),
                            constraint=replace(c, quant=replace(c.quant, pow2="fold")))
    return replace(result, model=model, layers=layers,
                   output_scale=result.output_scale * out_r)


def _walk(model: nn.Module, residual: dict[str, float], apply: bool) -> float:
    """Propagate every tensor's divisor ``R`` through ``model``'s traced graph, dividing the
    biases (and BatchNorm shifts) it meets by theirs when ``apply``; returns the output's."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:   # data-dependent control flow, unsupported constructs
        raise CompressionError(f"pow2 fold: cannot trace {type(model).__name__} with "
                               f"torch.fx ({first_line(e)}); use pow2: true instead") from e
    modules = dict(model.named_modules())
    scale: dict = {}        # node -> R (None: not a tensor, e.g. a size)
    seen: dict[str, float] = {}   # module -> the divisor its bias took

    def r_of(arg):
        return scale.get(arg) if isinstance(arg, torch.fx.Node) else None

    def inputs(node):
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a))
        return [r for r in map(r_of, found) if r is not None]

    def constants(node):
        """Unscaled operands: numbers and tensors that are no graph node, and graph nodes
        that are no scaled tensor (a size, or a tensor built from one: ``h + h.size(1)``,
        ``h + torch.ones(h.shape)``). The operands are the tensors joined
        (``cat``/``stack``: the first argument) or the two combined (``add``, ``maximum``);
        ``dim`` and ``alpha`` are not operands (``alpha`` multiplies a scaled operand,
        which commutes)."""
        joins = node.target in (torch.cat, torch.stack)
        operands = ([node.args[0] if node.args else node.kwargs.get("tensors", ())] if joins
                    else [*node.args[:2], *(node.kwargs[k] for k in ("input", "other")
                                            if k in node.kwargs)])
        found = []
        torch.fx.node.map_aggregate(operands, found.append)
        return any(isinstance(a, (int, float, torch.Tensor)) and not isinstance(a, bool)
                   or isinstance(a, torch.fx.Node) and scale.get(a) is None for a in found)

    def once(node, target, r):
        """A module whose bias (or BatchNorm shift) is divided may run only once."""
        if target in seen and (r != 1.0 or seen[target] != 1.0):
            raise CompressionError(f"pow2 fold: module {target!r} is called more than once "
                                   f"on folded tensors; its bias cannot take two divisors "
                                   f"(node {node.name!r}); use pow2: true for this model")
        seen[target] = r

    def refuse(node, what):
        raise CompressionError(
            f"pow2 fold: node {node.name!r} ({what}) does not commute with the folded scale its "
            f"input carries (allowed between folded layers: Conv/Linear, ReLU, "
            f"LeakyReLU, max/average pooling, flatten/reshape, dropout, BatchNorm, and add/"
            f"concat of equally scaled tensors); use pow2: true for this model")

    for node in gm.graph.nodes:
        r_in = inputs(node)
        first = r_in[0] if r_in else 1.0
        if node.op == "placeholder":
            scale[node] = 1.0
        elif node.op == "get_attr":
            scale[node] = 1.0                       # a constant: unscaled
        elif node.op == "output":
            skipped = [n for n, r in residual.items() if r != 1.0 and n not in seen]
            if skipped:   # e.g. read through F.linear(x, self.layer.weight): not foldable
                raise CompressionError(f"pow2 fold: layer(s) {', '.join(skipped)} never run "
                                       f"as modules in the traced graph, so their scales "
                                       f"cannot be folded; use pow2: true for this model")
            if len(r_in) > 1 and any(r != first for r in r_in):
                raise CompressionError("pow2 fold: the model's outputs would carry different "
                                       "output scales; use pow2: true for this model")
            return first
        elif node.op == "call_module":
            mod, target = modules[node.target], node.target
            if isinstance(mod, _LINEAR):
                out = first * residual.get(target, 1.0)
                once(node, target, out)
                if apply and mod.bias is not None and out != 1.0:
                    with torch.no_grad():
                        mod.bias.copy_((mod.bias.double() / out).to(mod.bias.dtype))
                scale[node] = out
            elif isinstance(mod, _BATCHNORM):
                once(node, target, first)
                if first != 1.0 and mod.running_mean is None:
                    refuse(node, f"{type(mod).__name__} without running statistics")
                if apply and first != 1.0:          # BN(R·x)/R: mean and shift over R
                    with torch.no_grad():
                        mod.running_mean.copy_((mod.running_mean.double() / first)
                                               .to(mod.running_mean.dtype))
                        if mod.bias is not None:
                            mod.bias.copy_((mod.bias.double() / first).to(mod.bias.dtype))
                scale[node] = first
            elif isinstance(mod, _HOMOGENEOUS_MODULES):
                scale[node] = first
            elif all(r == 1.0 for r in r_in):
                scale[node] = 1.0
            else:
                refuse(node, type(mod).__name__)
        elif node.op == "call_method" and node.target in _SHAPE_METHODS:
            scale[node] = None
        elif node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS \
                or node.op == "call_function" and node.target in _HOMOGENEOUS_FUNCTIONS:
            scale[node] = first if r_in else None
        elif node.op == "call_function" and node.target in _SAME_SCALE:
            if any(not math.isclose(r, first, rel_tol=1e-12) for r in r_in) \
                    or first != 1.0 and constants(node):   # (x/R) + c is not (x + c)/R
                refuse(node, f"{getattr(node.target, '__name__', node.target)} of tensors "
                             f"with different folded scales")
            scale[node] = first
        elif node.op == "call_function" and node.target is getattr:
            scale[node] = None                      # x.shape and the like
        elif all(r == 1.0 for r in r_in):
            scale[node] = 1.0 if r_in else None
        else:
            refuse(node, str(getattr(node.target, "__name__", node.target)))
    raise CompressionError("pow2 fold: the traced graph has no output")
