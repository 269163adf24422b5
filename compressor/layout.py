"""Where a layer's inputs lie on the chip, when that is not the order of its weight's columns.

The compiler stores a feature map channel-last, ``(H, W, C)``. A fully connected layer after
``Flatten`` of a ``C × H × W`` map therefore reads its inputs in ``(h, w, c)`` order, not
torch's ``(c, h, w)``: the compiler permutes the weight's rows to match instead of moving
data (``compiler/ops/shape.py``, ``compiler/ops/gemm.py``). A TinyADC constraint bounds the
weights on one bit line of one of the compiler's crossbars, so for such a layer its
``out × C·H·W`` weight is read as the ``out × C × H × W`` weight of a convolution whose
kernel covers the whole map (:func:`compressor.geometry.to_crossbar`'s ``view``), whose
channel-last rows are exactly the compiler's. Read in torch's order, a TinyADC column
segment of LeNet-5's first FC layer was spread over several of the compiler's crossbars,
11 of 48 of which then needed one ADC bit more than ``n`` promised.

:func:`crossbar_views` finds those layers with torch.fx and a shape pass over one sample;
:func:`layer_views` keeps the ones whose structure needs it. A map of one pixel (global
pooling) or one channel (an image) needs no view: both orders agree.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .connectivity import through_per_neuron_ops
from .projections import PER_SEGMENT


def layer_views(model: nn.Module, layers: dict, sample: torch.Tensor | None
                ) -> dict[str, tuple[int, ...]]:
    """The views that apply: :func:`crossbar_views` of the layers (``{name: Constraint}``)
    with a per-segment (TinyADC) structure. Only there does the row order change what the
    chip needs: a group structure (rows, blocks, ...) costs the same crossbars in either
    order, because the compiler packs a column strip's nonzero rows, and in torch's order a
    block groups whole channels, which pruned better (LeNet-5's ADMM blocks, seed 0:
    validation 0.8918, against 0.8806 grouped by pixel)."""
    segmented = [n for n, c in layers.items() if c.structure in PER_SEGMENT]
    return crossbar_views(model, segmented, sample) if segmented else {}


def crossbar_views(model: nn.Module, names, sample: torch.Tensor | None
                   ) -> dict[str, tuple[int, ...]]:
    """``{name: (out, C, H, W)}`` for each ``nn.Linear`` among ``names`` whose input is a
    feature map flattened from dimension 1 (``C > 1`` channels of more than one pixel),
    through per-neuron ops only (dropout, ReLU, ...): an ``(N, C, H, W)`` tensor, or the
    ``(N, C, L)`` output of a ``Conv1d`` (view ``(out, C, L)``; the compiler stores it
    ``(1, L, C)``). ``sample``: one input batch for the shapes. ``{}`` where there is no
    sample or torch.fx cannot trace the model; then the weights are read in torch's order,
    as before."""
    names = set(names)
    modules = dict(model.named_modules())
    if sample is None or not any(isinstance(modules.get(n), nn.Linear) for n in names):
        return {}
    try:
        gm = torch.fx.symbolic_trace(model)
        was_training = [m.training for m in model.modules()]
        model.eval()      # no batch-norm statistics move, no dropout
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(sample)
        finally:
            for m, t in zip(model.modules(), was_training):
                m.training = t
    except Exception:   # untraceable (data-dependent control flow) or an odd sample
        return {}
    views = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in names \
                or not isinstance(modules[node.target], nn.Linear):
            continue
        flat = through_per_neuron_ops(node.args[0] if node.args else None, modules)
        shape = _flattened_map(flat, modules)
        # one channel or one pixel: (c, h, w) and (h, w, c) are the same order
        if shape is not None and shape[0] > 1 and math.prod(shape[1:]) > 1 \
                and math.prod(shape) == modules[node.target].in_features:
            views[node.target] = (modules[node.target].out_features, *shape)
    return views


# What a 1-D feature map passes through unchanged in kind (its channels stay channels).
_MAP_1D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
           nn.AdaptiveMaxPool1d, nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d)


def _flattened_map(node, modules) -> tuple[int, ...] | None:
    """``(C, *spatial)`` when fx ``node`` flattens a feature map ``(N, C, *spatial)`` to
    ``(N, C·prod(spatial))``: ``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``,
    ``x.view(N, -1)`` or ``x.reshape(N, -1)``. A 3-D tensor counts as a map only when a
    ``Conv1d`` computed it (a sequence's ``(N, T, F)`` is stored as it is)."""
    if not isinstance(node, torch.fx.Node) or not node.args \
            or not isinstance(node.args[0], torch.fx.Node):
        return None
    is_flatten = (
        node.op == "call_module" and isinstance(modules.get(node.target), nn.Flatten)
        or node.op == "call_function" and node.target is torch.flatten
        or node.op == "call_method" and node.target in ("flatten", "view", "reshape"))
    src, out = node.args[0].meta.get("tensor_meta"), node.meta.get("tensor_meta")
    if not is_flatten or src is None or out is None or not hasattr(src, "shape") \
            or not hasattr(out, "shape"):
        return None
    if len(src.shape) not in (3, 4) or len(out.shape) != 2 or out.shape[0] != src.shape[0]:
        return None
    if len(src.shape) == 3 and not _from_conv1d(node.args[0], modules):
        return None
    shape = tuple(int(v) for v in src.shape[1:])
    return shape if int(out.shape[1]) == math.prod(shape) else None


def _from_conv1d(node, modules) -> bool:
    """Whether fx ``node`` is a ``Conv1d``'s output, through per-neuron and 1-D map ops."""
    while isinstance(node, torch.fx.Node):
        node = through_per_neuron_ops(node, modules)
        if not isinstance(node, torch.fx.Node) or node.op != "call_module" \
                or not isinstance(modules[node.target], _MAP_1D):
            return False
        if isinstance(modules[node.target], nn.Conv1d):
            return True
        node = node.args[0]
    return False
