"""Sigmoid and Tanh on the VFU's fixed-point units; LeakyRelu and PRelu as two slopes;
Elu, Selu and Softplus as a slope plus an exponential branch.

Sigmoid/Tanh: x (scale s_x) -> fixed point with f fraction bits -> SIGMOID/TANH (f bits in
and out) -> the output's scale. LeakyRelu/PRelu: y = max(x, 0) * a + min(x, 0) * b with
integer multipliers a, b (PRelu: b per channel, a constant vector) and one shared shift.
"""
from dataclasses import dataclass

import numpy as np

from simulator.functional import alu
from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, node_attrs
from ..vfu import ElementwiseLayer, emit_rescale, rescale_ref
from ._fixed import MULT_BITS, emit_mul_shift, frac_bits, mul_shift_ref, ratio
from .elementwise import per_channel


@dataclass
class TranscendentalLayer(ElementwiseLayer):
    """y = clip(fn(x * m_in >> sh_in; f) * m_out >> sh_out)."""

    fn: int = int(Fn.SIGMOID)
    frac: int = 16
    m_in: int = 1
    sh_in: int = 0
    m_out: int = 1
    sh_out: int = 0
    bits: int = 16

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        emit_mul_shift(em, dst, n, self.m_in, self.sh_in, layer)
        em.emit(Op.ALU, fn=self.fn, dst=dst, src1=dst, imm=self.frac, vec=n, layer=layer)
        emit_rescale(em, dst, n, self.m_out, self.sh_out, self.bits, layer, self.round_even)

    def compute_ref(self, xs, c0, n, consts):
        v = alu(self.fn, mul_shift_ref(xs[0], self.m_in, self.sh_in), None, self.frac)
        return rescale_ref(v, self.m_out, self.sh_out, self.bits, self.round_even)


def _same_layout(ctx, node, t_in, scale):
    return ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), scale, perm=t_in.perm,
                          as_map=t_in.kind == "map")


def lower_transcendental(node, ctx):
    """Sigmoid, Tanh."""
    t_in = ctx.tensor(node.input[0])
    s_y = ctx.scale_for(node.output[0])
    f = frac_bits(t_in.scale, s_y)
    m_in, sh_in = ratio(t_in.scale * 2.0 ** f)
    m_out, sh_out = ratio(2.0 ** -f / s_y)
    out = _same_layout(ctx, node, t_in, s_y)
    if node.op_type == "Sigmoid":
        ctx.nonneg.add(out.name)
    fn = {"Sigmoid": Fn.SIGMOID, "Tanh": Fn.TANH}[node.op_type]
    ctx.add(TranscendentalLayer(node.name, node.op_type, [t_in.name], out.name,
                                node=node.name, fn=int(fn), frac=f, m_in=m_in, sh_in=sh_in,
                                m_out=m_out, sh_out=sh_out, bits=ctx.bits))


@dataclass
class TwoSlopeLayer(ElementwiseLayer):
    """y = clip((max(x, 0) * pos + min(x, 0) * neg) >> shift); ``neg`` a scalar or a
    per-channel constant vector."""

    pos: int = 1
    neg: np.ndarray | int = 0
    shift: int = 0
    bits: int = 16

    def constants(self, tensors):
        return {} if np.ndim(self.neg) == 0 else {"neg": np.asarray(self.neg, np.int64)}

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        t = em.gp(n)
        em.emit(Op.ALUI, fn=Fn.MIN, dst=t, src1=dst, imm=0, vec=n, layer=layer)
        if "neg" in const_regs:
            em.emit(Op.ALU, fn=Fn.MUL, dst=t, src1=t, src2=const_regs["neg"], vec=n,
                    layer=layer)
        else:
            em.emit(Op.ALUI, fn=Fn.MUL, dst=t, src1=t, imm=int(self.neg), vec=n, layer=layer)
        em.emit(Op.ALUI, fn=Fn.MAX, dst=dst, src1=dst, imm=0, vec=n, layer=layer)
        em.emit(Op.ALUI, fn=Fn.MUL, dst=dst, src1=dst, imm=self.pos, vec=n, layer=layer)
        em.emit(Op.ALU, fn=Fn.ADD, dst=dst, src1=dst, src2=t, vec=n, layer=layer)
        emit_rescale(em, dst, n, 1, self.shift, self.bits, layer, self.round_even)

    def compute_ref(self, xs, c0, n, consts):
        neg = consts["neg"] if "neg" in consts else int(self.neg)
        acc = np.maximum(xs[0], 0) * self.pos + np.minimum(xs[0], 0) * neg
        return rescale_ref(acc, 1, self.shift, self.bits, self.round_even)


