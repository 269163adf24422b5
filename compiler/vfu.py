"""Layers that run on a core's vector functional unit (no crossbar).

A VFU layer runs on one core. It declares a loop nest over its output (``iteration``), the
chunks of the output it stores per iteration (``chunks``; the tile control units replay the
same nest to move those chunks between tiles), optional constant vectors placed in tile
memory (``constants``) and the per-iteration code (``emit_body``). Its integer semantics
are ``reference`` (numpy), which tests compare with the simulator bit for bit.

:class:`ElementwiseLayer` covers the common case (same-shaped inputs and output, one op
sequence per chunk of channels); an op then only writes ``compute`` and ``compute_ref``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.isa import Fn, Op

from .ir import Layer, TensorInfo, round_shift

CHUNK = 128   # words a VFU layer processes per load/compute/store step


def out_pointer(t: TensorInfo) -> tuple[int, list[int]]:
    """(offset, strides) of a pointer walking tensor ``t``'s pixels (maps) or nothing."""
    if t.kind == "map":
        return t.offset(0, 0), [t.Wp * t.C, t.C]
    return 0, []


def iteration_dims(t: TensorInfo) -> list[int]:
    return [t.H, t.W] if t.kind == "map" else []


def chunk_list(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(c, min(size, n - c)) for c in range(0, n, size)]


@dataclass
class VFULayer(Layer):
    kind = "vfu"

    def iteration(self, tensors) -> tuple[list[int], dict[str, tuple[int, list[int]]]]:
        """Loop dims (outermost first) and, per tensor name, its pointer (offset, strides).
        Default: walk the output's pixels, inputs in lock step (same H, W)."""
        out = tensors[self.output]
        ptrs = {self.output: out_pointer(out)}
        for name in self.inputs:
            ptrs[name] = out_pointer(tensors[name])
        return iteration_dims(out), ptrs

    def regions(self, tensors) -> list[tuple[list[int], dict, object]]:
        """Loop nests that together cover the output, each (dims, pointers, tag) like
        ``iteration``; ``emit_body`` sees the nest's tag as ``ptr["__region"]``. A layer whose
        arithmetic varies over the output (an average pool's border divisors) splits it
        into regions of constant arithmetic. Default: the one nest of ``iteration``."""
        dims, ptrs = self.iteration(tensors)
        return [(dims, ptrs, None)]

    def chunks(self, tensors, tag=None) -> list[tuple[int, int]]:
        """Output words stored per iteration, as (offset from the out pointer, length);
        ``tag``: a region's (see :meth:`regions`), for layers whose regions store different
        words of the same pixels."""
        out = tensors[self.output]
        return chunk_list(out.C if out.kind == "map" else out.F)

    def constants(self, tensors) -> dict[str, np.ndarray]:
        return {}

    def emit_body(self, em, ptr: dict, const_addr: dict, tensors, layer: int) -> None:
        raise NotImplementedError


