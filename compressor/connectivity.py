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
*live* output neurons (those with a kept weight on a live input) become the next layer's
live rows, and the next layer ranks its groups live-first (a group with a live row before
any without, by L2 norm within each), keeping its budget. Where every group it would keep
reads a live row, nothing changes. The producer of a layer is found with torch.fx
(:func:`feeding_layers`): a ``Linear`` whose input is another constrained ``Linear``'s
output through per-neuron ops only (ReLU, LeakyReLU, dropout, identity, BatchNorm1d).
Convolutions are not coupled: their rows mix kernel offsets with channels, and a
convolution's few output channels are rarely split across column blocks.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn

from .geometry import CrossbarGeometry, to_crossbar

# Ops whose output neuron i depends on input neuron i alone (eval mode).
PER_NEURON_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
                       nn.Sigmoid, nn.Hardtanh, nn.Identity, nn.Dropout, nn.BatchNorm1d)
PER_NEURON_FUNCTIONS = {torch.relu, nn.functional.relu, nn.functional.leaky_relu,
                         nn.functional.dropout, torch.tanh, torch.sigmoid, operator.neg}


def feeding_layers(model: nn.Module, names) -> dict[str, str]:
    """``{consumer: producer}`` among the ``nn.Linear`` layers ``names``: the consumer's
    input is the producer's output through per-neuron ops only. ``{}`` where torch.fx
    cannot trace the model (the layers are then projected independently)."""
    names = set(names)
    modules = dict(model.named_modules())
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:   # control flow on data, e.g. recurrent models: no coupling
        return {}
    feeds = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in names \
                or not isinstance(modules[node.target], nn.Linear):
            continue
        src = through_per_neuron_ops(node.args[0] if node.args else None, modules)
        if isinstance(src, torch.fx.Node) and src.op == "call_module" \
                and src.target in names and isinstance(modules[src.target], nn.Linear):
            feeds[node.target] = src.target
    return feeds


def through_per_neuron_ops(src, modules: dict):
    """The fx node ``src`` is computed from through per-neuron ops only, each used once
    (``src`` itself when it is none of them)."""
    while isinstance(src, torch.fx.Node) and len(src.users) == 1 and (
            src.op == "call_module" and isinstance(modules[src.target], PER_NEURON_MODULES)
            or src.op == "call_function" and src.target in PER_NEURON_FUNCTIONS
            or src.op == "call_method" and src.target in ("relu", "tanh", "sigmoid")):
        src = src.args[0]
    return src


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
        out[n] = layers[n].project(weights[n], geom, live_rows=rows, view=views.get(n))
        if n in producers:
            proj = out[n][0]
            arr = proj.detach().cpu().numpy() if isinstance(proj, torch.Tensor) else proj
            live[n] = live_outputs(to_crossbar(np.asarray(arr), views.get(n)), rows)
    return {n: out[n] for n in layers}
