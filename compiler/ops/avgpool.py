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
from onnx import helper

from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, padded
from ..vfu import VFULayer, emit_rescale, out_pointer, rescale_ref
from .pool import GlobalAvgPoolLayer


@dataclass
class AvgPoolLayer(VFULayer):
    kh: int = 1
    kw: int = 1
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pool_pad: tuple = (0, 0, 0, 0)    # top, left, bottom, right read around the input
    rects: list = field(default_factory=list)   # (oy0, ny, ox0, nx, mult) covering the output
    shift: int = 0
    bits: int = 16

    def _in_ptr(self, t, oy0=0, ox0=0):
        y = t.pad[0] - self.pool_pad[0] + oy0 * self.stride[0]
        x = t.pad[1] - self.pool_pad[1] + ox0 * self.stride[1]
        return (y * t.Wp + x) * t.C, [self.stride[0] * t.Wp * t.C, self.stride[1] * t.C]

    def _window(self, t):
        return [(ky * self.dilation[0] * t.Wp + kx * self.dilation[1]) * t.C
                for ky in range(self.kh) for kx in range(self.kw)]

    def iteration(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        return [out.H, out.W], {self.output: out_pointer(out), t.name: self._in_ptr(t)}

    def regions(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        res = []
        for k, (oy0, ny, ox0, nx, _) in enumerate(self.rects):
            optr = (out.offset(oy0, ox0), out_pointer(out)[1])
            res.append(([ny, nx], {self.output: optr, t.name: self._in_ptr(t, oy0, ox0)}, k))
        return res

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        t = tensors[self.inputs[0]]
        mult = int(self.rects[ptr["__region"]][4])
        win = self._window(t)
        p = ptr[t.name].ireg
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            acc, tmp = em.gp(n), em.gp(n)
            em.emit(Op.LOAD, dst=acc, imm=win[0] + c0, ra=p, vec=n, layer=layer)
            for off in win[1:]:
                em.emit(Op.LOAD, dst=tmp, imm=off + c0, ra=p, vec=n, layer=layer)
                em.emit(Op.ALU, fn=Fn.ADD, dst=acc, src1=acc, src2=tmp, vec=n, layer=layer)
            emit_rescale(em, acc, n, mult, self.shift, self.bits, layer)
            em.emit(Op.STORE, src1=acc, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t, out = tensors[self.inputs[0]], tensors[self.output]
        buf = padded(ins[0], t)
        off0, (sy, sx) = self._in_ptr(t)
        bases = np.array([off0 + oy * sy + ox * sx for oy in range(out.H)
                          for ox in range(out.W)])
        win = np.array(self._window(t))
        idx = bases[:, None, None] + win[None, :, None] + np.arange(t.C)[None, None, :]
        sums = buf[:, idx].sum(axis=2)                              # (B, pixels, C)
        mult = np.zeros((out.H, out.W), np.int64)
        for oy0, ny, ox0, nx, m in self.rects:
            mult[oy0:oy0 + ny, ox0:ox0 + nx] = m
        y = rescale_ref(sums, mult.reshape(1, -1, 1), self.shift, self.bits)
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


def pool_geometry(node, t, out_shape):
    """Kernel, strides, dilations, explicit pads and output size as 2-D (a 1-D pool is a
    1 x L map), plus the bottom/right border ceil-mode windows read beyond the pads."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOpError("auto_pad is not supported; export with explicit pads")
    ks = list(a["kernel_shape"])
    if len(ks) not in (1, 2):
        raise UnsupportedOpError(f"only 1-D and 2-D pooling is supported (kernel {ks})")
    strides = list(a.get("strides", [1] * len(ks)))
    dil = list(a.get("dilations", [1] * len(ks)))
    pads = list(a.get("pads", [0] * 2 * len(ks)))
    if len(ks) == 1:
        ks, strides, dil, pads = [1] + ks, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
        Ho, Wo = 1, out_shape[2]
    else:
        Ho, Wo = out_shape[2], out_shape[3]
    pb = max(pads[2], (Ho - 1) * strides[0] + (ks[0] - 1) * dil[0] + 1 - t.H - pads[0])
    pr = max(pads[3], (Wo - 1) * strides[1] + (ks[1] - 1) * dil[1] + 1 - t.W - pads[1])
    return a, ks, strides, dil, pads, (Ho, Wo), (pads[0], pads[1], pb, pr)


def lower_average_pool(node, ctx):
    t = ctx.tensor(node.input[0])
    if t.kind != "map":
        raise UnsupportedOpError("AveragePool input is not a feature map")
    out_shape = ctx.shape(node.output[0])
    a, ks, st, dil, pads, (Ho, Wo), border = pool_geometry(node, t, out_shape)
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
        m, shift = multiplier(t.scale / (int(rows[0]) * int(cols[0]) * s_y))
        ctx.add(GlobalAvgPoolLayer(node.name, node.op_type, [t.name], node.output[0],
                                   node=node.name, mult=int(m[0]), shift=shift, bits=ctx.bits))
        return
    ctx.require_pad(t.name, border, 0)
    rects = [(y0, ny, x0, nx, r * c) for y0, ny, r in _runs(rows) for x0, nx, c in _runs(cols)]
    div = np.array([d for *_, d in rects], np.float64)
    mults, shift = multiplier(np.where(div > 0, t.scale / (np.maximum(div, 1) * s_y), 0.0))
    ctx.add(AvgPoolLayer(node.name, node.op_type, [t.name], node.output[0], node=node.name,
                         kh=ks[0], kw=ks[1], stride=tuple(st), dilation=tuple(dil),
                         pool_pad=border, shift=shift, bits=ctx.bits,
                         rects=[(y0, ny, x0, nx, int(m))
                                for (y0, ny, x0, nx, _), m in zip(rects, mults)]))
