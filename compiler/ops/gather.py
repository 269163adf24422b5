"""Gather with constant indices: a copy of the selected words on the VFU.

Sequence models pick a time step out of a recurrent layer's output (``Y[:, -1]`` after
``Squeeze``/``Transpose``): the selected words are a few contiguous runs of the input's
buffer, copied into a fresh vector in logical order. :func:`buffer_positions` (where each
logical element of a tensor lives in its storage buffer) is shared with the LSTM lowering.
"""
from dataclasses import dataclass, field

import numpy as np

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..ir import TensorInfo, node_attrs
from ..vfu import CHUNK, VFULayer


def buffer_positions(ctx, name: str) -> np.ndarray:
    """Word offset, in the storage buffer of tensor ``name``, of each of its logical elements
    (C order of its ONNX shape). A map's storage is pinned unpadded (``ctx.flattened``) so
    the offsets stay valid whatever borders later consumers would have asked for."""
    t = ctx.tensor(name)
    ctx.flattened.add(name)
    if t.kind == "map":
        c, y, x = np.meshgrid(np.arange(t.C), np.arange(t.H), np.arange(t.W), indexing="ij")
        if t.cperm is not None:                 # logical channel c is stored at inv[c]
            c = np.argsort(t.cperm)[c]
        return ((y * t.W + x) * t.C + c).reshape(-1).astype(np.int64)
    pos = np.arange(t.F, dtype=np.int64)
    if t.perm is not None:
        out = np.empty_like(pos)
        out[np.asarray(t.perm)] = pos
        pos = out
    return pos


def runs_of(src: np.ndarray) -> list[tuple[int, int, int]]:
    """(source offset, destination offset, length) runs copying ``src[j]`` to word j."""
    out, start = [], 0
    for j in range(1, len(src) + 1):
        if j == len(src) or src[j] != src[j - 1] + 1:
            out.append((int(src[start]), start, j - start))
            start = j
    return out


@dataclass
class CopyLayer(VFULayer):
    """out[dst : dst + n] = in[src : src + n] for each run: no arithmetic."""

    runs: list = field(default_factory=list)

    def iteration(self, tensors):
        return [], {self.output: (0, []), self.inputs[0]: (0, [])}

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        pin, pout = ptr[self.inputs[0]].ireg, ptr[self.output].ireg
        for src, dst, n in self.runs:
            for k in range(0, n, CHUNK):
                m = min(CHUNK, n - k)
                em.reset_gp()
                r = em.gp(m)
                em.emit(Op.LOAD, dst=r, imm=src + k, ra=pin, vec=m, layer=layer)
                em.emit(Op.STORE, src1=r, imm=dst + k, ra=pout, vec=m, count=0, layer=layer)

    def reference(self, ins, tensors):
        src = np.concatenate([np.arange(s, s + n) for s, _, n in self.runs])
        return ins[0][:, src]


def add_copy(ctx, node, src: str, out_name: str, out_shape, positions: np.ndarray) -> TensorInfo:
    """A vector ``out_name`` whose word j is word ``positions[j]`` of ``src``'s buffer."""
    t_src = ctx.tensor(src)
    out = ctx.new_tensor(out_name, out_shape, t_src.scale, as_map=False)
    ctx.add(CopyLayer(node.name if out_name == node.output[0] else f"{node.name}:{out_name}",
                      "Copy" if node.op_type != "Gather" else "Gather", [src], out.name,
                      node=node.name, runs=runs_of(np.asarray(positions, np.int64))))
    return out


def lower_gather(node, ctx):
    """Gather of constant indices along any axis of a tensor: a copy of the selected words."""
    idx = ctx.const(node.input[1])
    if idx is None:
        raise UnsupportedOpError("Gather indices must be constant")
    shape = ctx.shape(node.input[0])
    a = node_attrs(node)
    axis = int(a.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    idx = np.asarray(idx, np.int64)
    if idx.size and (idx.min() < -shape[axis] or idx.max() >= shape[axis]):
        raise UnsupportedOpError(f"Gather index out of range for axis {axis} of {shape}")
    logical = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    sel = np.take(logical, idx, axis=axis).reshape(-1)
    pos = buffer_positions(ctx, node.input[0])
    add_copy(ctx, node, node.input[0], node.output[0], ctx.shape(node.output[0]), pos[sel])

