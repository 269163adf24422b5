"""Pad (constant mode) of a feature map's spatial dims: a VFU copy into a bigger map.

The output splits into rectangles (:meth:`VFULayer.regions`): where an output pixel maps to
an input pixel the words are copied (rescaled only if the constant does not fit the input's
scale), elsewhere the constant is stored. Negative pads crop. Channel and batch padding,
and the reflect/edge/wrap modes, are refused.
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..ir import multiplier
from ..vfu import VFULayer, emit_rescale, out_pointer, rescale_ref


@dataclass
class PadLayer(VFULayer):
    top: int = 0                 # output row of input row 0 (negative: cropped)
    left: int = 0
    value: int = 0               # integer constant at the output scale
    mult: int = 0                # rescale of copied words (0: plain copy)
    shift: int = 0
    bits: int = 16
    rects: list = field(default_factory=list)   # (y0, ny, x0, nx, copies) covering the output

    def regions(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        res = []
        for k, (y0, ny, x0, nx, copies) in enumerate(self.rects):
            ptrs = {self.output: (out.offset(y0, x0), out_pointer(out)[1])}
            if copies:
                ptrs[t.name] = (t.offset(y0 - self.top, x0 - self.left), out_pointer(t)[1])
            res.append(([ny, nx], ptrs, k))
        return res

    def iteration(self, tensors):
        raise NotImplementedError("PadLayer runs as regions")

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        copies = self.rects[ptr["__region"]][4]
        src = ptr[self.inputs[0]].ireg if copies else None
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            r = em.gp(n)
            if copies:
                em.emit(Op.LOAD, dst=r, imm=c0, ra=src, vec=n, layer=layer)
                if self.mult:
                    emit_rescale(em, r, n, self.mult, self.shift, self.bits, layer)
            else:
                em.emit(Op.SET, dst=r, imm=self.value, vec=n, layer=layer)
            em.emit(Op.STORE, src1=r, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        B = ins[0].shape[0]
        x = ins[0].reshape(B, t.H, t.W, t.C)
        if self.mult:
            x = rescale_ref(x, self.mult, self.shift, self.bits)
        y = np.full((B, out.H, out.W, out.C), self.value, np.int64)
        ys, xs = max(self.top, 0), max(self.left, 0)
        iy, ix = ys - self.top, xs - self.left
        ny, nx = min(out.H - ys, t.H - iy), min(out.W - xs, t.W - ix)
        if ny > 0 and nx > 0:
            y[:, ys:ys + ny, xs:xs + nx] = x[:, iy:iy + ny, ix:ix + nx]
        return y.reshape(B, -1)


def _runs(n_out: int, before: int, n_in: int) -> list[tuple[int, int, bool]]:
    """Runs (start, length, inside) over output indices; inside = maps to an input index."""
    inside = [0 <= i - before < n_in for i in range(n_out)]
    out, s = [], 0
    for i in range(1, n_out + 1):
        if i == n_out or inside[i] != inside[s]:
            out.append((s, i - s, inside[s]))
            s = i
    return out


def _pads_and_value(node, ctx, rank):
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise UnsupportedOpError(f"Pad mode {mode!r} is not supported (only 'constant')")
    if "pads" in a:                                  # opset < 11: attributes
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = ctx.const(node.input[1]) if len(node.input) > 1 else None
        if pads is None:
            raise UnsupportedOpError("Pad amounts must be constant")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            v = ctx.const(node.input[2])
            if v is None:
                raise UnsupportedOpError("Pad constant_value must be constant")
            value = float(np.asarray(v).reshape(-1)[0]) if np.size(v) else 0.0
        if len(node.input) > 3 and node.input[3]:
            axes = ctx.const(node.input[3])
            if axes is None:
                raise UnsupportedOpError("Pad axes must be constant")
            axes = [int(x) % rank for x in np.asarray(axes).reshape(-1)]
            full = [0] * (2 * rank)
            for k, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
            pads = full
    return pads, value


def lower_pad(node, ctx):
    t = ctx.tensor(node.input[0])
    if t.kind != "map" or getattr(t, "cperm", None) is not None:
        raise UnsupportedOpError("Pad is supported on feature maps (channel order kept) only")
    rank = len(t.shape)
    pads, value = _pads_and_value(node, ctx, rank)
    if len(pads) != 2 * rank:
        raise UnsupportedOpError(f"Pad has {len(pads)} pad amounts for a rank-{rank} input")
    if any(pads[k] or pads[rank + k] for k in (0, 1)):
        raise UnsupportedOpError(f"Pad of the batch or channel axis (pads {pads}) is not "
                                 f"supported; only spatial padding")
    top, left = (pads[2], pads[3]) if rank == 4 else (0, pads[2])   # bottom/right: shape
    out_shape = ctx.shape(node.output[0])
    lim = (1 << (ctx.bits - 1)) - 1
    if abs(value) <= t.scale * lim:
        s_y, mult, shift = t.scale, 0, 0             # copy exactly at the input's scale
    else:
        s_y = ctx.scale_for(node.output[0])
        m, shift = multiplier(t.scale / s_y)
        mult = int(m[0])
    out = ctx.new_tensor(node.output[0], out_shape, s_y)
    if t.name in ctx.nonneg and value >= 0:
        ctx.nonneg.add(out.name)
    rects = [(y0, ny, x0, nx, iny and inx)
             for y0, ny, iny in _runs(out.H, top, t.H) for x0, nx, inx in _runs(out.W, left, t.W)]
    ctx.add(PadLayer(node.name, "Pad", [t.name], out.name, node=node.name, top=top,
                     left=left, value=int(np.rint(value / s_y)), mult=mult, shift=shift,
                     bits=ctx.bits, rects=rects))
