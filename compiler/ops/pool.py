"""MaxPool and GlobalAveragePool on the VFU, looping over output pixels."""
from dataclasses import dataclass

import numpy as np
from onnx import helper

from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, padded
from ..vfu import VFULayer, chunk_list, emit_rescale, out_pointer, rescale_ref


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class MaxPoolLayer(VFULayer):
    kh: int = 1
    kw: int = 1
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pool_pad: tuple = (0, 0, 0, 0)

    def _in_ptr(self, t):
        off = ((t.pad[0] - self.pool_pad[0]) * t.Wp + t.pad[1] - self.pool_pad[1]) * t.C
        return off, [self.stride[0] * t.Wp * t.C, self.stride[1] * t.C]

    def _window(self, t):
        return [(ky * self.dilation[0] * t.Wp + kx * self.dilation[1]) * t.C
                for ky in range(self.kh) for kx in range(self.kw)]

    def iteration(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        return [out.H, out.W], {self.output: out_pointer(out), t.name: self._in_ptr(t)}

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        t = tensors[self.inputs[0]]
        win = self._window(t)
        p = ptr[t.name].ireg
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            acc, tmp = em.gp(n), em.gp(n)
            em.emit(Op.LOAD, dst=acc, imm=win[0] + c0, ra=p, vec=n, layer=layer)
            for off in win[1:]:
                em.emit(Op.LOAD, dst=tmp, imm=off + c0, ra=p, vec=n, layer=layer)
                em.emit(Op.ALU, fn=Fn.MAX, dst=acc, src1=acc, src2=tmp, vec=n, layer=layer)
            em.emit(Op.STORE, src1=acc, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t, out = tensors[self.inputs[0]], tensors[self.output]
        buf = padded(ins[0], t)
        off0, (sy, sx) = self._in_ptr(t)
        bases = np.array([off0 + oy * sy + ox * sx for oy in range(out.H)
                          for ox in range(out.W)])
        win = np.array(self._window(t))
        c = np.arange(t.C)
        idx = bases[:, None, None] + win[None, :, None] + c[None, None, :]
        return buf[:, idx].max(axis=2).reshape(ins[0].shape[0], -1)


def lower_maxpool(node, ctx):
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError("MaxPool's Indices output is not supported")
    t = ctx.tensor(node.input[0])
    if t.kind != "map":
        raise UnsupportedOpError("MaxPool input is not a feature map")
    ks = list(a["kernel_shape"])
    one_d = len(ks) == 1
    if len(ks) > 2:
        raise UnsupportedOpError("only 1-D and 2-D pooling is supported")
    strides = list(a.get("strides", [1] * len(ks)))
    dil = list(a.get("dilations", [1] * len(ks)))
    pads = list(a.get("pads", [0] * 2 * len(ks)))
    if one_d:
        ks, strides, dil, pads = [1] + ks, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
    out_shape = ctx.shape(node.output[0])
    Ho, Wo = (1, out_shape[2]) if one_d else out_shape[2:]
    # ceil_mode windows may run past the bottom/right border: pad those too.
    pb = max(pads[2], (Ho - 1) * strides[0] + (ks[0] - 1) * dil[0] + 1 - t.H - pads[0])
    pr = max(pads[3], (Wo - 1) * strides[1] + (ks[1] - 1) * dil[1] + 1 - t.W - pads[1])
    lowest = -(1 << (ctx.bits - 1))
    pad_value = 0 if t.name in ctx.nonneg else lowest
    ctx.require_pad(t.name, (pads[0], pads[1], pb, pr), pad_value)
    ctx.new_tensor(node.output[0], out_shape, t.scale)
    if t.name in ctx.nonneg:
        ctx.nonneg.add(node.output[0])
    ctx.add(MaxPoolLayer(node.name, "MaxPool", [t.name], node.output[0], node=node.name,
                         kh=ks[0], kw=ks[1], stride=tuple(strides), dilation=tuple(dil),
                         pool_pad=(pads[0], pads[1], pb, pr)))


@dataclass
class GlobalAvgPoolLayer(VFULayer):
    mult: int = 1
    shift: int = 0
    bits: int = 16

    def iteration(self, tensors):
        out = tensors[self.output]
        return [], {self.output: out_pointer(out) if out.kind == "map" else (0, [])}

    def chunks(self, tensors):
        return chunk_list(tensors[self.inputs[0]].C)

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        t = tensors[self.inputs[0]]
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            acc, tmp = em.gp(n), em.gp(n)
            em.emit(Op.SET, dst=acc, imm=0, vec=n, layer=layer)
            with em.loop_nest([t.H, t.W], [(ptr["__in_base"] + t.offset(0, 0),
                                            [t.Wp * t.C, t.C])], layer) as (p,):
                em.emit(Op.LOAD, dst=tmp, imm=c0, ra=p.ireg, vec=n, layer=layer)
                em.emit(Op.ALU, fn=Fn.ADD, dst=acc, src1=acc, src2=tmp, vec=n, layer=layer)
            emit_rescale(em, acc, n, self.mult, self.shift, self.bits, layer)
            em.emit(Op.STORE, src1=acc, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t = tensors[self.inputs[0]]
        s = ins[0].reshape(ins[0].shape[0], t.H * t.W, t.C).sum(1)
        return rescale_ref(s, self.mult, self.shift, self.bits)


def lower_global_average_pool(node, ctx):
    t = ctx.tensor(node.input[0])
    if t.kind != "map":
        raise UnsupportedOpError("GlobalAveragePool input is not a feature map")
    s_y = ctx.scale_for(node.output[0])
    m, shift = multiplier(t.scale / (t.H * t.W * s_y))
    ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), s_y)
    ctx.add(GlobalAvgPoolLayer(node.name, node.op_type, [t.name], node.output[0],
                               node=node.name, mult=int(m[0]), shift=shift, bits=ctx.bits))
