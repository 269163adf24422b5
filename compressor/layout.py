"""Where a layer's inputs lie on the chip, when that is not the order of its weight's columns.

The compiler stores a feature map channel-last, ``(H, W, C)``. A fully connected layer after
``Flatten`` of a ``C × H × W`` map therefore reads its inputs in ``(h, w, c)`` order, not
torch's ``(c, h, w)``: the compiler permutes the weight's rows to match instead of moving
data (``compiler/ops/shape.py``, ``compiler/ops/gemm.py``). A TinyADC constraint bounds the
weights on one bit line of one of the compiler's crossbars (and a crossbar-aligned row strip
is a run of inputs the chip fetches), so for such a layer its
``out × C·H·W`` weight is read as the ``out × C × H × W`` weight of a convolution whose
kernel covers the whole map (:func:`compressor.geometry.to_crossbar`'s ``view``), whose
channel-last rows are exactly the compiler's. Read in torch's order, a TinyADC column
segment of LeNet-5's first FC layer was spread over several of the compiler's crossbars,
11 of 48 of which then needed one ADC bit more than ``n`` promised.

:func:`crossbar_views` finds those layers with torch.fx and a shape pass over one sample;
:func:`layer_views` keeps the ones whose structure needs it. A map of one pixel (global
pooling) or one channel (an image) needs no view: both orders agree. A tensor is taken for a
map only where it provably is one (a convolution's or pooling's output, or the image, through
ops that keep it a map); after a ``permute`` or ``transpose`` the compiler stores the words
as they are, and no view is used.
"""
from __future__ import annotations

import math
import operator
import warnings

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from simulator.errors import first_line

from .connectivity import PER_NEURON_FUNCTIONS, PER_NEURON_MODULES, evaluating, reshapes
from .projections import PER_SEGMENT

#: Structures whose promise depends on which inputs share a crossbar in the chip's order:
#: TinyADC's bound per bit line, and crossbar-aligned row strips (inputs fetched in runs).
ORDERED = PER_SEGMENT + ("aligned_rows",)


def layer_views(model: nn.Module, layers: dict, sample: torch.Tensor | None
                ) -> dict[str, tuple[int, ...]]:
    """The views that apply: :func:`crossbar_views` of the layers (``{name: Constraint}``)
    with an :data:`ORDERED` structure. The other group structures (rows, columns, blocks)
    cost the same crossbars in either order, because the compiler packs a column strip's
    nonzero rows, and in torch's order a block groups whole channels, which pruned better
    (LeNet-5's ADMM blocks, seed 0: validation 0.8918, against 0.8806 grouped by pixel);
    their kept rows are then fetched in more, shorter runs."""
    ordered = [n for n, c in layers.items() if c.structure in ORDERED]
    return crossbar_views(model, ordered, sample) if ordered else {}


def crossbar_views(model: nn.Module, names, sample: torch.Tensor | None
                   ) -> dict[str, tuple[int, ...]]:
    """``{name: (out, C, H, W)}`` for each ``nn.Linear`` among ``names`` whose input is a
    feature map flattened from dimension 1 (``C > 1`` channels of more than one pixel),
    through ops that keep its shape and order: an ``(N, C, H, W)`` map, or a 1-D
    convolution's ``(N, C, L)``
    (view ``(out, C, L)``; the compiler stores it ``(1, L, C)``). ``sample``: one input
    batch for the shapes. ``{}`` without a sample; ``{}`` where torch.fx cannot trace the
    model (the weights are then read in torch's order), with a warning if it has
    convolutions."""
    names = set(names)
    modules = dict(model.named_modules())
    if sample is None or not any(isinstance(modules.get(n), nn.Linear) for n in names):
        return {}
    try:
        with evaluating(model), torch.no_grad():   # no batch-norm statistics move, no dropout
            gm = torch.fx.symbolic_trace(model)
            ShapeProp(gm).propagate(sample)
    except Exception as e:   # untraceable (data-dependent control flow) or an odd sample
        if not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()):
            return {}        # no feature map to flatten (a recurrent model, say): no doubt
        warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({first_line(e)}): "
                      f"{', '.join(sorted(names))} constrained in torch's input order, which "
                      f"the chip's crossbars do not share after a flattened feature map",
                      stacklevel=2)
        return {}
    views = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in names \
                or not isinstance(modules[node.target], nn.Linear):
            continue
        try:
            shape = _flattened_map(_through_same_order(node.args[0] if node.args else None,
                                                       modules), modules)
        except _OrderUnknown as e:
            warnings.warn(f"{node.target}: its inputs pass {e} before the flatten; the "
                          f"chip's order of its rows is not derived, so it is constrained in "
                          f"torch's order", stacklevel=2)
            continue
        # one channel or one pixel: (c, h, w) and (h, w, c) are the same order
        if shape is not None and shape[0] > 1 and math.prod(shape[1:]) > 1 \
                and math.prod(shape) == modules[node.target].in_features:
            views[node.target] = (modules[node.target].out_features, *shape)
    return views


