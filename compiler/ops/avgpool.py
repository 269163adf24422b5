"""AveragePool (1-D and 2-D; strides, pads, dilations, ceil_mode, count_include_pad) on the VFU.

Per output pixel and chunk of channels: load the window's words from the zero-bordered
input, add them, then rescale ``sum * mult >> shift`` to the output scale, where ``mult``
folds in 1 / divisor. The divisor is the number of window positions that count: those
inside the input (``count_include_pad=0``) or inside the explicitly padded input
(``count_include_pad=1``; ceil-mode overhang beyond the pads never counts, as in
onnxruntime). It factors into a row count times a column count, so the output splits into
rectangles of constant divisor: one loop nest each (:meth:`VFULayer.regions`), with its own
multiplier as an immediate — no per-pixel table in memory.
"""
from dataclasses import dataclass, field

import numpy as np

from simulator.isa import Fn

from ..ir import multiplier, node_attrs, rescale_multiplier_bits
from ..vfu import emit_rescale, out_pointer, rescale_ref
from .pool import GlobalAvgPoolLayer, WindowPoolLayer, pool_geometry, require_pool_map


@dataclass
class AvgPoolLayer(WindowPoolLayer):
    combine = Fn.ADD
    rects: list = field(default_factory=list)   # (oy0, ny, ox0, nx, mult) covering the output
    shift: int = 0
    bits: int = 16

    def regions(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        res = []
        for k, (oy0, ny, ox0, nx, _) in enumerate(self.rects):
            optr = (out.offset(oy0, ox0), out_pointer(out)[1])
            res.append(([ny, nx], {self.output: optr, t.name: self._in_ptr(t, oy0, ox0)}, k))
        return res

    def finish(self, em, acc, n, ptr, layer):
        mult = int(self.rects[ptr["__region"]][4])
        emit_rescale(em, acc, n, mult, self.shift, self.bits, layer, self.round_even)

    def reference(self, ins, tensors):
        out = tensors[self.output]
        sums = self.windows_ref(ins, tensors).sum(axis=2)          # (B, pixels, C)
        mult = np.zeros((out.H, out.W), np.int64)
        for oy0, ny, ox0, nx, m in self.rects:
            mult[oy0:oy0 + ny, ox0:ox0 + nx] = m
        y = rescale_ref(sums, mult.reshape(1, -1, 1), self.shift, self.bits, self.round_even)
        return y.reshape(ins[0].shape[0], -1)


def _counts(n_out, n_in, k, s, d, p_lo, p_hi, include_pad):
    """Per output index: window positions that count toward the divisor."""
    lo, hi = (-p_lo, n_in + p_hi) if include_pad else (0, n_in)
    pos = np.arange(n_out)[:, None] * s - p_lo + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _runs(v):
    """(start, length, value) of the runs of equal values in ``v``."""
    out, s = [], 0
    for i in range(1, len(v) + 1):
        if i == len(v) or v[i] != v[s]:
            out.append((s, i - s, int(v[s])))
            s = i
    return out


def lower_average_pool(node, ctx):
    t = ctx.tensor(node.input[0])
    require_pool_map("AveragePool", t)
    out_shape = ctx.shape(node.output[0])
    a = node_attrs(node)
    ks, st, dil, pads, (Ho, Wo), border = pool_geometry(a, t, out_shape)
    include = bool(a.get("count_include_pad", 0))
    rows = _counts(Ho, t.H, ks[0], st[0], dil[0], pads[0], pads[2], include)
    cols = _counts(Wo, t.W, ks[1], st[1], dil[1], pads[1], pads[3], include)
    s_y = ctx.scale_for(node.output[0])
    ctx.new_tensor(node.output[0], out_shape, s_y)
    if t.name in ctx.nonneg:
        ctx.nonneg.add(node.output[0])
    whole = (Ho == 1 and Wo == 1
             and _counts(1, t.H, ks[0], st[0], dil[0], pads[0], 0, False)[0] == t.H
             and _counts(1, t.W, ks[1], st[1], dil[1], pads[1], 0, False)[0] == t.W)
    if whole:
        # One window over the whole map: a global average pool (a loop, not an unrolled
        # window), with the divisor the attributes give.
        m, shift = multiplier(t.scale / (int(rows[0]) * int(cols[0]) * s_y),
                              rescale_multiplier_bits(ctx.bits, t.H * t.W))
        ctx.add(GlobalAvgPoolLayer(node.name, node.op_type, [t.name], node.output[0],
                                   node=node.name, mult=int(m[0]), shift=shift, bits=ctx.bits))
        return
    ctx.require_pad(t.name, border, 0)
    rects = [(y0, ny, x0, nx, r * c) for y0, ny, r in _runs(rows) for x0, nx, c in _runs(cols)]
    div = np.array([d for *_, d in rects], np.float64)
    mults, shift = multiplier(np.where(div > 0, t.scale / (np.maximum(div, 1) * s_y), 0.0),
                              rescale_multiplier_bits(ctx.bits, ks[0] * ks[1]))
    ctx.add(AvgPoolLayer(node.name, node.op_type, [t.name], node.output[0], node=node.name,
                         kh=ks[0], kw=ks[1], stride=tuple(st), dilation=tuple(dil),
                         pool_pad=border, shift=shift, bits=ctx.bits,
                         rects=[(y0, ny, x0, nx, int(m))
                                for (y0, ny, x0, nx, _), m in zip(rects, mults)]))
