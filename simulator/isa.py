"""The instruction set: one definition, used by the compiler to emit and the simulator to run.

PUMA-style (Ankit et al., ASPLOS 2019). Each core runs one in-order stream of
:data:`INSTR_DTYPE` rows; each tile's control unit runs one or more streams of tile
instructions (send/receive), at most ``tile.control_streams``, side by side.

Core data registers are one flat word-addressed space per core::

    [0, M*R)                 MVMU input registers  (MVMU m: m*R .. m*R+R-1)
    [M*R, M*R+M*C)           MVMU output registers (MVMU m: M*R + m*C ..)
    [M*R+M*C, ... + G)       general-purpose registers

(M MVMUs, R crossbar rows, C crossbar columns, G ``core.registers``). Words are signed
integers: fixed-point activations of ``input_bits``, or wider accumulators.

Tile memory words carry a valid bit and a consumer count (PUMA's producer/consumer sync):
``store`` waits until its words are free, writes them and sets their count (0 = persistent:
valid until the end, never consumed); ``load`` waits until its words are valid and, for
counted words, decrements the count, freeing a word when it reaches zero.
A word has one producer at a time, in an order the program fixes: two agents whose stores
(or receives) to a word both wait for it to be freed race, and which lands first is
undefined (the timing engine takes them in time order, the value engine agent by agent, so
reported times and values may disagree). The compiler never emits such a race; validation
refuses its message-channel equivalent (two streams at one end of a channel).

Semantics of each opcode (``ra``/``rr`` are integer-register indices, -1 = none; an
address with ``ra`` is ``imm + ireg[ra]``, a register operand with ``rr`` is
``dst + ireg[rr]`` for load, ``src1 + ireg[rr]`` for store):

=========  ==================================================================================
nop        nothing
hlt        the stream ends
load       reg[dst (+rr) : +vec] <- mem[imm (+ra) : +vec]
store      mem[imm (+ra) : +vec] <- reg[src1 (+rr) : +vec], words get consumer count ``count``
copy       reg[dst : +vec] <- reg[src1 : +vec]
set        reg[dst : +vec] <- imm
alu        reg[dst : +vec] <- fn(reg[src1 : +vec], reg[src2 : +vec]); unary fns ignore src2;
           ``imm`` is the fraction bits for sigmoid/tanh/exp/log and the bit width for clip
alui       reg[dst : +vec] <- fn(reg[src1 : +vec], imm)
mvm        every MVMU m with bit m of ``mask`` set: out_m <- crossbar_m(in_m), bit-serial
iset       ireg[dst] <- imm
iadd       ireg[dst] <- ireg[src1] + imm (wraps, as the word arithmetic below)
jmp        pc <- imm
beq / bne  if ireg[src1] ==/!= ireg[src2]: pc <- imm
send       (tile) read mem[imm (+ra) : +vec] like a load and send it to FIFO ``dst`` of
           tile ``peer``'s receive buffer (one FIFO per sender and FIFO number)
recv       (tile) take the next message from tile ``peer`` in FIFO ``dst`` and write it to
           mem[imm (+ra) : +vec] like a store with consumer count ``count``
=========  ==================================================================================

Word arithmetic (add, sub, mul, shl, div, iadd) wraps modulo 2**64, two's complement:
INT64_MAX + 1 is INT64_MIN, and INT64_MIN // -1 is INT64_MIN. Only the fixed-point
functions (sigmoid, tanh, exp, log) and clip saturate.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Op(IntEnum):
    NOP = 0
    HLT = 1
    LOAD = 2
    STORE = 3
    COPY = 4
    SET = 5
    ALU = 6
    ALUI = 7
    MVM = 8
    ISET = 9
    IADD = 10
    JMP = 11
    BEQ = 12
    BNE = 13
    SEND = 14
    RECV = 15


class Fn(IntEnum):
    """ALU functions of the vector functional unit."""

    ADD = 0
    SUB = 1
    MUL = 2
    SHR = 3      # arithmetic shift right by b, rounding half up: (a + 2**(b-1)) >> b
    SHL = 4      # (both take b below 0 as 0 and above 63 as 63)
    MAX = 5
    MIN = 6
    RELU = 7     # unary
    CLIP = 8     # unary: saturate to a signed ``imm``-bit integer
    SIGMOID = 9  # unary, fixed point with ``imm`` fraction bits in and out
    TANH = 10    # unary, fixed point
    EXP = 11     # unary, fixed point
    DIV = 12     # floor division (division by zero yields 0)
    LOG = 13     # unary, fixed point: ln(a / 2**imm) * 2**imm; a <= 0 gives -2**(40 + imm),
    #              saturated at INT64_MIN (from imm = 23 on)
    SHRE = 14    # arithmetic shift right by b, rounding half to even (ONNX QuantizeLinear's
    #              rounding; the compiler uses it where a layer's output is a Q's grid)


UNARY_FNS = frozenset({Fn.RELU, Fn.CLIP, Fn.SIGMOID, Fn.TANH, Fn.EXP, Fn.LOG})
TRANSCENDENTAL_FNS = frozenset({Fn.SIGMOID, Fn.TANH, Fn.EXP, Fn.LOG})
#: The ALU functions whose ``alu`` form reads ``imm`` (fraction bits, clip width).
IMM_FNS = TRANSCENDENTAL_FNS | {Fn.CLIP}

CORE_OPS = frozenset({Op.NOP, Op.HLT, Op.LOAD, Op.STORE, Op.COPY, Op.SET, Op.ALU, Op.ALUI,
                      Op.MVM, Op.ISET, Op.IADD, Op.JMP, Op.BEQ, Op.BNE})
TILE_OPS = frozenset({Op.NOP, Op.HLT, Op.SEND, Op.RECV, Op.ISET, Op.IADD, Op.JMP, Op.BEQ,
                      Op.BNE})

INSTR_DTYPE = np.dtype([
    ("op", np.uint8),     # Op
    ("fn", np.uint8),     # Fn for alu/alui
    ("dst", np.int32),    # destination register (or integer register; FIFO for send/recv)
    ("src1", np.int32),   # first source register (or integer register)
    ("src2", np.int32),   # second source register (or integer register)
    ("vec", np.int32),    # vector width, words
    ("imm", np.int64),    # immediate / memory address / branch target
    ("mask", np.int64),   # MVMU mask for mvm
    ("count", np.int32),  # consumer count for store/recv (0 = persistent)
    ("ra", np.int16),     # integer register added to the memory address (-1 none)
    ("rr", np.int16),     # integer register added to the register operand (-1 none)
    ("peer", np.int32),   # other tile for send/recv
    ("layer", np.int32),  # layer index for per-layer accounting (-1 none)
])

#: The fields each opcode reads (the table above), in listing order. ``ra``/``rr`` are
#: -1 when unused; an alu/alui function may leave out src2 (unary) or imm (see
#: :data:`IMM_FNS`).
OPERANDS: dict[Op, tuple[str, ...]] = {
    Op.NOP: (), Op.HLT: (),
    Op.LOAD: ("dst", "vec", "imm", "ra", "rr"),
    Op.STORE: ("src1", "vec", "imm", "count", "ra", "rr"),
    Op.COPY: ("dst", "src1", "vec"),
    Op.SET: ("dst", "vec", "imm"),
    Op.ALU: ("dst", "src1", "src2", "vec", "imm"),
    Op.ALUI: ("dst", "src1", "vec", "imm"),
    Op.MVM: ("mask",),
    Op.ISET: ("dst", "imm"),
    Op.IADD: ("dst", "src1", "imm"),
    Op.JMP: ("imm",),
    Op.BEQ: ("src1", "src2", "imm"), Op.BNE: ("src1", "src2", "imm"),
    Op.SEND: ("dst", "peer", "vec", "imm", "ra"),
    Op.RECV: ("dst", "peer", "vec", "imm", "count", "ra"),
}

# Words per persistent count: a word stored with count 0 stays valid forever.
PERSISTENT = 0
#: The largest consumer count: the instruction's field and the engine's word counts are int32.
MAX_COUNT = int(np.iinfo(np.int32).max)


def instr(op: Op, *, fn: int = 0, dst: int = 0, src1: int = 0, src2: int = 0, vec: int = 1,
          imm: int = 0, mask: int = 0, count: int = 1, ra: int = -1, rr: int = -1,
          peer: int = 0, layer: int = -1) -> tuple:
    """One instruction as a tuple in :data:`INSTR_DTYPE` field order."""
    return (int(op), int(fn), dst, src1, src2, vec, imm, mask, count, ra, rr, peer, layer)


def assemble(rows: list[tuple]) -> np.ndarray:
    """Pack instruction tuples (from :func:`instr`) into a structured array."""
    return np.array([tuple(r) for r in rows], dtype=INSTR_DTYPE)


class RegisterLayout:
    """Where a core's MVMU input/output and general registers live in its register space."""

    def __init__(self, mvmus: int, rows: int, cols: int, registers: int):
        self.mvmus, self.rows, self.cols, self.registers = mvmus, rows, cols, registers
        self.xin = 0
        self.xout = mvmus * rows
        self.gp = self.xout + mvmus * cols
        self.size = self.gp + registers

    @classmethod
    def of(cls, cfg) -> "RegisterLayout":
        return cls(cfg.core.mvmus, cfg.xbar.rows, cfg.xbar.cols, cfg.core.registers)

    def xin_of(self, m: int) -> int:
        return self.xin + m * self.rows

    def xout_of(self, m: int) -> int:
        return self.xout + m * self.cols


def disassemble(code: np.ndarray) -> list[str]:
    """Human-readable listing of a stream (for debugging and golden files)."""
    out = []
    for pc, r in enumerate(code):
        op = Op(int(r["op"]))
        name = op.name.lower()
        fields = OPERANDS[op]
        if op in (Op.ALU, Op.ALUI):
            fn = Fn(int(r["fn"]))
            name += "." + fn.name.lower()
            # every value of a field an opcode reads is meaningful (0 is a register, -1 an
            # immediate); only what this function ignores is left out
            unary = fn in UNARY_FNS
            unused = {"src2"} if unary else set()
            if fn not in IMM_FNS and (op == Op.ALU or unary):    # alui's imm is operand b
                unused.add("imm")
            fields = [k for k in fields if k not in unused]
        shown = [f"{k}={int(r[k])}" for k in fields if k not in ("ra", "rr") or r[k] != -1]
        out.append(f"{pc:5d}  {name:<12s} {' '.join(shown)}".rstrip())
    return out