# Ops whose output keeps a map a map, in the compiler's layout: the node it is computed
# from is args[0] (the first tensor of a cat).
_MAP_KEEPING_MODULES = PER_NEURON_MODULES + (
    nn.BatchNorm2d, nn.BatchNorm1d, nn.Dropout1d, nn.Dropout2d, nn.ZeroPad2d, nn.ConstantPad2d,
    nn.ConstantPad1d, nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d,
    nn.LocalResponseNorm)
_MAP_KEEPING_FUNCTIONS = PER_NEURON_FUNCTIONS | {operator.add, torch.add, torch.cat,
                                                 nn.functional.pad}
# Ops whose output is a map of their own (2-D, or 1-D when the tensor is 3-D).
_MAP_MAKING_MODULES = (nn.Conv2d, nn.Conv1d, nn.MaxPool2d, nn.MaxPool1d, nn.AvgPool2d,
                       nn.AvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d,
                       nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool1d)
_MAP_MAKING_FUNCTIONS = {nn.functional.conv2d, nn.functional.conv1d, nn.functional.max_pool2d,
                         nn.functional.max_pool1d, nn.functional.avg_pool2d,
                         nn.functional.avg_pool1d, nn.functional.adaptive_avg_pool2d,
                         nn.functional.adaptive_avg_pool1d, nn.functional.adaptive_max_pool2d,
                         nn.functional.adaptive_max_pool1d, torch.max_pool2d, torch.avg_pool1d,
                         torch.max_pool1d, torch.conv2d, torch.conv1d}


def _flattened_map(node, modules) -> tuple[int, ...] | None:
    """``(C, *spatial)`` when fx ``node`` flattens a feature map ``(N, C, *spatial)`` into
    ``(N, C·prod(spatial))``: a flatten, view or reshape whose output is 2-D with the batch
    first (``x.view(-1, 400)``, ``nn.Flatten(1, 3)``, ... as well as ``nn.Flatten()``)."""
    if not isinstance(node, torch.fx.Node) or not node.args \
            or not isinstance(node.args[0], torch.fx.Node):
        return None
    src, out = node.args[0].meta.get("tensor_meta"), node.meta.get("tensor_meta")
    if not reshapes(node, modules) or src is None or out is None or not hasattr(src, "shape") \
            or not hasattr(out, "shape"):
        return None
    if len(src.shape) not in (3, 4) or len(out.shape) != 2 or out.shape[0] != src.shape[0]:
        return None
    if not _is_map(node.args[0], modules, rank=len(src.shape)):
        return None
    shape = tuple(int(v) for v in src.shape[1:])
    return shape if int(out.shape[1]) == math.prod(shape) else None


