"""Softmax and LogSoftmax on the VFU.

The reduced elements of one softmax are a *segment* of N contiguous memory words, G groups of
``blk`` words (blk > 1 when dimensions after the reduced ones are kept, e.g. a softmax over W
of a channel-last map: groups are pixels, blk = C). The layer loops over segments (pixels,
rows, or the vector's leading dimensions) and, per segment, in chunks of at most
max(CHUNK, blk) words:

1. max:  chunk-wise MAX into an accumulator, then a tree over register halves (log2 G
   instructions) leaves each group position's max in ``blk`` words; doubling COPYs
   broadcast it back over the accumulator;
2. sum:  e = EXP(((x - max) * m_in) >> sh_in; f) in fixed point with f fraction bits
   (e <= 2**f), summed the same way;
3. out:  e recomputed per chunk (bit-identical), then
   Softmax     y = ((e * A) // S) >>r g        (A = 2**g / s_y: S and e share the 2**-f step)
   LogSoftmax  y = rescale((x - max)_f - LOG(S; f)).

Program size grows with N / CHUNK and log2 G, never with the number of segments.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from ..vfu import CHUNK, VFULayer, emit_rescale, rescale_ref
from ._fixed import emit_mul_shift, mul_shift_ref, ratio

FRAC = 20           # fraction bits of the exponentials (e <= 2**20, sums stay far from 2**63)
MAX_GROUP = 600     # words per group the 3-chunk register plan can hold (2048 registers)


@dataclass
class SoftmaxLayer(VFULayer):
    log: bool = False
    prefix: tuple = ()      # map: loop dims before the segment, "H" / "W"
    outer: int = 1          # vec: segments, N words apart
    N: int = 1              # words per segment
    blk: int = 1            # words per group (kept, not reduced)
    frac: int = FRAC
    m_in: int = 1
    sh_in: int = 0
    A: int = 1              # softmax: y = ((e * A) // S) >> g
    g: int = 0
    m_out: int = 1          # log softmax: y = rescale(d_f - log S)
    sh_out: int = 0
    bits: int = 16

    # ---- loop structure ----------------------------------------------------------------
    def iteration(self, tensors):
        ptrs, dims = {}, []
        for name in (self.inputs[0], self.output):
            t = tensors[name]
            if t.kind == "map":
                d = [(t.H, t.Wp * t.C) if p == "H" else (t.W, t.C) for p in self.prefix]
                base = t.offset(0, 0)
            else:
                d, base = ([(self.outer, self.N)] if self.outer > 1 else []), 0
            dims = [n for n, _ in d]
            ptrs[name] = (base, [s for _, s in d])
        return dims, ptrs

    def _K(self) -> int:
        return min(self.N, self.blk * max(1, CHUNK // self.blk))

    def chunks(self, tensors=None, tag=None):
        K = self._K()
        return [(o, min(K, self.N - o)) for o in range(0, self.N, K)]

    # ---- code --------------------------------------------------------------------------
    def _tree(self, em, r, fn, layer):
        """Reduce the K0 // blk groups at r into r[0:blk], then broadcast back."""
        K0 = self.chunks()[0][1]
        G0, b = K0 // self.blk, self.blk
        g = G0
        while g > 1:
            h = g // 2
            em.emit(Op.ALU, fn=fn, dst=r, src1=r, src2=r + (g - h) * b, vec=h * b, layer=layer)
            g -= h
        cur = 1
        while cur < G0:
            c = min(cur, G0 - cur)
            em.emit(Op.COPY, dst=r + cur * b, src1=r, vec=c * b, layer=layer)
            cur += c

    def _exp_arg(self, em, t, mx, n, layer):
        """t <- (t - max) in fixed point (f fraction bits)."""
        em.emit(Op.ALU, fn=Fn.SUB, dst=t, src1=t, src2=mx, vec=n, layer=layer)
        emit_mul_shift(em, t, n, self.m_in, self.sh_in, layer)

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        em.reset_gp()
        chunks = self.chunks()
        K0 = chunks[0][1]
        mx, s, t = em.gp(K0), em.gp(K0), em.gp(K0)
        pin, pout = ptr[self.inputs[0]].ireg, ptr[self.output].ireg
        em.emit(Op.LOAD, dst=mx, imm=0, ra=pin, vec=K0, layer=layer)
        for o, n in chunks[1:]:
            em.emit(Op.LOAD, dst=t, imm=o, ra=pin, vec=n, layer=layer)
            em.emit(Op.ALU, fn=Fn.MAX, dst=mx, src1=mx, src2=t, vec=n, layer=layer)
        self._tree(em, mx, Fn.MAX, layer)
        em.emit(Op.SET, dst=s, imm=0, vec=K0, layer=layer)
        for o, n in chunks:
            em.emit(Op.LOAD, dst=t, imm=o, ra=pin, vec=n, layer=layer)
            self._exp_arg(em, t, mx, n, layer)
            em.emit(Op.ALU, fn=Fn.EXP, dst=t, src1=t, imm=self.frac, vec=n, layer=layer)
            em.emit(Op.ALU, fn=Fn.ADD, dst=s, src1=s, src2=t, vec=n, layer=layer)
        self._tree(em, s, Fn.ADD, layer)
        if self.log:
            em.emit(Op.ALU, fn=Fn.LOG, dst=s, src1=s, imm=self.frac, vec=K0, layer=layer)
        for o, n in chunks:
            em.emit(Op.LOAD, dst=t, imm=o, ra=pin, vec=n, layer=layer)
            self._exp_arg(em, t, mx, n, layer)
            if self.log:
                em.emit(Op.ALU, fn=Fn.SUB, dst=t, src1=t, src2=s, vec=n, layer=layer)
                emit_rescale(em, t, n, self.m_out, self.sh_out, self.bits, layer, self.round_even)
            else:
                em.emit(Op.ALU, fn=Fn.EXP, dst=t, src1=t, imm=self.frac, vec=n, layer=layer)
                em.emit(Op.ALUI, fn=Fn.MUL, dst=t, src1=t, imm=self.A, vec=n, layer=layer)
                em.emit(Op.ALU, fn=Fn.DIV, dst=t, src1=t, src2=s, vec=n, layer=layer)
                emit_rescale(em, t, n, 1, self.g, self.bits, layer, self.round_even)
            em.emit(Op.STORE, src1=t, imm=o, ra=pout, vec=n, count=0, layer=layer)

    # ---- integer semantics -------------------------------------------------------------
    def reference(self, ins, tensors):
        x = ins[0]
        B = x.shape[0]
        x = x.reshape(B, -1, self.N // self.blk, self.blk)
        d = mul_shift_ref(x - x.max(axis=2, keepdims=True), self.m_in, self.sh_in)
        e = alu(Fn.EXP, d, None, self.frac)
        S = np.broadcast_to(e.sum(axis=2, keepdims=True), e.shape)
        if self.log:
            y = rescale_ref(d - alu(Fn.LOG, S, None, self.frac), self.m_out, self.sh_out,
                            self.bits, self.round_even)
        else:
            y = rescale_ref(alu(Fn.DIV, e * self.A, S, 0), 1, self.g, self.bits, self.round_even)
        return y.reshape(B, -1)


def _segment(ctx, t, a: int, b: int):
    """Logical dims [a, b) reduced, dims >= b kept: (prefix, outer, N, blk, flat) for tensor
    ``t``, where ``flat`` says the segment spans rows so the map must stay unpadded."""
    shape = t.shape
    if a < 1:
        raise UnsupportedOpError(f"softmax over axis 0 of {t.name!r} {tuple(shape)} (the "
                                 f"batch axis, or what a reshape made of it) is not "
                                 f"supported; allowed: axes 1 and later")
    if t.kind == "vec":
        # axis 0 counts: a batch of 1, or rows a reshape made of one sample's words
        outer = int(np.prod(shape[:a]))
        N, blk = int(np.prod(shape[a:])), int(np.prod(shape[b:]))
        if t.perm is not None and (outer > 1 or blk > 1):
            raise UnsupportedOpError("softmax over part of a flattened feature map")
        return (), outer, N, blk, False
    # Map: logical (1, C, H, W) or (1, C, L); memory order (H, W, C).
    names = ["C", "H", "W"] if len(shape) == 4 else ["C", "W"]
    size = {"C": t.C, "H": t.H, "W": t.W}
    reduced = {names[k - 1] for k in range(a, b)}
    mem = [n for n in ("H", "W", "C") if size[n] > 1]
    run = [k for k, n in enumerate(mem) if n in reduced]
    if not run:
        # every reduced dimension has size 1: a softmax of one element each. Groups of one
        # word, the innermost dimension's words side by side (blk = N: one group per
        # segment), looping over the outer ones (the loops know only H and W).
        if not mem:
            return (), 1, 1, 1, False
        inner = mem[-1]
        return tuple(mem[:-1]), 1, size[inner], size[inner], inner == "H"
    if run != list(range(run[0], run[-1] + 1)):
        raise UnsupportedOpError(f"softmax over logical axes {list(range(a, b))} of a "
                                 f"{shape} map is not contiguous in (H, W, C) memory")
    prefix, seg = tuple(mem[:run[0]]), mem[run[0]:]
    N = int(np.prod([size[n] for n in seg]))
    blk = int(np.prod([size[n] for n in mem[run[-1] + 1:]])) if run[0] < len(mem) else 1
    return prefix, 1, N, blk, "H" in seg


def lower_softmax(node, ctx):
    """Softmax and LogSoftmax (opset < 13: over the 2-D coercion at ``axis``; later: over
    ``axis`` alone)."""
    t = ctx.tensor(node.input[0])
    r = len(t.shape)
    attrs = node_attrs(node)
    old = ctx.graph.opset < 13
    axis = int(attrs.get("axis", 1 if old else -1))
    axis += r if axis < 0 else 0
    prefix, outer, N, blk, flat = _segment(ctx, t, axis, r if old else axis + 1)
    if blk > MAX_GROUP:
        raise UnsupportedOpError(f"softmax groups of {blk} words exceed the {MAX_GROUP} a "
                                 f"core's registers can hold")
    s_y = ctx.scale_for(node.output[0])
    out = ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), s_y, perm=t.perm,
                         as_map=t.kind == "map")
    if flat:
        ctx.flattened.update({t.name, out.name})
    # Inputs with an enormous step (the zoo graphs' constant weights calibrate logits to
    # ~1e20): a difference of one step then already sends exp() to 0, so capping the factor
    # changes no Softmax result and keeps x * m_in inside int64. LogSoftmax returns the
    # differences themselves, so it cannot take the cap.
    if node.op_type == "LogSoftmax" and t.scale * 2.0 ** FRAC > 2.0 ** 44:
        raise UnsupportedOpError(
            f"LogSoftmax input {t.name!r} has the step {t.scale:.3g} (|x| up to about "
            f"{t.scale * 2 ** (ctx.bits - 1):.3g}); steps up to 2**{44 - FRAC} are supported")
    m_in, sh_in = ratio(min(t.scale * 2.0 ** FRAC, 2.0 ** 44))
    kw = {}
    if node.op_type == "LogSoftmax":
        kw["m_out"], kw["sh_out"] = ratio(2.0 ** -FRAC / s_y)
    else:
        ctx.nonneg.add(out.name)
        # e * A < 2**(FRAC + g + log2(1/s_y)) must stay below 2**62.
        g = int(np.clip(61 - FRAC - np.ceil(np.log2(1.0 / s_y)), 0, 16))
        kw["A"], kw["g"] = round(2.0 ** g / s_y), g
    ctx.add(SoftmaxLayer(node.name, node.op_type, [t.name], out.name, node=node.name,
                         log=node.op_type == "LogSoftmax", prefix=prefix, outer=outer, N=N,
                         blk=blk, m_in=m_in, sh_in=sh_in, bits=ctx.bits, **kw))
