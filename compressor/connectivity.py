"""Keep pruned layers connected: a kept block must read neurons that depend on the input.

Block pruning ranks each layer's crossbar blocks on its own. Between two wide fully
connected layers that can disconnect the network: layer ``l`` keeps some column blocks
(the output neurons it still computes), layer ``l+1`` keeps row blocks (the input neurons
it reads), and when none of the second lie among the first, every kept crossbar of
``l+1`` reads constants (a ReLU of a bias) and the logits no longer depend on the image.
ADMM at 1/3 of the benchmark's block budget did exactly that on one machine (accuracy 10 %
on Fashion-MNIST, both ρ schedules), and no retraining can recover: the masks are frozen
and the gradient through a constant is zero.

So the projections of a chain of layers run in order (:func:`project_layers`): each layer's
*live* outputs (neurons or channels with a kept weight on a live input) give the next
layer's live rows, and the next layer ranks its groups live-first (a group with a live row
before any without, by L2 norm within each), keeping its budget. Where every group it would
keep reads a live row (every output of the producer live, say), nothing changes. The
producer of a layer is found with torch.fx (:func:`feeding_layers`): the consumer's input is
the producer's output through ops after which a neuron or channel depends on the input
exactly when it did before: per-neuron ops (ReLU, dropout, BatchNorm, ...), pooling, padding
and flattening a map. Producers are ``Linear`` or convolution layers; consumers are
``Linear`` layers and ungrouped convolutions. A channel's live rows are all of its rows: a
convolution reads channel ``c`` on every kernel offset, a ``Linear`` after a flattened map on
every pixel (:func:`rows_of_channels`).
"""
from __future__ import annotations

import contextlib
import math
import operator
from collections import Counter
from numbers import Number

import numpy as np
import torch
from torch import nn

from .geometry import CrossbarGeometry, to_crossbar

# Ops whose output neuron i depends on input neuron i alone (eval mode).
PER_NEURON_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
                       nn.Sigmoid, nn.Hardtanh, nn.Identity, nn.Dropout, nn.BatchNorm1d)
PER_NEURON_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.leaky_relu,
                         nn.functional.dropout, torch.tanh, torch.sigmoid, operator.neg}


# Ops on a feature map of 2 or 1 spatial dimensions after which a channel depends on the
# input exactly when it did before (per-channel normalisation, pooling, padding); the
# per-neuron ops above act on channels alike.
_MAP_MODULES = {
    2: (nn.BatchNorm2d, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
        nn.ReplicationPad2d, nn.CircularPad2d),
    1: (nn.BatchNorm1d, nn.Dropout1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
        nn.AdaptiveMaxPool1d, nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d,
        nn.ReplicationPad1d, nn.CircularPad1d)}
_MAP_FUNCTIONS = {
    2: {nn.functional.max_pool2d, nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d,
        nn.functional.adaptive_max_pool2d, nn.functional.pad},
    1: {nn.functional.max_pool1d, nn.functional.avg_pool1d, nn.functional.adaptive_avg_pool1d,
        nn.functional.adaptive_max_pool1d, nn.functional.pad}}
_PER_NEURON_METHODS = ("relu", "tanh", "sigmoid", "contiguous")
_CONVS = {nn.Conv2d: 2, nn.Conv1d: 1}


def _dims(conv: nn.Module) -> int:
    """Spatial dimensionality of a convolution (subclasses included)."""
    return next(d for t, d in _CONVS.items() if isinstance(conv, t))


