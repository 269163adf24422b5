"""MaxPool and GlobalAveragePool on the VFU, looping over output pixels; the window walk
MaxPool shares with AveragePool (:mod:`.avgpool`)."""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from simulator.isa import Fn, Op

from ..errors import UnsupportedOpError
from ..ir import explicit_pads, multiplier, node_attrs, padded, rescale_multiplier_bits
from ..vfu import VFULayer, chunk_list, emit_rescale, out_pointer, rescale_ref
from .view_copy import require_map


@dataclass
class WindowPoolLayer(VFULayer):
    """Per output pixel and chunk of channels: load a kh x kw window of the padded input and
    combine its words with ``combine``; ``finish`` may then rescale before the store."""
    combine: ClassVar[Fn]
    kh: int = 1
    kw: int = 1
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pool_pad: tuple = (0, 0, 0, 0)    # top, left, bottom, right read around the input

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

    def finish(self, em, acc, n, ptr, layer):
        """Emit what follows the combine, on ``acc[0:n]``; default: nothing."""

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
                em.emit(Op.ALU, fn=self.combine, dst=acc, src1=acc, src2=tmp, vec=n,
                        layer=layer)
            self.finish(em, acc, n, ptr, layer)
            em.emit(Op.STORE, src1=acc, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def windows_ref(self, ins, tensors):
        """The input's windows as (batch, output pixels, window positions, channels)."""
        t, out = tensors[self.inputs[0]], tensors[self.output]
        buf = padded(ins[0], t)
        off0, (sy, sx) = self._in_ptr(t)
        bases = np.array([off0 + oy * sy + ox * sx for oy in range(out.H)
                          for ox in range(out.W)])
        win = np.array(self._window(t))
        idx = bases[:, None, None] + win[None, :, None] + np.arange(t.C)[None, None, :]
        return buf[:, idx]


@dataclass
class MaxPoolLayer(WindowPoolLayer):
    combine = Fn.MAX

    def reference(self, ins, tensors):
        return self.windows_ref(ins, tensors).max(axis=2).reshape(ins[0].shape[0], -1)


def require_pool_map(op: str, t) -> None:
    """Refuse an input ``op`` cannot pool: more than two spatial axes (a 5-D input is stored
    as a vector, which :func:`require_map` would blame on a Transpose or Reshape), or a
    vector."""
    if len(t.shape) > 4:
        raise UnsupportedOpError(f"{op}: only 1-D and 2-D pooling is supported (input rank "
                                 f"{len(t.shape)})")
    require_map(op, t)


def pool_geometry(a, t, out_shape):
    """From a pool's attributes ``a``: kernel, strides, dilations, explicit pads and output
    size as 2-D (a 1-D pool is a 1 x L map), plus the bottom/right border ceil-mode windows
    read beyond the pads."""
    ks = list(a["kernel_shape"])
    if len(ks) not in (1, 2):
        raise UnsupportedOpError(f"only 1-D and 2-D pooling is supported (kernel {ks})")
    a = explicit_pads(a, ks, [t.W] if len(ks) == 1 else [t.H, t.W])
    strides = list(a.get("strides", [1] * len(ks)))
    dil = list(a.get("dilations", [1] * len(ks)))
    pads = list(a.get("pads", [0] * 2 * len(ks)))
    if len(ks) == 1:
        ks, strides, dil, pads = [1] + ks, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
        Ho, Wo = 1, out_shape[2]
    else:
        Ho, Wo = out_shape[2], out_shape[3]
    if a.get("ceil_mode", 0):
        # The spec (and onnxruntime, torch) drop a last window that would start in the
        # bottom/right padding; onnx's shape inference keeps it, so the graph's shapes
        # downstream would disagree with what the model computes.
        for n, size, s, before, axis in ((Ho, t.H, strides[0], pads[0], "H"),
                                         (Wo, t.W, strides[1], pads[1], "W")):
            if n > 1 and (n - 1) * s >= size + before:
                raise UnsupportedOpError(
                    f"ceil_mode=1 with a last window along {axis} that starts in the "
                    f"padding: onnx shape inference says {n} outputs, the operator computes "
                    f"{n - 1}; export with ceil_mode=0 or padding that avoids it")
    pb = max(pads[2], (Ho - 1) * strides[0] + (ks[0] - 1) * dil[0] + 1 - t.H - pads[0])
    pr = max(pads[3], (Wo - 1) * strides[1] + (ks[1] - 1) * dil[1] + 1 - t.W - pads[1])
    return ks, strides, dil, pads, (Ho, Wo), (pads[0], pads[1], pb, pr)


def lower_maxpool(node, ctx):
    a = node_attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError("MaxPool's Indices output is not supported")
    t = ctx.tensor(node.input[0])
    require_pool_map("MaxPool", t)
    out_shape = ctx.shape(node.output[0])
    ks, strides, dil, _, _, border = pool_geometry(a, t, out_shape)
    lowest = -(1 << (ctx.bits - 1))
    pad_value = 0 if t.name in ctx.nonneg else lowest
    ctx.require_pad(t.name, border, pad_value)
    ctx.new_tensor(node.output[0], out_shape, t.scale)
    if t.name in ctx.nonneg:
        ctx.nonneg.add(node.output[0])
    ctx.add(MaxPoolLayer(node.name, "MaxPool", [t.name], node.output[0], node=node.name,
                         kh=ks[0], kw=ks[1], stride=tuple(strides), dilation=tuple(dil),
                         pool_pad=border))


@dataclass
class GlobalAvgPoolLayer(VFULayer):
    mult: int = 1
    shift: int = 0
    bits: int = 16

    def iteration(self, tensors):
        out = tensors[self.output]
        return [], {self.output: out_pointer(out) if out.kind == "map" else (0, [])}

    def chunks(self, tensors, tag=None):
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
            emit_rescale(em, acc, n, self.mult, self.shift, self.bits, layer, self.round_even)
            em.emit(Op.STORE, src1=acc, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t = tensors[self.inputs[0]]
        s = ins[0].reshape(ins[0].shape[0], t.H * t.W, t.C).sum(1)
        return rescale_ref(s, self.mult, self.shift, self.bits, self.round_even)


def lower_global_average_pool(node, ctx):
    t = ctx.tensor(node.input[0])
    require_pool_map("GlobalAveragePool", t)
    s_y = ctx.scale_for(node.output[0])
    m, shift = multiplier(t.scale / (t.H * t.W * s_y),
                          rescale_multiplier_bits(ctx.bits, t.H * t.W))
    ctx.new_tensor(node.output[0], ctx.shape(node.output[0]), s_y)
    ctx.add(GlobalAvgPoolLayer(node.name, node.op_type, [t.name], node.output[0],
                               node=node.name, mult=int(m[0]), shift=shift, bits=ctx.bits))
