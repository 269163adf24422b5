"""QuantizeLinear / DequantizeLinear on activations (QDQ weights are taken apart by the
frontend and never reach lowering).

The frontend fixes a Q node's input to the Q's scale s (``Graph.act_scales``), so a Q -> DQ
pair is the identity at scale s, saturated to the quantized range: one ClampLayer. A lone Q
stores the integers q themselves (scale 1); a lone DQ turns them back into (q - zp) at s.
"""
import numpy as np

from onnx import helper

from ..errors import UnsupportedOpError
from ..ir import node_attrs, quantized_elem_type
from ._fixed import ratio
from .clip import ClampLayer


def _zero_point(ctx, node):
    """A Q/DQ node's constant zero point; None without one (or if it is not constant)."""
    return ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None


def _qparams(node, ctx):
    """(scale, zero point, qmin, qmax) of a Q or DQ node with per-tensor parameters."""
    s = ctx.const(node.input[1])
    if s is None or np.size(s) != 1:
        raise UnsupportedOpError(f"{node.op_type} on an activation needs one constant scale "
                                 f"(per-axis or computed scales are not supported)")
    zp = _zero_point(ctx, node)
    if len(node.input) > 2 and node.input[2] and zp is None:
        raise UnsupportedOpError(f"{node.op_type} zero point must be a constant")
    if zp is not None and np.size(zp) != 1:
        raise UnsupportedOpError(f"{node.op_type}: per-axis zero points are not supported")
    src = node
    if node.op_type == "DequantizeLinear" and zp is None:
        # without a zero point a DQ reads its input's type: that of the Q producing it
        src = next((n for n in ctx.graph.nodes if n.op_type == "QuantizeLinear"
                    and node.input[0] in n.output), None)
    if src is None:
        dtype = np.dtype(np.uint8)
    else:
        zp_src = zp if src is node else _zero_point(ctx, src)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(quantized_elem_type(src, zp_src)))
    if not np.issubdtype(dtype, np.integer):
        raise UnsupportedOpError(f"{node.op_type} with {dtype} values is not supported")
    info = np.iinfo(dtype)
    z = 0 if zp is None else int(np.asarray(zp).reshape(()))
    return float(np.asarray(s).reshape(())), z, int(info.min), int(info.max)


def _out(ctx, name, t_in, scale):
    return ctx.new_tensor(name, ctx.shape(name), scale, perm=t_in.perm,
                          as_map=t_in.kind == "map")


def lower_quantize(node, ctx):
    t_in = ctx.tensor(node.input[0])
    s, z, qmin, qmax = _qparams(node, ctx)
    m, sh = ratio(t_in.scale / s)
    dq = ctx.sole_consumer(node.output[0], ("DequantizeLinear",))
    if dq is not None and _qparams(dq, ctx) == (s, z, qmin, qmax):
        # Q -> DQ: the identity at scale s, saturated to what q can hold.
        # The output word holds q - z itself: clamping to a narrower word would clip silently.
        _check_fits(ctx, qmin - z, qmax - z,
                    f"QuantizeLinear -> DequantizeLinear {dq.name!r}: q - zero_point in")
        ctx.skip.add(dq.name)
        out = _out(ctx, dq.output[0], t_in, s)
        if qmin - z >= 0:
            ctx.nonneg.add(out.name)
        ctx.add(ClampLayer(node.name, "QuantizeLinear", [t_in.name], out.name,
                           node=node.name, mult=m, shift=sh, lo=qmin - z, hi=qmax - z))
        return
    _check_fits(ctx, qmin, qmax, "QuantizeLinear to")
    out = _out(ctx, node.output[0], t_in, 1.0)
    ctx.add(ClampLayer(node.name, "QuantizeLinear", [t_in.name], out.name, node=node.name,
                       mult=m, shift=sh, add_after=z, lo=qmin, hi=qmax))


def lower_dequantize(node, ctx):
    t_in = ctx.tensor(node.input[0])
    s, z, _, _ = _qparams(node, ctx)
    a = node_attrs(node)
    if a.get("block_size", 0):
        raise UnsupportedOpError("blocked DequantizeLinear is not supported")
    # y = (x - z) * s at scale s, where x's real value is its integer times t_in.scale.
    m, sh = ratio(t_in.scale)
    out = _out(ctx, node.output[0], t_in, s)
    lim = -_lowest(ctx)
    ctx.add(ClampLayer(node.name, "DequantizeLinear", [t_in.name], out.name, node=node.name,
                       mult=m, add=-(z << sh), shift=sh, lo=-lim, hi=lim - 1))


def _lowest(ctx) -> int:
    return -(1 << (ctx.bits - 1))


def _check_fits(ctx, lo: int, hi: int, what: str) -> None:
    """Refuse integers [lo, hi] that the machine's signed words cannot hold."""
    if lo < _lowest(ctx) or hi > -_lowest(ctx) - 1:
        raise UnsupportedOpError(f"{what} [{lo}, {hi}] does not fit {ctx.bits}-bit words "
                                 f"[{_lowest(ctx)}, {-_lowest(ctx) - 1}]; a larger input_bits "
                                 f"holds it")