def feeding_layers(model: nn.Module, names, sample=None) -> dict[str, str]:
    """``{consumer: producer}`` among the layers ``names`` (``Linear`` and convolutions): a
    ``Linear`` fed by a ``Linear`` through per-neuron ops, or by a convolution through ops on
    its map (of its dimensionality) then a flatten from dimension 1, then per-neuron ops; a
    convolution fed by one of the same dimensionality through ops on the map (module doc).
    A module called more than once is not coupled. ``{}`` where torch.fx cannot trace the
    model (the layers are then projected independently). ``sample`` (one input batch): the
    shapes that tell ``x.view(-1, C*H*W)``, a flatten, from a view that reads pixels."""
    names = set(names)
    modules = dict(model.named_modules())
    try:
        with evaluating(model):
            traced = torch.fx.symbolic_trace(model)
            if sample is not None:
                _record_shapes(traced, sample)
    except Exception:   # control flow on data, e.g. recurrent models: no coupling
        return {}
    graph = traced.graph
    calls = [n for n in graph.nodes if n.op == "call_module"]
    uses = Counter(n.target for n in calls)
    feeds = {}
    for node in calls:
        layer = modules[node.target]
        if node.target not in names or uses[node.target] > 1 \
                or not isinstance(layer, (nn.Linear, *_CONVS)):
            continue
        src = node.args[0] if node.args else None
        if isinstance(layer, nn.Linear):
            src, _ = _walk(src, modules, dims=())
            if isinstance(src, torch.fx.Node) and is_flatten(src, modules):
                src, seen = _walk(src.args[0], modules, dims=(2, 1))
                ok = _is_layer(src, modules, names, tuple(_CONVS)) \
                    and seen <= {_dims(modules[src.target])}
            else:
                ok = _is_layer(src, modules, names, (nn.Linear,))
        else:
            src, _ = _walk(src, modules, dims=(_dims(layer),))
            ok = _is_layer(src, modules, names, tuple(_CONVS)) \
                and _dims(modules[src.target]) == _dims(layer)
        if ok:
            feeds[node.target] = src.target
    return feeds


_SCALAR_OPS = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul,
               torch.add, torch.sub, torch.div, "mul", "add", "sub", "div"}


def _elementwise(node, modules) -> bool:
    """Whether fx ``node`` acts on each element alone: a per-neuron op, or arithmetic with
    a number. Each word stays where it is, and a constant stays constant."""
    return (node.op == "call_module" and isinstance(modules[node.target], PER_NEURON_MODULES)
            or node.op == "call_function" and node.target in PER_NEURON_FUNCTIONS
            or node.op == "call_method" and node.target in _PER_NEURON_METHODS
            or node.op in ("call_function", "call_method") and node.target in _SCALAR_OPS
            and len(node.args) == 2 and isinstance(node.args[1], Number))


def _walk(src, modules: dict, dims: tuple[int, ...]):
    """``(node, seen)``: the fx node ``src`` is computed from through elementwise ops and ops
    on maps of the spatial dimensionalities ``dims`` (``src`` itself when it is none of
    them), and the dimensionalities of the map ops passed."""
    seen = set()
    while isinstance(src, torch.fx.Node) and src.args:
        if not _elementwise(src, modules):
            d = next((d for d in dims if src.op == "call_module"
                      and isinstance(modules[src.target], _MAP_MODULES[d])
                      or src.op == "call_function" and src.target in _MAP_FUNCTIONS[d]), None)
            if d is None:
                break
            seen.add(d)
        src = src.args[0]
    return src, seen


def _is_layer(node, modules, names, kinds: tuple) -> bool:
    """Whether fx ``node`` calls a module of ``names`` of one of the types ``kinds``."""
    return (isinstance(node, torch.fx.Node) and node.op == "call_module"
            and node.target in names and isinstance(modules[node.target], kinds))


def reshapes(node, modules) -> bool:
    """Whether fx ``node`` is a flatten, view or reshape, whatever its target shape."""
    return (node.op == "call_module" and isinstance(modules.get(node.target), nn.Flatten)
            or node.op == "call_function" and node.target in (torch.flatten, torch.reshape)
            or node.op == "call_method" and node.target in ("flatten", "view", "reshape"))


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode inside, each module's own mode restored after. Trace inside it
    too: a functional ``batch_norm`` or ``dropout`` reads ``self.training`` when traced, and a
    pass over the traced graph must neither move running statistics nor draw random numbers."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _record_shapes(traced, sample) -> None:
    """Each fx node's output shape in ``node.meta`` (torch.fx's ShapeProp) for one
    ``sample``, through a graph traced in eval mode (a batch of one through BatchNorm);
    none where it fails."""
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(sample)
    except Exception:   # noqa: BLE001 -- shapes are a refinement: without them, no coupling
        pass


