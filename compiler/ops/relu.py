"""Relu on its own (when not fused into the layer before it): same scale, max(x, 0)."""
from ..vfu import ReluLayer


def lower_relu(node, ctx):
    t_in = ctx.tensor(node.input[0])
    ctx.new_tensor(node.output[0], t_in.shape, t_in.scale, perm=t_in.perm,
                   as_map=t_in.kind == "map")
    ctx.nonneg.add(node.output[0])
    ctx.add(ReluLayer(node.name, "Relu", [t_in.name], node.output[0], node=node.name))
