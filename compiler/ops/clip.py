"""Clip on its own (not fused into the MVM before it): bounds become integers at the input's
scale, so the output keeps that scale, unless a bound lies past what that scale's words hold
(Clip(x, 20, 30) on |x| < 3) or the output's calibrated range is under half the input's
(Clip(x, 0, 1) on |x| ~ 1e4): then the output takes its calibrated scale and the input is
rescaled to it. Also the scalar affine map the QDQ ops reuse."""
from dataclasses import dataclass

import numpy as np

from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import node_attrs
from ..vfu import ElementwiseLayer
from ._fixed import emit_mul_shift, mul_shift_ref, ratio


@dataclass
class ClampLayer(ElementwiseLayer):
    """y = min(max((((x * mult) + add) >>r shift) + add_after, lo), hi): a scalar affine map
    then bounds (None = no bound). ``add_after``: a QuantizeLinear's zero point, added after
    its rounding as ONNX does (added before, an odd one moved every tie half to even rounds)."""

    mult: int = 1
    add: int = 0
    shift: int = 0
    lo: int | None = None
    hi: int | None = None
    add_after: int = 0

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        if self.mult != 1:
            em.emit(Op.ALUI, fn=Fn.MUL, dst=dst, src1=dst, imm=self.mult, vec=n, layer=layer)
        if self.add:
            em.emit(Op.ALUI, fn=Fn.ADD, dst=dst, src1=dst, imm=self.add, vec=n, layer=layer)
        emit_mul_shift(em, dst, n, 1, self.shift, layer, self.round_even)
        if self.add_after:
            em.emit(Op.ALUI, fn=Fn.ADD, dst=dst, src1=dst, imm=self.add_after, vec=n,
                    layer=layer)
        if self.lo is not None:
            em.emit(Op.ALUI, fn=Fn.MAX, dst=dst, src1=dst, imm=self.lo, vec=n, layer=layer)
        if self.hi is not None:
            em.emit(Op.ALUI, fn=Fn.MIN, dst=dst, src1=dst, imm=self.hi, vec=n, layer=layer)

    def compute_ref(self, xs, c0, n, consts):
        y = mul_shift_ref(xs[0] * self.mult + self.add, 1, self.shift, self.round_even)
        y = y + self.add_after
        if self.lo is not None:
            y = np.maximum(y, self.lo)
        if self.hi is not None:
            y = np.minimum(y, self.hi)
        return y


def _bound(ctx, node, k: int, attr: str):
    """Clip's k-th input (opset >= 11) or attribute (older): a float or None."""
    if len(node.input) > k and node.input[k]:
        v = ctx.const(node.input[k])
        if v is None:
            raise UnsupportedOpError(f"Clip bound {node.input[k]!r} is not a constant")
        return float(np.asarray(v).reshape(()))
    a = node_attrs(node)
    return float(a[attr]) if attr in a else None


def clip_bounds(ctx, node) -> tuple[float | None, float | None]:
    """A Clip's real (min, max), from its inputs (opset >= 11) or attributes (older); None
    where absent. Raises UnsupportedOpError for a bound that is not a constant."""
    return _bound(ctx, node, 1, "min"), _bound(ctx, node, 2, "max")


def integer_bounds(lo, hi, scale: float, bits: int,
                   grid: bool = False) -> tuple[int | None, int | None]:
    """Real bounds as integers at ``scale``; a bound beyond the ``bits``-bit range (say
    FLT_MAX for "no bound") clips nothing and is dropped. A bound within float32's precision
    of a step is that step: 6 / float32(6/255) is 254.999995, and flooring it lost the top
    code (every output onnxruntime saturates at 6.0 came out one step lower). ``grid``: the
    scale is a QuantizeLinear's, which rounds min(y, hi) / s, so the bound is round(hi / s)
    as it computes it (float32, half to even): floor(10.6) lost the top code."""
    lim = 1 << (bits - 1)

    def slack(v):   # float32's relative precision, at least the old absolute 1e-9
        return max(abs(v) * 2e-7, 1e-9)

    def on_grid(b):
        return int(np.rint(np.float32(b) / np.float32(scale)))
    ilo = None if lo is None or lo / scale < -lim else (
        on_grid(lo) if grid else int(np.ceil(lo / scale - slack(lo / scale))))
    ihi = None if hi is None or hi / scale > lim else (
        on_grid(hi) if grid else int(np.floor(hi / scale + slack(hi / scale))))
    return ilo, ihi


def clipped_nonneg(lo: int | None, hi: int | None, nonneg_input: bool) -> bool:
    """Whether clip(x, lo, hi) = min(max(x, lo), hi) is never negative: its floor is
    min(max(x_min, lo), hi), so the upper bound must not be negative either."""
    return (hi is None or hi >= 0) and (nonneg_input or (lo is not None and lo >= 0))


def lower_clip(node, ctx):
    t_in = ctx.tensor(node.input[0])
    bounds = clip_bounds(ctx, node)
    s, mult, shift = t_in.scale, 1, 0
    ilo, ihi = integer_bounds(*bounds, s, ctx.bits)
    lim = 1 << (ctx.bits - 1)
    s_out = ctx.scale_for(node.output[0])
    grid = node.output[0] in ctx.graph.act_scales     # a QuantizeLinear's scale follows
    if (any(b is not None and not -lim <= b < lim for b in (ilo, ihi)) or 0 < s_out < s / 2
            or grid):
        # a bound the input's words cannot hold (kept as is, it made a word past the
        # machine's), a window a few input steps wide (Clip(x, 0, 1) at a step of 1.8
        # gave 0 everywhere), or a Q's grid next: the output's (calibrated) scale. Missing
        # bounds become the word's, so a rescaled input past the calibration saturates
        # like any stored word
        s = s_out
        mult, shift = ratio(t_in.scale / s)
        ilo, ihi = integer_bounds(*bounds, s, ctx.bits, grid)
        ilo = -lim if ilo is None else max(ilo, -lim)
        ihi = lim - 1 if ihi is None else min(ihi, lim - 1)
    out = ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), s, perm=t_in.perm,
                         as_map=t_in.kind == "map")
    if clipped_nonneg(ilo, ihi, t_in.name in ctx.nonneg):
        ctx.nonneg.add(out.name)
    ctx.add(ClampLayer(node.name, "Clip", [t_in.name], out.name, node=node.name,
                       mult=mult, shift=shift, lo=ilo, hi=ihi))