def _shape(node):
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def is_flatten(node, modules) -> bool:
    """Whether fx ``node`` flattens its input from dimension 1 to the end, by its arguments:
    ``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(N, -1)``,
    ``torch.reshape(x, (N, -1))``; and by the shapes ``feeding_layers`` recorded, the classic
    ``x.view(-1, C*H*W)`` (``-1, W`` on a map would read pixels: no flatten)."""
    if not reshapes(node, modules):
        return False
    if node.op == "call_module":
        m = modules[node.target]
        return m.start_dim == 1 and m.end_dim == -1
    args = list(node.args[1:])
    if node.target in (torch.flatten, "flatten"):
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if len(args) == 2 and args[0] == -1 and isinstance(args[1], int):
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        return (shape_in is not None and shape_out is not None
                and shape_out == (shape_in[0], math.prod(shape_in[1:])))
    return len(args) == 2 and args[1] == -1


def rows_of_channels(live: np.ndarray, shape: tuple[int, ...],
                     view: tuple[int, ...] | None = None) -> np.ndarray | None:
    """The consumer's live crossbar rows from its producer's live outputs ``live`` (one per
    channel or neuron): a weight of torch ``shape`` read through ``view``
    (:mod:`compressor.layout`). A convolution reads channel ``c`` at every kernel offset
    (rows ``(ky, kx, c)``); a ``Linear`` reads it once, or on each of ``S`` pixels of a
    flattened map (rows ``(c, s)``, or ``(s, c)`` through a view). None where the shapes
    do not say (a grouped convolution): then no coupling."""
    c = len(live)
    if len(shape) >= 3:
        return np.tile(live, math.prod(shape[2:])) if shape[1] == c else None
    k = int(shape[1])
    if k % c:
        return None
    return np.tile(live, k // c) if view is not None else np.repeat(live, k // c)


def live_outputs(m: np.ndarray, live_rows: np.ndarray | None) -> np.ndarray:
    """Columns (output neurons) of crossbar matrix ``m`` with a nonzero on a live row."""
    nz = m != 0
    if live_rows is not None:
        nz = nz[live_rows]
    return nz.any(axis=0)


def project_layers(layers: dict, weights: dict, geom: CrossbarGeometry,
                   feeds: dict[str, str], views: dict | None = None) -> dict:
    """``{name: (projected, scale, keep)}``: each ``layers[name].project(weights[name])``
    in order, a layer fed by another (``feeds``) ranking its groups live-first, a layer
    with a view (:func:`compressor.layout.crossbar_views`) read through it."""
    views = views or {}
    out, live = {}, {}
    order: list[str] = []

    def visit(n, path=()):     # producers first, whatever order the recipe's rules give
        if n in order or n in path or n not in layers:
            return
        visit(feeds.get(n), path + (n,))
        order.append(n)
    for n in layers:
        visit(n)
    producers = set(feeds.values())
    for n in order:
        rows = live.get(feeds.get(n))
        if rows is not None:
            rows = rows_of_channels(rows, tuple(weights[n].shape), views.get(n))
        out[n] = layers[n].project(weights[n], geom, live_rows=rows, view=views.get(n))
        if n in producers:
            proj = out[n][0]
            arr = proj.detach().cpu().numpy() if isinstance(proj, torch.Tensor) else proj
            live[n] = live_outputs(to_crossbar(np.asarray(arr), views.get(n)), rows)
    return {n: out[n] for n in layers}
