"""Pad of a feature map's spatial dims (constant, edge, reflect, wrap): a VFU copy.

Each output row maps to an input row (or to none: the constant), and each column likewise;
the maps are runs of affine pieces (slope +1 inside, 0 for edge, -1 for reflect), so the
output splits into rectangles (:meth:`VFULayer.regions`), one loop nest each, whose input
pointer walks with that piece's stride (0 or negative included). A copied word is rescaled
only if the constant does not fit the input's scale. Negative pads crop. Channel and batch
padding are refused.
"""
from dataclasses import dataclass, field

import numpy as np

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, node_attrs, rescale_multiplier_bits
from ..vfu import VFULayer, emit_rescale, out_pointer, rescale_ref

MODES = ("constant", "edge", "reflect", "wrap")


@dataclass
class PadLayer(VFULayer):
    rows: list = field(default_factory=list)   # input row of each output row, -1: constant
    cols: list = field(default_factory=list)   # input column of each output column
    value: int = 0               # integer constant at the output scale
    mult: int = 0                # rescale of copied words (0: plain copy)
    shift: int = 0
    bits: int = 16

    def rects(self):
        """(y0, ny, iy0, sy, x0, nx, ix0, sx) with iy0 = -1 / ix0 = -1 for the constant."""
        return [(y0, ny, iy, sy, x0, nx, ix, sx) for y0, ny, iy, sy in _affine_runs(self.rows)
                for x0, nx, ix, sx in _affine_runs(self.cols)]

    def regions(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        res = []
        for k, (y0, ny, iy, sy, x0, nx, ix, sx) in enumerate(self.rects()):
            ptrs = {self.output: (out.offset(y0, x0), out_pointer(out)[1])}
            if iy >= 0 and ix >= 0:
                ptrs[t.name] = (t.offset(iy, ix), [sy * t.Wp * t.C, sx * t.C])
            res.append(([ny, nx], ptrs, k))
        return res

    def iteration(self, tensors):
        raise NotImplementedError("PadLayer runs as regions")

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        _, _, iy, _, _, _, ix, _ = self.rects()[ptr["__region"]]
        copies = iy >= 0 and ix >= 0
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            r = em.gp(n)
            if copies:
                em.emit(Op.LOAD, dst=r, imm=c0, ra=ptr[self.inputs[0]].ireg, vec=n,
                        layer=layer)
                if self.mult:
                    emit_rescale(em, r, n, self.mult, self.shift, self.bits, layer, self.round_even)
            else:
                em.emit(Op.SET, dst=r, imm=self.value, vec=n, layer=layer)
            em.emit(Op.STORE, src1=r, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        t = tensors[self.inputs[0]]
        B = ins[0].shape[0]
        x = ins[0].reshape(B, t.H, t.W, t.C)
        if self.mult:
            x = rescale_ref(x, self.mult, self.shift, self.bits, self.round_even)
        rows, cols = np.asarray(self.rows), np.asarray(self.cols)
        y = x[:, np.maximum(rows, 0)][:, :, np.maximum(cols, 0)]
        y[:, rows < 0] = self.value
        y[:, :, cols < 0] = self.value
        return y.reshape(B, -1)


def source_index(n_out: int, before: int, n_in: int, mode: str) -> list[int]:
    """Input index of each output index along one axis (-1: the constant). Negative pads
    crop first, as the spec and onnxruntime do, so edge, reflect and wrap read the cropped
    input (wrap used to wrap around the whole one)."""
    after = n_out - n_in - before
    lo = max(-before, 0)                            # the cropped input is [lo, lo + n_in)
    n_in -= lo + max(-after, 0)
    before = max(before, 0)
    out = []
    for i in range(n_out):
        r = i - before
        if 0 <= r < n_in:
            out.append(lo + r)
        elif mode == "constant":
            out.append(-1)
        elif mode == "edge":
            out.append(lo + min(max(r, 0), n_in - 1))
        elif mode == "wrap":
            out.append(lo + r % n_in)
        else:                                        # reflect (edge not repeated)
            period = 2 * (n_in - 1)
            r = r % period if period else 0
            out.append(lo + (period - r if r >= n_in else r))
    return out


def _affine_runs(idx: list[int]) -> list[tuple[int, int, int, int]]:
    """Maximal runs (start, length, first index, step) where the index moves by a constant
    step; constant positions (-1) form their own runs with first index -1."""
    runs = []
    for i, v in enumerate(idx):
        if runs:
            s, n, first, step = runs[-1]
            last = first + (n - 1) * step
            if v < 0 and first < 0:
                runs[-1] = (s, n + 1, -1, 0)
                continue
            if v >= 0 and first >= 0 and (n == 1 or v - last == step):
                runs[-1] = (s, n + 1, first, v - last if n == 1 else step)
                continue
        runs.append((i, 1, v if v >= 0 else -1, 0))
    return runs


def _pads_and_value(node, ctx, rank):
    a = node_attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in MODES:
        raise UnsupportedOpError(f"Pad mode {mode!r} is not supported ({', '.join(MODES)})")
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
    return pads, (value if mode == "constant" else 0.0), mode


def lower_pad(node, ctx):
    t = ctx.tensor(node.input[0])
    if t.kind != "map" or getattr(t, "cperm", None) is not None:
        raise UnsupportedOpError("Pad is supported on feature maps (channel order kept) only")
    rank = len(t.shape)
    pads, value, mode = _pads_and_value(node, ctx, rank)
    if len(pads) != 2 * rank:
        raise UnsupportedOpError(f"Pad has {len(pads)} pad amounts for a rank-{rank} input")
    if any(pads[k] or pads[rank + k] for k in (0, 1)):
        raise UnsupportedOpError(f"Pad of the batch or channel axis (pads {pads}) is not "
                                 f"supported; only spatial padding")
    if not np.isfinite(value):
        raise UnsupportedOpError(f"Pad value {value} is not supported (finite constants only; "
                                 f"before a MaxPool, give the MaxPool the pads instead)")
    top, left = (pads[2], pads[3]) if rank == 4 else (0, pads[2])   # bottom/right: shape
    out_shape = ctx.shape(node.output[0])
    lim = (1 << (ctx.bits - 1)) - 1
    if abs(value) <= t.scale * lim:
        s_y, mult, shift = t.scale, 0, 0             # copy exactly at the input's scale
    else:
        s_y = ctx.scale_for(node.output[0])
        m, shift = multiplier(t.scale / s_y, rescale_multiplier_bits(ctx.bits))
        mult = int(m[0])
    out = ctx.new_tensor(node.output[0], out_shape, s_y)
    if t.name in ctx.nonneg and value >= 0:
        ctx.nonneg.add(out.name)
    ctx.add(PadLayer(node.name, "Pad", [t.name], out.name, node=node.name,
                     rows=source_index(out.H, top, t.H, mode),
                     cols=source_index(out.W, left, t.W, mode),
                     value=int(np.rint(value / s_y)), mult=mult, shift=shift, bits=ctx.bits))
