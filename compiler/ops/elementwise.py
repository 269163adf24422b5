"""Add, Sub, Sum of tensors (rescaled to the output's scale and summed on the VFU), and
Add / Sub / Mul / Div with a constant (a per-channel affine map on the VFU)."""
import numpy as np

from ..errors import UnsupportedOpError
from ..ir import multiplier, rescale_multiplier_bits
from ..vfu import AffineLayer, WeightedSumLayer


def lower_add(node, ctx):
    """Add, Sub (two operands) and Sum (any number)."""
    consts = [ctx.const(i) for i in node.input]
    if any(c is not None for c in consts):
        if len(node.input) != 2:
            raise UnsupportedOpError("Sum with constant operands is not supported")
        k = 0 if consts[0] is not None else 1
        t_in = ctx.tensor(node.input[1 - k])
        c = np.asarray(consts[k], np.float64)
        if node.op_type == "Sub":
            sign_x, b = (1.0, -c) if k == 1 else (-1.0, c)
        else:
            sign_x, b = 1.0, c
        return add_affine(node, ctx, t_in, sign_x, b)
    ts = [ctx.tensor(i) for i in node.input]
    shape = ctx.shape(node.output[0])
    for t in ts:
        if tuple(t.shape) != tuple(shape):
            raise UnsupportedOpError(f"broadcasting {t.shape} to {shape} is not supported")
        if t.kind != ts[0].kind:
            # a map is stored (H, W, C), a vector in logical order: words would not pair
            raise UnsupportedOpError(
                f"operands {ts[0].name!r} ({ts[0].kind}) and {t.name!r} ({t.kind}) are "
                f"stored in different memory orders; both must be feature maps or vectors")
    # A ReLU that alone reads the sum runs in the same loop (as after a convolution): a
    # residual block's Add + ReLU is one VFU layer, one pass over the map, one core.
    relu = ctx.sole_consumer(node.output[0], ("Relu",))
    out_name = node.output[0] if relu is None else relu.output[0]
    s_y = ctx.scale_for(out_name)
    signs = [1.0] * len(ts)
    if node.op_type == "Sub":
        signs[1] = -1.0
    mults, shift = multiplier(np.array([sg * t.scale / s_y for sg, t in zip(signs, ts)]),
                              rescale_multiplier_bits(ctx.bits, len(ts)))
    out = ctx.new_tensor(out_name, shape, s_y, perm=ts[0].perm,
                         as_map=ts[0].kind == "map")
    if relu is not None:
        ctx.skip.add(relu.name)
        ctx.nonneg.add(out_name)
    for t in ts[1:]:
        if (t.perm is None) != (ts[0].perm is None) or (
                t.perm is not None and not np.array_equal(t.perm, ts[0].perm)):
            raise UnsupportedOpError("operands stored in different memory orders")
    ctx.add(WeightedSumLayer(node.name, node.op_type, [t.name for t in ts], out.name,
                             node=node.name, mults=[int(m) for m in mults], shift=shift,
                             bits=ctx.bits, relu=relu is not None))


def per_channel(ctx, t, c: np.ndarray) -> np.ndarray:
    """Broadcast a constant against tensor ``t`` to one value per stored channel/word."""
    c = np.asarray(c, np.float64)
    if c.ndim > len(t.shape):
        raise UnsupportedOpError(f"constant of shape {c.shape} has more axes than "
                                 f"{t.shape}: it would raise the result's rank")
    if c.size == 1:
        n = t.C if t.kind == "map" else t.F
        return np.full(n, float(c.reshape(())))
    if t.kind == "map":
        # ONNX broadcasts from the right: (C,) on (1, C, H, W) runs along W, so only a
        # constant whose one non-1 axis is the channel axis is per channel
        rank = len(t.shape)
        full = c.reshape((1,) * max(rank - c.ndim, 0) + c.shape)
        if (full.ndim == rank and full.shape[1] == t.C
                and all(s == 1 for i, s in enumerate(full.shape) if i != 1)):
            flat = full.reshape(-1)
            return flat[t.cperm] if t.cperm is not None else flat
        raise UnsupportedOpError(f"constant of shape {c.shape} is not per-channel for "
                                 f"{t.shape} (one value, or C values along axis 1: "
                                 f"(C, 1, ...) or (1, C, 1, ...) with the map's rank)")
    try:
        fits = np.broadcast_shapes(c.shape, tuple(t.shape)) == tuple(t.shape)
    except ValueError:
        fits = False
    if not fits:
        raise UnsupportedOpError(f"constant of shape {c.shape} does not broadcast to "
                                 f"{tuple(t.shape)}, the tensor it meets; the result must keep "
                                 f"that shape (each constant axis 1 or the tensor's)")
    full = np.broadcast_to(c, t.shape).reshape(-1)
    return full[t.perm] if t.perm is not None else full.copy()


def add_affine(node, ctx, t_in, k, b, out_name=None):
    """y = x * k + b with k, b scalars or per-channel constants."""
    out_name = out_name or node.output[0]
    kv = per_channel(ctx, t_in, k)
    bv = per_channel(ctx, t_in, b)
    s_y = ctx.scale_for(out_name)
    M, shift = multiplier(kv * t_in.scale / s_y, rescale_multiplier_bits(ctx.bits))
    # The constant rides at the multiplier's shift; a tiny factor (a large shift) must not
    # push it past int64: cap the shift there (that factor then rounds to fewer bits).
    top = float(np.abs(bv / s_y).max(initial=0.0))
    if top > 0 and top * 2.0 ** shift >= 2.0 ** 61:
        shift = max(int(np.floor(61 - np.log2(top))), 0)
        M = np.rint(kv * t_in.scale / s_y * 2.0 ** shift).astype(np.int64)
    Bv = np.rint(bv / s_y * (2.0 ** shift)).astype(np.int64)
    out = ctx.new_tensor(out_name, ctx.shape(out_name), s_y, perm=t_in.perm,
                         as_map=t_in.kind == "map")
    ctx.add(AffineLayer(node.name, node.op_type, [t_in.name], out.name, node=node.name,
                        M=M, Bv=Bv, shift=shift, bits=ctx.bits))
