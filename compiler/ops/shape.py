"""Ops that move no data: the output shares the input's memory (an alias)."""
import numpy as np

from ..errors import UnsupportedOpError
from ..frontend import dropout_training
from ..ir import Layer
from .view_copy import geometry, lower_map_view_copy


class AliasLayer(Layer):
    """No code: ``output`` is a different logical view of ``inputs[0]``'s memory."""

    kind = "alias"

    def reference(self, ins, tensors):
        return ins[0].reshape(ins[0].shape[0], -1)


def _alias(node, ctx, out_shape):
    src = ctx.tensor(node.input[0])
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) >= 3 and src.kind == "map" and (
            tuple(src.shape) == out_shape or geometry(out_shape) == (src.C, src.H, src.W)):
        # Same map geometry, e.g. (1, C, L) <-> (1, C, 1, L).
        t = ctx.new_tensor(node.output[0], out_shape, src.scale, alias_of=src.name)
        t.pad, t.cperm = src.pad, src.cperm
    elif src.kind == "map" and len(out_shape) <= 2:
        # Flatten / reshape a map to a vector: memory stays (H, W, C); record the order.
        C, H, W = src.C, src.H, src.W
        hwc = np.arange(C * H * W).reshape(C, H, W).transpose(1, 2, 0).reshape(-1)
        ctx.flattened.add(src.name)
        # one pixel or one channel: (H, W, C) is the logical order, no permutation
        t = ctx.new_tensor(node.output[0], out_shape, src.scale, alias_of=src.name,
                           perm=None if H * W == 1 or C == 1 else hwc)
    elif src.kind == "map" and geometry(out_shape) is not None:
        return lower_map_view_copy(node, ctx, src, out_shape)   # e.g. (1, C, L, 1)
    elif src.kind == "vec" and (len(out_shape) <= 2 or np.prod(out_shape[2:]) == 1
                                or len(out_shape) == 3):
        if len(out_shape) >= 3 and out_shape[0] == 1 and np.prod(out_shape[2:]) == 1:
            # (1, F) -> (1, F, 1, 1): a 1x1 map, same memory -- only if the words are in
            # logical order (a flattened map's are (H, W, C); as channels they would be
            # read shuffled)
            if src.perm is not None:
                raise UnsupportedOpError(
                    f"reshape of {src.name!r} {src.shape} to {out_shape}: its words are "
                    f"stored in another order (a flattened map's (H, W, C)), so as channels "
                    f"they would be shuffled; only vectors in logical order become 1x1 maps")
            t = ctx.new_tensor(node.output[0], out_shape, src.scale, alias_of=src.name)
        else:
            t = ctx.new_tensor(node.output[0], out_shape, src.scale, alias_of=src.name,
                               perm=src.perm, as_map=False)
    else:
        raise UnsupportedOpError(
            f"reshape of a {src.kind} {src.shape} to {out_shape} is not supported; allowed: a "
            f"map to a vector or to a map of the same channels and pixels, a vector to a "
            f"vector or to a one-pixel map (1, F, 1, 1) or (1, F, 1)")
    ctx.add(AliasLayer(node.name, node.op_type, [src.name], t.name, node=node.name))


def lower_flatten(node, ctx):
    _alias(node, ctx, ctx.shape(node.output[0]))


def lower_reshape(node, ctx):
    from .transpose import match_channel_shuffle   # (imports this module)
    if node.op_type == "Reshape" and match_channel_shuffle(node, ctx):
        return
    _alias(node, ctx, ctx.shape(node.output[0]))


def lower_identity(node, ctx):
    """Dropout (inference) and Identity."""
    if node.op_type == "Dropout":
        if dropout_training(node, ctx.graph.consts):
            raise UnsupportedOpError("Dropout with training_mode true (or computed) drops at "
                                     "random; only inference (training_mode false) is "
                                     "supported")
        if len(node.output) > 1 and node.output[1] and (
                ctx.consumers(node.output[1]) or ctx.is_graph_output(node.output[1])):
            raise UnsupportedOpError("Dropout's mask output is not supported")
    src = ctx.tensor(node.input[0])
    t = ctx.new_tensor(node.output[0], src.shape, src.scale, alias_of=src.name,
                       perm=src.perm, as_map=src.kind == "map")
    t.pad = src.pad
    ctx.add(AliasLayer(node.name, node.op_type, [src.name], t.name, node=node.name))
