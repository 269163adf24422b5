"""Concat along the channel axis of feature maps, or along axis 1 of vectors: a VFU copy.

Per output pixel (maps) or once (vectors), each input's words are loaded and stored at
their channel offset in the output; an input whose scale differs from the output's is
rescaled on the way (the output takes its calibrated scale). A vector output's ``perm``
maps each memory word to its logical index, so inputs keep their own memory orders.
(Aliasing the inputs into the output buffer would save the copy, but needs a channel stride
distinct from C in every layer's addressing; not done.)
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from simulator.isa import Op

from ..errors import UnsupportedOpError
from ..ir import multiplier, rescale_multiplier_bits
from ..vfu import CHUNK, VFULayer, emit_rescale, rescale_ref


def _words(t) -> int:
    """Words per output pixel (maps) or in all (vectors)."""
    return t.C if t.kind == "map" else t.F


@dataclass
class ConcatLayer(VFULayer):
    """Output words [off_k, off_k + n_k) per pixel come from input k, rescaled by
    (mult_k, shift_k) when its scale differs (mult 0 = a plain copy)."""

    rescale: list = field(default_factory=list)     # (mult, shift) per input
    bits: int = 16
    int_registers: int = 16                         # the core's: pointers per loop nest

    def _offsets(self, tensors):
        sizes = [_words(tensors[n]) for n in self.inputs]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist(), sizes

    def regions(self, tensors):
        """One loop nest holds a pointer per input, one for the output and two registers
        per loop level: more inputs than the core's integer registers allow (a DenseNet
        block concatenates every earlier map) are copied in several nests, a group of
        inputs (the tag: their index range) each."""
        dims, ptrs = self.iteration(tensors)
        group = max(1, self.int_registers - 2 * len(dims) - 1)
        if len(set(self.inputs)) <= group:
            return [(dims, ptrs, None)]
        return [(dims, {self.output: ptrs[self.output],
                        **{n: ptrs[n] for n in self.inputs[k0:k0 + group]}},
                 (k0, min(k0 + group, len(self.inputs))))
                for k0 in range(0, len(self.inputs), group)]

    def _inputs_of(self, tag) -> range:
        return range(len(self.inputs)) if tag is None else range(*tag)

    def chunks(self, tensors, tag=None):
        offs, sizes = self._offsets(tensors)
        return [(offs[k] + c0, min(CHUNK, sizes[k] - c0)) for k in self._inputs_of(tag)
                for c0 in range(0, sizes[k], CHUNK)]

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        offs, sizes = self._offsets(tensors)
        em.reset_gp()
        r = em.gp(CHUNK)
        for k in self._inputs_of(ptr["__region"]):
            name = self.inputs[k]
            mult, shift = self.rescale[k]
            for c0 in range(0, sizes[k], CHUNK):
                n = min(CHUNK, sizes[k] - c0)
                em.emit(Op.LOAD, dst=r, imm=c0, ra=ptr[name].ireg, vec=n, layer=layer)
                if mult:
                    emit_rescale(em, r, n, mult, shift, self.bits, layer, self.round_even)
                em.emit(Op.STORE, src1=r, imm=offs[k] + c0, ra=ptr[self.output].ireg, vec=n,
                        count=0, layer=layer)

    def reference(self, ins, tensors):
        B = ins[0].shape[0]
        parts = []
        for x, name, (mult, shift) in zip(ins, self.inputs, self.rescale):
            x = x.reshape(B, -1, _words(tensors[name]))
            parts.append(rescale_ref(x, mult, shift, self.bits, self.round_even) if mult else x)
        return np.concatenate(parts, axis=2).reshape(B, -1)


def vector_concat_perm(out_shape, axis: int, ts) -> np.ndarray | None:
    """The memory-to-logical ``perm`` of vectors ``ts`` concatenated along ``axis`` of
    ``out_shape``, each input's words stored whole one after another (None: the identity)."""
    # Logical index in the output of every input element, then through each input's
    # memory order.
    idx = np.arange(int(np.prod(out_shape))).reshape(out_shape)
    pieces = np.split(idx, np.cumsum([t.shape[axis] for t in ts])[:-1], axis=axis)
    perm = np.concatenate([p.reshape(-1)[t.perm] if t.perm is not None else p.reshape(-1)
                           for p, t in zip(pieces, ts)])
    return None if np.array_equal(perm, np.arange(len(perm))) else perm


def lower_concat(node, ctx):
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    ts = [ctx.tensor(i) for i in node.input]
    out_shape = ctx.shape(node.output[0])
    axis = axis + len(out_shape) if axis < 0 else axis
    kinds = {t.kind for t in ts}
    if len(kinds) != 1:
        raise UnsupportedOpError("Concat of a feature map with a vector is not supported")
    if kinds == {"map"}:
        if axis != 1:
            raise UnsupportedOpError(f"Concat of feature maps along axis {axis} (only the "
                                     f"channel axis 1 is supported)")
        if any(getattr(t, "cperm", None) is not None for t in ts):
            raise UnsupportedOpError("Concat of a channel-permuted map is not supported")
        perm = None
    else:
        if axis == 0:
            # the compiler's tensors have batch 1, so an axis-0 Concat stacks samples, or
            # (torch's h_n of a stacked RNN) layers or directions
            raise UnsupportedOpError(
                "Concat along axis 0 is not supported (the batch axis, or a recurrent "
                "state's layers/directions axis: for h_n of a stacked RNN classify from the "
                "last step of its output sequence instead)")
        perm = vector_concat_perm(out_shape, axis, ts)
    s_y = ctx.scale_for(node.output[0])
    rescale = []
    for t in ts:
        if t.scale == s_y:
            rescale.append((0, 0))
        else:
            m, sh = multiplier(t.scale / s_y, rescale_multiplier_bits(ctx.bits))
            rescale.append((int(m[0]), sh))
    out = ctx.new_tensor(node.output[0], out_shape, s_y, perm=perm,
                         as_map=kinds == {"map"})
    if all(t.name in ctx.nonneg for t in ts):
        ctx.nonneg.add(out.name)
    ctx.add(ConcatLayer(node.name, "Concat", [t.name for t in ts], out.name, node=node.name,
                        rescale=rescale, bits=ctx.bits,
                        int_registers=ctx.cfg.core.int_registers))
