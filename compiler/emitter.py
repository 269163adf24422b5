"""Instruction emission helpers: an instruction list with labels, integer-register
allocation, loop nests with strided address pointers, and a general-register allocator.

Loops keep program size independent of the number of pixels: a loop nest over (Ho, Wo)
costs a handful of instructions however large the image, and the addresses that change
per pixel live in integer registers that the loads/stores add (``ra``)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from simulator.isa import Op, assemble, instr



@dataclass
class Pointer:
    """An integer register holding base + sum(i_d * strides[d]) inside a loop nest."""

    ireg: int
    base: int
    strides: tuple


class Emitter:
    """Builds one instruction stream (a core's or a tile control unit's)."""

    def __init__(self, n_int: int, gp_base: int = 0, gp_size: int = 0, where: str = ""):
        self.rows: list[tuple] = []
        self.n_int = n_int
        self.free_int = list(range(n_int - 1, -1, -1))
        self.gp_base, self.gp_size = gp_base, gp_size
        self.gp_next = gp_base
        self.where = where
        # Allocation past the core's registers is counted, not refused, so that code
        # generation can finish and say what the whole model needs (refused then, before
        # any program is assembled: :meth:`shortfall`), not the first overflow's size.
        self.int_made = n_int
        self.int_peak = self.gp_peak = 0

    # ---- raw emission --------------------------------------------------------------
    def emit(self, op: Op, **kw) -> int:
        self.rows.append(instr(op, **kw))
        return len(self.rows) - 1

    @property
    def pc(self) -> int:
        return len(self.rows)

    def patch_target(self, at: int, target: int) -> None:
        r = list(self.rows[at])
        r[6] = target   # imm
        self.rows[at] = tuple(r)

    def assemble(self):
        rows = self.rows + [instr(Op.HLT)]
        return assemble(rows)

    # ---- registers -------------------------------------------------------------------
    def int_reg(self) -> int:
        if not self.free_int:            # over budget: a number past the core's, counted
            self.free_int.append(self.int_made)
            self.int_made += 1
        r = self.free_int.pop()
        self.int_peak = max(self.int_peak, self.int_made - len(self.free_int))
        return r

    def release_int(self, *regs: int) -> None:
        self.free_int.extend(regs)

    def reset_gp(self) -> None:
        self.gp_next = self.gp_base

    def gp(self, n: int) -> int:
        """Allocate ``n`` general registers (bump allocation, per layer)."""
        r = self.gp_next
        self.gp_next += n
        self.gp_peak = max(self.gp_peak, self.gp_next - self.gp_base)
        return r

    def shortfall(self) -> dict[str, tuple[int, int]]:
        """``{"registers" | "int_registers": (needed, the core's)}`` where the code emitted
        so far needs more than the core has (names as in ``core.*``)."""
        out = {}
        if self.gp_peak > self.gp_size:
            out["registers"] = (self.gp_peak, self.gp_size)
        if self.int_peak > self.n_int:
            out["int_registers"] = (self.int_peak, self.n_int)
        return out

    # ---- loops -------------------------------------------------------------------------
    @contextmanager
    def loop_nest(self, dims: list[int], pointers: list[tuple[int, list[int]]], layer: int = -1):
        """Nested counted loops over ``dims`` (outermost first). ``pointers``: (base,
        strides per dim) each; yields the Pointer objects whose integer registers hold the
        current address. The body is emitted inside the ``with`` block."""
        ptrs = []
        for base, strides in pointers:
            r = self.int_reg()
            self.emit(Op.ISET, dst=r, imm=int(base), layer=layer)
            ptrs.append(Pointer(r, int(base), tuple(int(s) for s in strides)))
        dims = [int(d) for d in dims]
        counters, limits, heads = [], [], []
        for d in dims:
            c, lim = self.int_reg(), self.int_reg()
            self.emit(Op.ISET, dst=c, imm=0, layer=layer)
            self.emit(Op.ISET, dst=lim, imm=d, layer=layer)
            counters.append(c)
            limits.append(lim)
            heads.append(self.pc)
        yield ptrs
        for k in range(len(dims) - 1, -1, -1):
            for p in ptrs:
                inner = dims[k + 1] * p.strides[k + 1] if k + 1 < len(dims) else 0
                step = p.strides[k] - inner
                if step:
                    self.emit(Op.IADD, dst=p.ireg, src1=p.ireg, imm=step, layer=layer)
            self.emit(Op.IADD, dst=counters[k], src1=counters[k], imm=1, layer=layer)
            self.emit(Op.BNE, src1=counters[k], src2=limits[k], imm=heads[k], layer=layer)
        # (An inner counter's ISET sits after the enclosing loop's head, so it re-arms
        # every outer iteration.)
        self.release_int(*counters, *limits, *[p.ireg for p in ptrs])