def _is_map(node, modules, rank: int) -> bool:
    """Whether fx ``node`` is a feature map the compiler stores channel-last: computed by a
    convolution or pooling through ops that keep maps, or the model's input, whose 4-D
    ``(N, C, H, W)`` and 3-D ``(N, C, L)`` forms the compiler stores as maps alike
    (``compiler.lower.LowerContext.new_tensor``): a sequence ``(N, T, F)`` too, as ``(F,
    T)``. Every op that keeps its input's shape and order keeps a map a map there
    (PReLU, ``x * 0.5``, SiLU...: the compiler lowers them in place), not only a list."""
    while isinstance(node, torch.fx.Node):
        if node.op == "placeholder":
            return rank in (3, 4)
        if node.op == "call_module" and isinstance(modules[node.target], _MAP_MAKING_MODULES) \
                or node.op == "call_function" and node.target in _MAP_MAKING_FUNCTIONS:
            return True
        keeps = (node.op == "call_module"
                 and isinstance(modules[node.target], _MAP_KEEPING_MODULES)
                 or node.op == "call_function" and node.target in _MAP_KEEPING_FUNCTIONS
                 or node.op == "call_method" and node.target in ("relu", "contiguous", "add"))
        if keeps and node.args:
            first = node.args[0]
            node = first[0] if isinstance(first, (list, tuple)) and first else first
            continue
        if _reorders(node):
            perm = _permutation(node, rank)
            if perm in ((0, 2, 3, 1), (0, 2, 1)):
                return False      # to channel-last: the compiler's words, in torch's order
            raise _OrderUnknown(f"a {node.target if isinstance(node.target, str) else ''}"
                                f"{getattr(node.target, '__name__', '')} "
                                f"{'' if perm is None else list(perm)}".rstrip())
        nxt = _same_order_source(node, modules)
        if nxt is None:
            out = node.meta.get("tensor_meta")
            if node.op in ("call_module", "call_function", "call_method") \
                    and len(getattr(out, "shape", ())) in (3, 4):
                # a map-shaped op the walk does not know (a new padding or pooling): the
                # chip may well store it channel-last; say so rather than assume torch's
                what = (type(modules[node.target]).__name__ if node.op == "call_module"
                        else _name(node))
                raise _OrderUnknown(f"a {what}, an op whose output order is not known here")
            return False
        node = nxt
    return False


class _OrderUnknown(Exception):
    """A map reaches the flatten through a reordering the view cannot state."""


def _reorders(node) -> bool:
    return node.op in ("call_function", "call_method") and _name(node) in _REORDERING


def _name(node) -> str:
    t = node.target
    return (t if isinstance(t, str) else getattr(t, "__name__", "")).lower().lstrip("_")


def _permutation(node, rank: int) -> tuple[int, ...] | None:
    """The axis order a ``permute`` or ``transpose`` node gives a ``rank``-D tensor (None:
    another reordering, or arguments that are not plain integers)."""
    args = [a for a in node.args[1:]]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    if not all(isinstance(a, int) for a in args):
        return None
    args = [a % rank for a in args]
    if _name(node) == "permute" and sorted(args) == list(range(rank)):
        return tuple(args)
    if _name(node) in ("transpose", "swapaxes", "swapdims") and len(args) == 2:
        perm = list(range(rank))
        perm[args[0]], perm[args[1]] = perm[args[1]], perm[args[0]]
        return tuple(perm)
    return None


#: Ops that keep a tensor's shape but not its words' order, or mix positions: a map read
#: through them is not the map the compiler stored.
_REORDERING = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "flip",
               "fliplr", "flipud", "roll", "rot90", "t", "matmul", "bmm", "mm", "einsum",
               "linear", "conv_transpose2d", "conv_transpose1d", "unfold", "fold"}


def _same_order_source(node, modules):
    """The fx node ``node`` computes its output from element for element in the same
    order and shape (an activation, a scaling, a normalisation: what the compiler lowers in
    place), or None: a shape change, a reordering (:data:`_REORDERING`), a module that mixes
    positions (a Linear, a convolution, an attention), or no such input."""
    if node.op == "call_module":
        if not isinstance(modules[node.target], _MAP_KEEPING_MODULES + _SAME_ORDER_MODULES):
            return None
    elif node.op in ("call_function", "call_method"):
        if _reorders(node):
            return None
    else:
        return None
    out = node.meta.get("tensor_meta")
    for a in node.args:
        meta = a.meta.get("tensor_meta") if isinstance(a, torch.fx.Node) else None
        if meta is not None and out is not None and hasattr(meta, "shape") \
                and hasattr(out, "shape") and tuple(meta.shape) == tuple(out.shape):
            return a
    return None


#: Modules that keep a tensor's order, beyond those that keep a map a map (a padding there
#: changes the shape, which the caller's shape check refuses).
_SAME_ORDER_MODULES = (nn.PReLU, nn.SELU, nn.CELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid,
                       nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Threshold,
                       nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.Softmax2d,
                       nn.AlphaDropout)


def _through_same_order(node, modules):
    """``node`` followed back through ops that keep their input's shape and order
    (:func:`_same_order_source`), to the first that does not (a flatten, say)."""
    while isinstance(node, torch.fx.Node):
        nxt = _same_order_source(node, modules)
        if nxt is None:
            return node
        node = nxt
    return node