def lower_leaky_relu(node, ctx):
    """LeakyRelu (attribute alpha) and PRelu (slope input: scalar or per channel)."""
    t_in = ctx.tensor(node.input[0])
    if node.op_type == "PRelu":
        slope = ctx.const(node.input[1])
        if slope is None:
            raise UnsupportedOpError("PRelu slope must be a constant")
        slope = per_channel(ctx, t_in, slope)
    else:
        a = node_attrs(node)
        slope = np.array([float(a.get("alpha", 0.01))])
    s_y = ctx.scale_for(node.output[0])
    mults, shift = multiplier(np.concatenate([[t_in.scale / s_y], slope * t_in.scale / s_y]),
                              MULT_BITS)
    neg = mults[1:]
    neg = int(neg[0]) if np.all(neg == neg[0]) else neg
    out = _same_layout(ctx, node, t_in, s_y)
    ctx.add(TwoSlopeLayer(node.name, node.op_type, [t_in.name], out.name, node=node.name,
                          pos=int(mults[0]), neg=neg, shift=shift, bits=ctx.bits))


@dataclass
class ExpBranchLayer(ElementwiseLayer):
    """y = clip((max(x, 0) * pos >> shift) + (e(x) * neg >> neg_shift)), e on fixed point
    of ``frac`` fraction bits of u = min(x, 0) (Elu/Selu: e = exp(u) - 1, in [-1, 0]) or
    u = -|x| (Softplus: e = log(1 + exp(u)), in [0, ln 2], so softplus(x) = max(x, 0) +
    log(1 + exp(-|x|)) never overflows). The two terms keep their own multiplier
    precision: the output scale may be far finer than the input's (Softplus of x << 0)."""

    softplus: bool = False
    frac: int = 16
    m_in: int = 1
    sh_in: int = 0
    pos: int = 1
    shift: int = 0
    neg: int = 0
    neg_shift: int = 0
    bits: int = 16

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        u, one = em.gp(n), 1 << self.frac
        if self.softplus:
            em.emit(Op.ALUI, fn=Fn.MUL, dst=u, src1=dst, imm=-1, vec=n, layer=layer)
            em.emit(Op.ALU, fn=Fn.MIN, dst=u, src1=u, src2=dst, vec=n, layer=layer)
        else:
            em.emit(Op.ALUI, fn=Fn.MIN, dst=u, src1=dst, imm=0, vec=n, layer=layer)
        emit_mul_shift(em, u, n, self.m_in, self.sh_in, layer)
        em.emit(Op.ALU, fn=Fn.EXP, dst=u, src1=u, imm=self.frac, vec=n, layer=layer)
        if self.softplus:
            em.emit(Op.ALUI, fn=Fn.ADD, dst=u, src1=u, imm=one, vec=n, layer=layer)
            em.emit(Op.ALU, fn=Fn.LOG, dst=u, src1=u, imm=self.frac, vec=n, layer=layer)
        else:
            em.emit(Op.ALUI, fn=Fn.SUB, dst=u, src1=u, imm=one, vec=n, layer=layer)
        emit_mul_shift(em, u, n, self.neg, self.neg_shift, layer)
        em.emit(Op.ALUI, fn=Fn.MAX, dst=dst, src1=dst, imm=0, vec=n, layer=layer)
        emit_mul_shift(em, dst, n, self.pos, self.shift, layer)
        em.emit(Op.ALU, fn=Fn.ADD, dst=dst, src1=dst, src2=u, vec=n, layer=layer)
        emit_rescale(em, dst, n, 1, 0, self.bits, layer, self.round_even)

    def compute_ref(self, xs, c0, n, consts):
        x, one = xs[0], 1 << self.frac
        u = np.minimum(-x, x) if self.softplus else np.minimum(x, 0)
        u = alu(Fn.EXP, mul_shift_ref(u, self.m_in, self.sh_in), None, self.frac)
        u = alu(Fn.LOG, u + one, None, self.frac) if self.softplus else u - one
        y = (mul_shift_ref(np.maximum(x, 0), self.pos, self.shift)
             + mul_shift_ref(u, self.neg, self.neg_shift))
        return rescale_ref(y, 1, 0, self.bits, self.round_even)


def lower_exp_branch(node, ctx):
    """Elu (alpha), Selu (alpha, gamma), Softplus."""
    t_in = ctx.tensor(node.input[0])
    a = node_attrs(node)
    if node.op_type == "Softplus":
        gain, alpha = 1.0, 1.0
    elif node.op_type == "Selu":
        gain = float(a.get("gamma", 1.0507009873554804934193349852946))
        alpha = float(a.get("alpha", 1.6732632423543772848170429916717))
    else:
        gain, alpha = 1.0, float(a.get("alpha", 1.0))
    s_y = ctx.scale_for(node.output[0])
    f = frac_bits(t_in.scale, s_y)
    m_in, sh_in = ratio(t_in.scale * 2.0 ** f)
    pos, shift = ratio(gain * t_in.scale / s_y)
    neg, neg_shift = ratio(gain * alpha * 2.0 ** -f / s_y) if alpha else (0, 0)
    out = _same_layout(ctx, node, t_in, s_y)
    if node.op_type == "Softplus":
        ctx.nonneg.add(out.name)
    ctx.add(ExpBranchLayer(node.name, node.op_type, [t_in.name], out.name, node=node.name,
                           softplus=node.op_type == "Softplus", frac=f, m_in=m_in,
                           sh_in=sh_in, pos=pos, shift=shift, neg=neg, neg_shift=neg_shift,
                           bits=ctx.bits))
