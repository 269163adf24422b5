"""Transpose, and the channel shuffle Reshape -> Transpose -> Reshape (ShuffleNet).

A vector is a list of words with a memory-to-logical ``perm``, so transposing one moves no
data: the output aliases the input with a new ``perm``. A feature map is first viewed as
its (H, W, C) words (like Flatten), so the result is a vector.

The channel shuffle's 5-D intermediates never exist: at the first Reshape the whole
pattern is recognised and its net effect computed by index arithmetic; it must be a pure
permutation of channels. If every consumer is a Conv, the output aliases the input with a
channel permutation (``TensorInfo.cperm``) and the Convs permute their weight rows — no
data moves. Otherwise a VFU layer copies each pixel's channels into the new order.
"""
from dataclasses import dataclass

import numpy as np
from onnx import helper

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..vfu import CHUNK, VFULayer, chunk_list
from .shape import AliasLayer


def _perm_attr(node, rank):
    p = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), None)
    return list(range(rank))[::-1] if p is None else [int(v) for v in p]


def _memory_logical(ctx, t) -> np.ndarray:
    """Logical (C-order) index of each memory word of an unpadded map or a vector."""
    if t.kind == "vec":
        return t.perm if t.perm is not None else np.arange(t.F)
    if t.cperm is not None:
        raise UnsupportedOpError("transposing a channel-permuted map is not supported")
    ctx.flattened.add(ctx.prog.storage(t.name))
    return np.arange(t.C * t.H * t.W).reshape(t.C, t.H, t.W).transpose(1, 2, 0).reshape(-1)


def lower_transpose(node, ctx):
    t = ctx.tensor(node.input[0])
    shape = tuple(t.shape)
    perm = _perm_attr(node, len(shape))
    out_shape = ctx.shape(node.output[0])
    if perm == list(range(len(shape))):
        o = ctx.new_tensor(node.output[0], out_shape, t.scale, alias_of=t.name, perm=t.perm,
                           as_map=t.kind == "map")
        o.cperm, o.pad = t.cperm, t.pad
    else:
        # out logical j holds in logical src[j]; memory word i holds in logical mem[i].
        src = np.arange(int(np.prod(shape))).reshape(shape).transpose(perm).reshape(-1)
        inv = np.empty_like(src)
        inv[src] = np.arange(len(src))
        order = inv[_memory_logical(ctx, t)]
        # NCHW -> NHWC of a map (or (1, C, L) -> (1, L, C)) is its channel-last memory as
        # stored: no order to record, so ops that need plain order take it
        identity = np.array_equal(order, np.arange(len(order)))
        o = ctx.new_tensor(node.output[0], out_shape, t.scale, alias_of=t.name,
                           perm=None if identity else order, as_map=False)
    if t.name in ctx.nonneg:
        ctx.nonneg.add(o.name)
    ctx.add(AliasLayer(node.name, "Transpose", [t.name], o.name, node=node.name))


# ---- channel shuffle ---------------------------------------------------------------------

@dataclass
class ChannelPermuteLayer(VFULayer):
    """Per pixel: out word k <- in word src[k] (load the pixel, copy runs, store)."""

    src: np.ndarray = None

    def _runs(self):
        s, out, k0 = self.src, [], 0
        for k in range(1, len(s) + 1):
            if k == len(s) or s[k] != s[k - 1] + 1:
                out.append((k0, int(s[k0]), k - k0))
                k0 = k
        return out

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        t = tensors[self.inputs[0]]
        em.reset_gp()
        a = em.gp(t.C)
        b = em.gp(CHUNK)
        for c0, n in chunk_list(t.C):
            em.emit(Op.LOAD, dst=a + c0, imm=c0, ra=ptr[t.name].ireg, vec=n, layer=layer)
        runs = self._runs()
        for c0, n in self.chunks(tensors):
            for k0, s0, m in runs:                 # the parts of runs inside this chunk
                lo, hi = max(k0, c0), min(k0 + m, c0 + n)
                if lo < hi:
                    em.emit(Op.COPY, dst=b + lo - c0, src1=a + s0 + lo - k0, vec=hi - lo,
                            layer=layer)
            em.emit(Op.STORE, src1=b, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t = tensors[self.inputs[0]]
        B = ins[0].shape[0]
        return ins[0].reshape(B, -1, t.C)[:, :, self.src].reshape(B, -1)


def match_channel_shuffle(node, ctx) -> bool:
    """Lower Reshape -> Transpose -> Reshape that only permutes a map's channels, starting
    at the first Reshape ``node``; False (nothing done) if the pattern is not there."""
    t = ctx.prog.tensors.get(node.input[0])
    if t is None or t.kind != "map" or ctx.is_graph_output(node.output[0]):
        return False
    tr = ctx.sole_consumer(node.output[0], ("Transpose",))
    if tr is None:
        return False
    r2 = ctx.sole_consumer(tr.output[0], ("Reshape", "Flatten"))
    if r2 is None or r2.op_type != "Reshape":
        return False
    mid, mid_t = ctx.shape(node.output[0]), ctx.shape(tr.output[0])
    if tuple(ctx.shape(r2.output[0])) != tuple(t.shape) or len(t.shape) != 4:
        return False
    C, H, W = t.C, t.H, t.W
    net = (np.arange(C * H * W).reshape(mid).transpose(_perm_attr(tr, len(mid)))
           .reshape(mid_t).reshape(C, H * W))
    q = net[:, 0] // (H * W)                         # out channel c <- in channel q[c]
    if not np.array_equal(net, q[:, None] * (H * W) + np.arange(H * W)[None, :]):
        return False                                 # spatial positions move: not a shuffle
    ctx.skip.update({tr.name, r2.name})
    out = r2.output[0]
    q_stored = q if t.cperm is None else np.argsort(t.cperm)[q]   # stored in channel
    consumers = ctx.consumers(out)
    if consumers and all(c.op_type == "Conv" and c.input[0] == out for c in consumers) \
            and not ctx.is_graph_output(out):
        o = ctx.new_tensor(out, t.shape, t.scale, alias_of=t.name)
        o.cperm = np.argsort(q)[t.cperm] if t.cperm is not None else np.argsort(q)
        o.pad = t.pad
        if np.array_equal(o.cperm, np.arange(C)):
            o.cperm = None
        ctx.add(AliasLayer(node.name, "ChannelShuffle", [t.name], out, node=node.name))
    else:
        ctx.new_tensor(out, t.shape, t.scale)
        ctx.add(ChannelPermuteLayer(node.name, "ChannelShuffle", [t.name], out,
                                    node=node.name, src=q_stored))
    if t.name in ctx.nonneg:
        ctx.nonneg.add(out)
    return True
