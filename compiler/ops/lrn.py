"""LRN across channels: y = x / (bias + alpha/size * sum_window x^2) ** beta, on the VFU.

Per output pixel, in fixed point with F fraction bits (``F`` below):

1. squares of the pixel's channels go to a register row with ``lo``/``hi`` zero words at
   its ends, so every channel's window sum is ``size`` shifted vector adds: S;
2. D = (S * K >>r s1) + round(bias * 2**F), at least 1:  D ~ d * 2**F;
3. E = EXP((LOG(D; F) * mb) >>r sb; F)             E ~ d**-beta * 2**F;
4. y = clip((x * E * m) >>r s)                     (m * 2**-s ~ s_x / (2**F * s_y)).

The reference runs the same steps through :func:`simulator.functional.alu` (the executable
definition of the VFU), so LOG and EXP agree bit for bit.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, node_attrs
from ..vfu import CHUNK, VFULayer, chunk_list

MULT_BITS = 20      # multiplier precision (operands stay far below 2**63)


@dataclass
class LRNLayer(VFULayer):
    size: int = 5
    frac: int = 20          # F
    K: int = 1
    s1: int = 0
    B0: int = 0
    mb: int = -1
    sb: int = 0
    m: int = 1
    s: int = 0
    bits: int = 16

    @property
    def lo(self) -> int:
        return (self.size - 1) // 2

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        t = tensors[self.inputs[0]]
        C, lo, hi = t.C, self.lo, self.size - 1 - self.lo
        src, dst = ptr[t.name].ireg, ptr[self.output].ireg
        em.reset_gp()
        P = em.gp(C + self.size - 1)
        T, X = em.gp(CHUNK), em.gp(CHUNK)

        def op(fn, d, a, b=None, imm=0, n=1):
            if b is None:
                em.emit(Op.ALUI if fn not in (Fn.EXP, Fn.LOG, Fn.CLIP) else Op.ALU, fn=fn,
                        dst=d, src1=a, imm=imm, vec=n, layer=layer)
            else:
                em.emit(Op.ALU, fn=fn, dst=d, src1=a, src2=b, vec=n, layer=layer)

        if lo:
            em.emit(Op.SET, dst=P, imm=0, vec=lo, layer=layer)
        if hi:
            em.emit(Op.SET, dst=P + lo + C, imm=0, vec=hi, layer=layer)
        for c0, n in chunk_list(C):
            em.emit(Op.LOAD, dst=X, imm=c0, ra=src, vec=n, layer=layer)
            op(Fn.MUL, P + lo + c0, X, X, n=n)
        for c0, n in chunk_list(C):
            if self.size == 1:
                em.emit(Op.COPY, dst=T, src1=P + c0, vec=n, layer=layer)
            else:
                op(Fn.ADD, T, P + c0, P + c0 + 1, n=n)
            for k in range(2, self.size):
                op(Fn.ADD, T, T, P + c0 + k, n=n)
            op(Fn.MUL, T, T, imm=self.K, n=n)
            if self.s1:
                op(Fn.SHR, T, T, imm=self.s1, n=n)
            op(Fn.ADD, T, T, imm=self.B0, n=n)
            op(Fn.MAX, T, T, imm=1, n=n)
            op(Fn.LOG, T, T, imm=self.frac, n=n)
            op(Fn.MUL, T, T, imm=self.mb, n=n)
            if self.sb:
                op(Fn.SHR, T, T, imm=self.sb, n=n)
            op(Fn.EXP, T, T, imm=self.frac, n=n)
            em.emit(Op.LOAD, dst=X, imm=c0, ra=src, vec=n, layer=layer)
            op(Fn.MUL, T, T, X, n=n)
            op(Fn.MUL, T, T, imm=self.m, n=n)
            if self.s:
                op(Fn.SHR, T, T, imm=self.s, n=n)
            op(Fn.CLIP, T, T, imm=self.bits, n=n)
            em.emit(Op.STORE, src1=T, imm=c0, ra=dst, vec=n, count=0, layer=layer)

    def reference(self, ins, tensors):
        t = tensors[self.inputs[0]]
        B = ins[0].shape[0]
        x = ins[0].reshape(B, -1, t.C).astype(np.int64)
        P = np.zeros(x.shape[:2] + (t.C + self.size - 1,), np.int64)
        P[:, :, self.lo:self.lo + t.C] = x * x
        S = sum(P[:, :, k:k + t.C] for k in range(self.size))
        d = alu(Fn.SHR, S * self.K, self.s1, 0) if self.s1 else S * self.K
        d = np.maximum(d + self.B0, 1)
        lg = alu(Fn.LOG, d, None, self.frac) * self.mb
        e = alu(Fn.EXP, alu(Fn.SHR, lg, self.sb, 0) if self.sb else lg, None, self.frac)
        y = e * x * self.m
        y = alu(Fn.SHR, y, self.s, 0) if self.s else y
        return alu(Fn.CLIP, y, None, self.bits).reshape(B, -1)


def lower_lrn(node, ctx):
    a = node_attrs(node)
    t = ctx.tensor(node.input[0])
    if t.kind != "map" or t.cperm is not None:
        raise UnsupportedOpError("LRN input must be a feature map in channel order")
    size = int(a["size"])
    alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), \
        float(a.get("bias", 1.0))
    if size < 1 or bias <= 0 or alpha < 0:
        raise UnsupportedOpError(f"LRN with size={size}, bias={bias}, alpha={alpha} is not "
                                 f"supported (needs size >= 1, bias > 0, alpha >= 0)")
    if t.C + size - 1 + 2 * CHUNK > ctx.cfg.core.registers:
        raise UnsupportedOpError(f"LRN over {t.C} channels needs {t.C + size - 1 + 2 * CHUNK} "
                                 f"registers; the core has {ctx.cfg.core.registers}")
    # F: E <= bias**-beta * 2**F must leave x * E * m below 2**62.
    top = max(0.0, beta * np.log2(1.0 / bias))
    frac = int(np.clip(20 - np.ceil(top), 6, 20))
    s_x, s_y = t.scale, ctx.scale_for(node.output[0])
    K, s1 = multiplier(alpha / size * s_x * s_x * 2.0 ** frac, MULT_BITS)
    mb, sb = multiplier(-beta, MULT_BITS)
    m, s = multiplier(s_x / (2.0 ** frac * s_y), MULT_BITS)
    ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), s_y)
    if t.name in ctx.nonneg:
        ctx.nonneg.add(node.output[0])
    ctx.add(LRNLayer(node.name, "LRN", [t.name], node.output[0], node=node.name, size=size,
                     frac=frac, K=int(K[0]), s1=s1, B0=round(bias * 2 ** frac),
                     mb=int(mb[0]), sb=sb, m=int(m[0]), s=s, bits=ctx.bits))
