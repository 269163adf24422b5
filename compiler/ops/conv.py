"""Conv (1-D and 2-D; groups, depthwise, stride, padding, dilation) -> one MVMLayer.

The weight becomes a (kh*kw*C_in, C_out) matrix whose rows follow the channel-last memory
order of the input window, (ky, kx, c). Grouped and depthwise convolutions become a dense
matrix with zeros outside each group's block; the partitioner then drops, per column strip,
the rows a strip never uses, so groups cost only their own rows."""
import numpy as np

from ..errors import UnsupportedOpError
from ..ir import explicit_pads, node_attrs
from ._mvm import add_mvm_layer
from .view_copy import require_map


def lower_conv(node, ctx):
    a = node_attrs(node)
    t_in = ctx.tensor(node.input[0])
    w = ctx.const(node.input[1])
    if w is None:
        raise UnsupportedOpError("Conv weights must be constant")
    if w.ndim not in (3, 4):
        raise UnsupportedOpError(f"only 1-D and 2-D convolutions are supported "
                                 f"(weight rank {w.ndim})")
    require_map("Conv", t_in)
    if ctx.prog.tensors[ctx.prog.storage(t_in.name)].kind != "map":
        # a vector viewed as a 1x1 map (Reshape to (1, F, 1, 1)): its words are not laid
        # out as a padded map, which the convolution's windows walk
        raise UnsupportedOpError(f"Conv on {t_in.name!r}, a vector reshaped to a 1x1 map, is "
                                 f"not supported; a 1x1 convolution of it is a Gemm/MatMul "
                                 f"on the vector")
    one_d = w.ndim == 3
    a = explicit_pads(a, w.shape[2:], [t_in.W] if one_d else [t_in.H, t_in.W])
    if one_d:
        w = w[:, :, None, :]
    cout, cin_g, kh, kw = w.shape
    groups = int(a.get("group", 1))
    strides = list(a.get("strides", [1] * (2 - one_d)))
    dil = list(a.get("dilations", [1] * (2 - one_d)))
    pads = list(a.get("pads", [0] * (4 - 2 * one_d)))
    if one_d:
        strides, dil = [1] + strides, [1] + dil
        pads = [0, pads[0], 0, pads[1]]
    else:
        pads = [pads[0], pads[1], pads[2], pads[3]]
    C = t_in.C
    if cin_g * groups != C:
        raise UnsupportedOpError(f"weight expects {cin_g * groups} input channels, "
                                 f"input has {C}")
    full = _rows(w, groups, C, t_in.cperm)
    has_bias = len(node.input) > 2 and node.input[2]
    bias = ctx.const(node.input[2]) if has_bias else None
    if has_bias and bias is None:
        raise UnsupportedOpError(f"Conv bias {node.input[2]!r} must be constant (it is "
                                 f"computed in the graph)")
    out_shape = ctx.shape(node.output[0])
    Ho, Wo = (1, out_shape[2]) if one_d else (out_shape[2], out_shape[3])
    ctx.require_pad(t_in.name, (pads[0], pads[1], pads[2], pads[3]), 0)
    qdq = ctx.graph.qweights.get(node.input[1])
    qdq_rows = None
    if qdq is not None:
        # the exported integers, laid out exactly as the float weight is (1-D and grouped
        # convolutions included: re-quantizing them would drop the compressed levels)
        q, s, _ = qdq
        q = np.asarray(q).reshape(w.shape)
        qdq_rows = (_rows(q, groups, C, t_in.cperm).astype(np.int64), s)
    add_mvm_layer(node, ctx, t_in, full, bias, out_shape, qdq=qdq_rows,
                  kh=kh, kw=kw, stride=(strides[0], strides[1]),
                  dilation=(dil[0], dil[1]), conv_pad=tuple(pads), Ho=Ho, Wo=Wo,
                  is_conv=True)


def _rows(w: np.ndarray, groups: int, C: int, cperm) -> np.ndarray:
    """(kh*kw*C_in, C_out) matrix of a (C_out, C_in/groups, kh, kw) weight: each group's block
    on the diagonal, rows in the input window's (ky, kx, c) memory order (a shuffled input:
    its stored channel order)."""
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    full = np.zeros((kh, kw, C, cout), w.dtype)
    for g in range(groups):
        blk = w[g * cout_g:(g + 1) * cout_g]                  # (cout_g, cin_g, kh, kw)
        full[:, :, g * cin_g:(g + 1) * cin_g, g * cout_g:(g + 1) * cout_g] = \
            np.transpose(blk, (2, 3, 1, 0))
    if cperm is not None:
        full = full[:, :, cperm, :]
    return full.reshape(-1, cout)