@dataclass
class ElementwiseLayer(VFULayer):
    """Same-shaped inputs and output; per chunk: load inputs, ``compute``, store."""

    def compute(self, em, dst: int, srcs: list[int], n: int, c0: int, const_regs: dict,
                layer: int) -> None:
        raise NotImplementedError

    def compute_ref(self, xs: list[np.ndarray], c0: int, n: int, consts: dict) -> np.ndarray:
        raise NotImplementedError

    def per_channel(self, tensors) -> int:
        out = tensors[self.output]
        return out.C if out.kind == "map" else out.F

    def emit_body(self, em, ptr, const_addr, tensors, layer):
        consts = self.constants(tensors)
        for c0, n in self.chunks(tensors):
            em.reset_gp()
            regs = []
            for name in self.inputs:
                r = em.gp(n)
                em.emit(Op.LOAD, dst=r, imm=c0, ra=ptr[name].ireg, vec=n, layer=layer)
                regs.append(r)
            const_regs = {}
            for key in consts:
                r = em.gp(n)
                em.emit(Op.LOAD, dst=r, imm=const_addr[key] + c0, vec=n, layer=layer)
                const_regs[key] = r
            dst = regs[0] if regs else em.gp(n)
            self.compute(em, dst, regs, n, c0, const_regs, layer)
            em.emit(Op.STORE, src1=dst, imm=c0, ra=ptr[self.output].ireg, vec=n, count=0,
                    layer=layer)

    def reference(self, ins, tensors):
        out = tensors[self.output]
        B = ins[0].shape[0] if ins else 1
        per = self.per_channel(tensors)
        xs = [x.reshape(B, -1, per) for x in ins]
        consts = self.constants(tensors)
        res = np.empty((B, out.size // per, per), np.int64)
        for c0, n in self.chunks(tensors):
            res[:, :, c0:c0 + n] = self.compute_ref(
                [x[:, :, c0:c0 + n] for x in xs], c0, n,
                {k: v[c0:c0 + n] for k, v in consts.items()})
        return res.reshape(B, -1)


# ---- the VFU arithmetic, one definition shared by compute and compute_ref ---------------

def emit_rescale(em, r: int, n: int, mult: int, shift: int, bits: int, layer: int,
                 even: bool = False) -> None:
    """r <- clip((r * mult) >>r shift, bits): move a value to another scale; ``even``: the
    shift rounds half to even (a layer's output on a QuantizeLinear's grid)."""
    if mult != 1:
        em.emit(Op.ALUI, fn=Fn.MUL, dst=r, src1=r, imm=mult, vec=n, layer=layer)
    if shift:
        em.emit(Op.ALUI, fn=Fn.SHRE if even else Fn.SHR, dst=r, src1=r, imm=shift, vec=n,
                layer=layer)
    em.emit(Op.ALU, fn=Fn.CLIP, dst=r, src1=r, imm=bits, vec=n, layer=layer)


def rescale_ref(x: np.ndarray, mult: int, shift: int, bits: int,
                even: bool = False) -> np.ndarray:
    y = round_shift(x * mult, shift, even)
    lim = 1 << (bits - 1)
    return np.clip(y, -lim, lim - 1)


@dataclass
class ReluLayer(ElementwiseLayer):
    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        em.emit(Op.ALU, fn=Fn.RELU, dst=dst, src1=srcs[0], vec=n, layer=layer)

    def compute_ref(self, xs, c0, n, consts):
        return np.maximum(xs[0], 0)


@dataclass
class RescaleLayer(ElementwiseLayer):
    """y = clip(x * mult >> shift): identity of the real value at a new scale."""

    mult: int = 1
    shift: int = 0
    bits: int = 16

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        emit_rescale(em, dst, n, self.mult, self.shift, self.bits, layer, self.round_even)

    def compute_ref(self, xs, c0, n, consts):
        return rescale_ref(xs[0], self.mult, self.shift, self.bits, self.round_even)


@dataclass
class WeightedSumLayer(ElementwiseLayer):
    """y = clip((sum_i x_i * mult_i) >> shift): Add, Sub, Sum of tensors at their scales;
    ``relu``: then max(y, 0) (a following Relu fused)."""

    mults: list = field(default_factory=list)
    shift: int = 0
    bits: int = 16
    relu: bool = False

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        for r, m in zip(srcs, self.mults):
            em.emit(Op.ALUI, fn=Fn.MUL, dst=r, src1=r, imm=int(m), vec=n, layer=layer)
        for r in srcs[1:]:
            em.emit(Op.ALU, fn=Fn.ADD, dst=dst, src1=dst, src2=r, vec=n, layer=layer)
        emit_rescale(em, dst, n, 1, self.shift, self.bits, layer, self.round_even)
        if self.relu:
            em.emit(Op.ALU, fn=Fn.RELU, dst=dst, src1=dst, vec=n, layer=layer)

    def compute_ref(self, xs, c0, n, consts):
        acc = sum(x * int(m) for x, m in zip(xs, self.mults))
        y = rescale_ref(acc, 1, self.shift, self.bits, self.round_even)
        return np.maximum(y, 0) if self.relu else y


@dataclass
class AffineLayer(ElementwiseLayer):
    """Per-channel y = clip((x * M_c + B_c) >> shift): BatchNormalization left over,
    Mul / Div / Add / Sub by constants. M and B live in tile memory."""

    M: np.ndarray = None
    Bv: np.ndarray = None
    shift: int = 0
    bits: int = 16

    def constants(self, tensors):
        return {"M": np.asarray(self.M, np.int64), "B": np.asarray(self.Bv, np.int64)}

    def compute(self, em, dst, srcs, n, c0, const_regs, layer):
        em.emit(Op.ALU, fn=Fn.MUL, dst=dst, src1=srcs[0], src2=const_regs["M"], vec=n,
                layer=layer)
        em.emit(Op.ALU, fn=Fn.ADD, dst=dst, src1=dst, src2=const_regs["B"], vec=n, layer=layer)
        emit_rescale(em, dst, n, 1, self.shift, self.bits, layer, self.round_even)

    def compute_ref(self, xs, c0, n, consts):
        return rescale_ref(xs[0] * consts["M"] + consts["B"], 1, self.shift, self.bits,
                           self.round_even)
