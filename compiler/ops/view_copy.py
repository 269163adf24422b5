"""Reshape of a feature map to another map geometry with the same channels and pixels in
the same order, e.g. (1, C, L) -> (1, C, L, 1) around a 1-D pool exported as a 2-D one.

Unpadded, the words would not move; but each map keeps its own padded border, and a
(1, L) border is not an (L, 1) border, so the pixels are copied (a VFU pass). When one side
is a single row or column, pixel p of the other side's loop nest is an affine address on
that side, so one loop nest does it."""
from dataclasses import dataclass

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..vfu import VFULayer, out_pointer


def require_map(op: str, t) -> None:
    """Refuse a vector where ``op`` needs a feature map, saying how it became one."""
    if t.kind != "map":
        raise UnsupportedOpError(
            f"{op} input {t.name!r} {tuple(t.shape)} is a vector here (a Transpose, Reshape, "
            f"Flatten, Gather or fully connected layer before it made it one); {op} takes "
            f"(1, C, H, W) or (1, C, L) feature maps, and a vector becomes one only as a "
            f"one-pixel map (1, F, 1, 1) or (1, F, 1)")


def geometry(shape: tuple) -> tuple[int, int, int] | None:
    """(C, H, W) of a 3-D (1, C, L) or 4-D (1, C, H, W) map shape, else None."""
    if len(shape) == 4 and shape[0] == 1:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3 and shape[0] == 1:
        return shape[1], 1, shape[2]
    return None


def _line(t, n_cols: int):
    """Pointer strides, over a (rows, n_cols) loop, of pixel p = i * n_cols + j of map ``t``
    when ``t`` is a single row or column."""
    if t.H == 1:
        return t.offset(0, 0), [n_cols * t.C, t.C]
    return t.offset(0, 0), [n_cols * t.Wp * t.C, t.Wp * t.C]


@dataclass
class MapViewCopyLayer(VFULayer):
    def iteration(self, tensors):
        out, t = tensors[self.output], tensors[self.inputs[0]]
        if out.H == 1 or out.W == 1:                 # walk the input's pixels
            return [t.H, t.W], {t.name: out_pointer(t), self.output: _line(out, t.W)}
        return [out.H, out.W], {t.name: _line(t, out.W), self.output: out_pointer(out)}

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            r = em.gp(n)
            em.emit(Op.LOAD, dst=r, imm=c0, ra=ptr[self.inputs[0]].ireg, vec=n, layer=layer)
            em.emit(Op.STORE, src1=r, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        return ins[0].reshape(ins[0].shape[0], -1)


def lower_map_view_copy(node, ctx, src, out_shape) -> None:
    C, H, W = geometry(tuple(out_shape))
    if C != src.C or H * W != src.H * src.W or 1 not in (H, W, src.H, src.W):
        raise UnsupportedOpError(f"reshape of a map {src.shape} to {tuple(out_shape)} is not "
                                 f"supported (channels must stay, and one side be a single "
                                 f"row or column)")
    if src.cperm is not None:
        raise UnsupportedOpError("reshaping a channel-permuted map is not supported")
    out = ctx.new_tensor(node.output[0], out_shape, src.scale)
    if src.name in ctx.nonneg:
        ctx.nonneg.add(out.name)
    ctx.add(MapViewCopyLayer(node.name, node.op_type, [src.name], out.name, node=node.name))
