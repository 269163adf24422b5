"""Instruction emission helpers: an instruction list with labels, integer-register
allocation, loop nests with strided address pointers, and a general-register allocator.

Loops keep program size independent of the number of pixels: a loop nest over (Ho, Wo)
costs a handful of instructions however large the image, and the addresses that change
per pixel live in integer registers that the loads/stores add (``ra``)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from simulator.isa import Op, assemble, instr

from .errors import CompilerError


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
        if not self.free_int:
            raise CompilerError(f"{self.where}: out of integer registers "
                                f"({self.n_int}; raise core.int_registers)")
        return self.free_int.pop()

    def release_int(self, *regs: int) -> None:
        self.free_int.extend(regs)

    def reset_gp(self) -> None:
        self.gp_next = self.gp_base

    def gp(self, n: int) -> int:
        """Allocate ``n`` general registers (bump allocation, per layer)."""
        r = self.gp_next
        if r + n > self.gp_base + self.gp_size:
            raise CompilerError(f"{self.where}: needs {r + n - self.gp_base} general registers, "
                                f"the core has {self.gp_size} (raise core.registers)")
        self.gp_next += n
        return r

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
