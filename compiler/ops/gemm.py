"""Gemm and MatMul with a constant weight -> one fully connected MVMLayer.

The input is a vector whose memory order may differ from its logical order (a flattened
feature map is stored (H, W, C)); the weight rows are permuted to match, so no data moves."""
import numpy as np

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from ._mvm import add_mvm_layer


def _fc(node, ctx, t_in, w_kn, bias, qdq=None):
    if t_in.kind == "map" and not (t_in.H == 1 and t_in.W == 1):
        raise UnsupportedOpError(f"fully connected layer on a {t_in.H}x{t_in.W} feature map "
                                 f"{t_in.name!r}; flatten it first")
    if w_kn.shape[0] != t_in.size:
        raise UnsupportedOpError(f"weight has {w_kn.shape[0]} rows, input has {t_in.size} "
                                 f"values")
    if t_in.perm is not None:
        w_kn = w_kn[t_in.perm]
        if qdq is not None:
            qdq = (qdq[0][t_in.perm], qdq[1])
    out_shape = ctx.shape(node.output[0])
    add_mvm_layer(node, ctx, t_in, w_kn, bias, out_shape, qdq=qdq)


def _activation_operand(node, ctx):
    """Input A, which must be the activation (the crossbars hold the constant B)."""
    if ctx.const(node.input[0]) is not None:
        raise UnsupportedOpError(f"{node.op_type} with a constant left operand "
                                 f"{node.input[0]!r} is not supported: the activation must "
                                 f"be input A and the constant weight input B")
    return ctx.tensor(node.input[0])


def lower_gemm(node, ctx):
    a = node_attrs(node)
    if a.get("transA", 0):
        raise UnsupportedOpError("Gemm with transA=1 is not supported")
    t_in = _activation_operand(node, ctx)
    w = ctx.const(node.input[1])
    if w is None:
        raise UnsupportedOpError("Gemm weight (input B) must be constant")
    w = np.asarray(w)             # float32 stays float32 until quantized (ImageNet FCs are
    if a.get("transB", 0):        # 100M weights: every float64 copy costs ~1 GB)
        w = w.T
    if float(a.get("alpha", 1.0)) != 1.0:
        w = np.asarray(w, np.float64) * float(a["alpha"])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2])
        if c is None:
            raise UnsupportedOpError("Gemm bias (input C) must be constant")
        bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1) * float(a.get("beta", 1.0)),
                               (w.shape[1],))
    qdq = ctx.graph.qweights.get(node.input[1])
    if qdq is not None:
        q, s, _ = qdq
        q = q.T if a.get("transB", 0) else q
        alpha = float(a.get("alpha", 1.0))
        # alpha folds into the file's integers as _scale_qweight folds a per-channel scale:
        # |alpha| into the scale, its sign into the integers (re-quantizing the float
        # product had run other weights than the file's, unsaid)
        qdq = (q * int(np.sign(alpha)), np.asarray(s, np.float64) * (abs(alpha) or 1.0))
    _fc(node, ctx, t_in, w, bias, qdq)


def lower_matmul(node, ctx):
    t_in = _activation_operand(node, ctx)
    w = ctx.const(node.input[1])
    if w is None or np.ndim(w) != 2:
        raise UnsupportedOpError("MatMul needs a constant 2-D right operand")
    if len(t_in.shape) != 2:
        raise UnsupportedOpError(f"MatMul on a {len(t_in.shape)}-D input is not supported")
    qdq = ctx.graph.qweights.get(node.input[1])
    _fc(node, ctx, t_in, np.asarray(w, np.float64), None,
        (qdq[0], qdq[1]) if qdq is not None else None)
