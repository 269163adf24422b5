"""The value engine: executes a Program's instruction streams on integer data, bit-exact.

This is the executable definition of the ISA's semantics (see :mod:`simulator.isa`). It
is batched: every register and memory word holds one value per input in the batch, so a
batch of B images costs one pass over the instructions, and each ``mvm`` is one matrix
product for the whole batch and all input bit planes (:class:`~simulator.crossbar.MVMUModel`).

Values do not depend on timing: cores run round-robin, each until it blocks on the memory
synchronisation (valid/count words, messages); the timing engine
(:mod:`simulator.timing`) replays the same streams with the same sync rules to get time.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np

from .crossbar import MVMUModel, wrap_inputs
from .errors import DeadlockError, SimulationError
from .isa import PERSISTENT, Fn, Op
from .noise import conductances, nominal_conductances, read_noise_rng
from .program import Program

(_NOP, _HLT, _LOAD, _STORE, _COPY, _SET, _ALU, _ALUI, _MVM, _ISET, _IADD, _JMP, _BEQ, _BNE,
 _SEND, _RECV) = (int(o) for o in (Op.NOP, Op.HLT, Op.LOAD, Op.STORE, Op.COPY, Op.SET, Op.ALU,
                                   Op.ALUI, Op.MVM, Op.ISET, Op.IADD, Op.JMP, Op.BEQ, Op.BNE,
                                   Op.SEND, Op.RECV))


def _log(v):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log(np.maximum(v, 1e-300)), -2.0 ** 40)


def _fixed_point(fn, a: np.ndarray, frac: int) -> np.ndarray:
    """Transcendental VFU functions on fixed point with ``frac`` fraction bits (evaluated in
    float64 and rounded to nearest: the model of a lookup/interpolation unit)."""
    x = a.astype(np.float64) / (1 << frac)
    with np.errstate(over="ignore"):     # an infinite EXP saturates below, as intended
        y = {Fn.SIGMOID: lambda v: 1.0 / (1.0 + np.exp(-v)), Fn.TANH: np.tanh,
             Fn.EXP: lambda v: np.exp(np.minimum(v, 709.0)), Fn.LOG: _log}[fn](x)
        # saturate where the result leaves int64 (EXP of a large argument, LOG(0) at many
        # fraction bits), as a fixed-point unit does, instead of wrapping to INT64_MIN
        return np.clip(np.rint(y * (1 << frac)), -2.0 ** 63, _INT64_TOP).astype(np.int64)


_INT64_TOP = np.nextafter(2.0 ** 63, 0.0)   # the largest float64 below 2**63
_INT64_HALF, _INT64_MASK = 1 << 63, (1 << 64) - 1


def _clamp(a, lo: int, hi: int):
    """``np.clip(a, lo, hi)``: the same values at a third of np.clip's cost on the small
    int64 vectors an instruction holds (its Python overhead dominated the ALU)."""
    return np.minimum(np.maximum(a, lo), hi)


def alu(fn: int, a: np.ndarray, b, imm: int) -> np.ndarray:
    """Vector functional unit: one function on int64 operands (``b`` array or scalar)."""
    if fn == Fn.ADD:
        return a + b
    if fn == Fn.SUB:
        return a - b
    if fn == Fn.MUL:
        return a * b
    if fn == Fn.SHR:
        # (a + 2**(b-1)) >> b without the sum (which overflows near 2**63): the floor plus
        # the last bit shifted out. Counts beyond 0..63 act as 0 and 63 (numpy, like x86,
        # would take them mod 64: a shift by 64 turned +1000 into -1).
        b = _clamp(np.asarray(b, np.int64), 0, 63)
        return (a >> b) + np.where(b > 0, (a >> np.maximum(b - 1, 0)) & 1, 0)
    if fn == Fn.SHRE:
        # the floor, plus one where the bits shifted out exceed half, or equal it and the
        # floor is odd
        b = _clamp(np.asarray(b, np.int64), 0, 63)
        floor = a >> b
        half = np.where(b > 0, (a >> np.maximum(b - 1, 0)) & 1, 0)
        below = a & ((np.int64(1) << np.maximum(b - 1, 0)) - 1)   # the bits under the half
        tie_to_even = (half == 1) & (below == 0) & ((floor & 1) == 0)
        return floor + np.where(tie_to_even, 0, half)
    if fn == Fn.SHL:
        return a << _clamp(np.asarray(b, np.int64), 0, 63)
    if fn == Fn.MAX:
        return np.maximum(a, b)
    if fn == Fn.MIN:
        return np.minimum(a, b)
    if fn == Fn.RELU:
        return np.maximum(a, 0)
    if fn == Fn.CLIP:
        lim = 1 << (imm - 1)
        return _clamp(a, -lim, lim - 1)
    if fn in (Fn.SIGMOID, Fn.TANH, Fn.EXP, Fn.LOG):
        return _fixed_point(fn, a, imm)
    if fn == Fn.DIV:
        b = np.broadcast_to(np.asarray(b, np.int64), a.shape)
        out = np.zeros_like(a)
        nz = b != 0
        with np.errstate(over="ignore"):    # INT64_MIN // -1 wraps to INT64_MIN (isa.py)
            out[nz] = np.floor_divide(a[nz], b[nz])
        return out
    raise SimulationError(f"unknown ALU function {fn}")


def prepared_mvmus(prog: Program, exact_shortcut: bool = True
                   ) -> dict[tuple[int, int, int], MVMUModel]:
    """The MVMU models of a program, built once per program (their matrices, ADC ranges and
    lossless checks do not change between runs) and cached on it."""
    cache = prog.derived("mvmu_models")
    if exact_shortcut not in cache:
        cfg = prog.config
        models = {}
        keys = prog.device_keys()
        for i, (t, c, m) in enumerate(prog.mvmu_loc.tolist()):
            levels = prog.mvmu_levels[i]
            models[(t, c, m)] = MVMUModel(
                levels, weight_bits=cfg.weight_bits, input_bits=cfg.input_bits,
                cell_bits=cfg.xbar.cell_bits, dac_bits=cfg.dac.bits, mapping=cfg.xbar.mapping,
                adc_bits=prog.adc_bits_of(i), adc_mode=cfg.adc.mode,
                conductance=conductances(levels, cfg, keys[i]), read_sigma=cfg.noise.read_sigma,
                rows_used=int(prog.mvmu_rows_used[i]), cols_used=int(prog.mvmu_cols_used[i]),
                active_rows=cfg.xbar.active_rows, exact_shortcut=exact_shortcut,
                nominal=nominal_conductances(levels, cfg))
        cache[exact_shortcut] = models
    return cache[exact_shortcut]


class ValueEngine:
    """Runs a program on a batch of integer inputs. Use :func:`run_values`."""

    def __init__(self, prog: Program, batch: int, max_instructions: int = 500_000_000,
                 exact_shortcut: bool = True):
        cfg = prog.config
        self.prog, self.cfg, self.B = prog, cfg, batch
        self.lay = prog.layout
        self.cores = cfg.tile.cores
        self.n_core_agents = prog.n_tiles * self.cores
        sizes = [int(w) for w in prog.mem_words]
        self.mem = [np.zeros((batch, w), np.int64) for w in sizes]
        self.count = [np.zeros(w, np.int64) for w in sizes]
        self.valid = [np.zeros(w, bool) for w in sizes]
        self.regs = [np.zeros((batch, self.lay.size), np.int64)
                     for _ in range(self.n_core_agents)]
        n_agents = prog.n_agents
        self.tile_of = prog.agent_tiles().tolist()
        self.iregs = np.zeros((n_agents, cfg.core.int_registers), np.int64)
        self.pc = np.zeros(n_agents, np.int64)
        self.halted = np.zeros(n_agents, bool)
        self.waiting: list[dict | None] = [None] * n_agents
        self.queues: dict[tuple[int, int, int], deque] = {}   # (src, dst, FIFO)
        self.version = [0] * prog.n_tiles   # bumped when a tile's words or queues change
        self.budget = max_instructions
        self.executed = 0
        self.mvmus = prepared_mvmus(prog, exact_shortcut)
        self.exact_shortcut = exact_shortcut
        for loc, key in zip(prog.mvmu_loc.tolist(), prog.device_keys()):
            # A fresh read-noise stream per run: same seed, same report.
            self.mvmus[tuple(loc)].read_rng = read_noise_rng(cfg, key)
        for t, addr, vals, cnt in prog.mem_init:
            self._write(t, addr, np.broadcast_to(np.asarray(vals, np.int64),
                                                 (batch, len(vals))), cnt)

    # ---- memory sync ------------------------------------------------------------------
    def _write(self, t, addr, vals, cnt):
        self.version[t] += 1
        sl = slice(addr, addr + vals.shape[1])
        self.mem[t][:, sl] = vals
        self.count[t][sl] = cnt
        self.valid[t][sl] = True

    def _can_read(self, t, addr, vec) -> bool:
        return bool(self.valid[t][addr:addr + vec].all())

    def _can_write(self, t, addr, vec) -> bool:
        return not self.valid[t][addr:addr + vec].any()

    def _read(self, t, addr, vec) -> np.ndarray:
        sl = slice(addr, addr + vec)
        out = self.mem[t][:, sl].copy()
        cnt = self.count[t][sl]
        counted = cnt != PERSISTENT
        if counted.any():
            cnt[counted] -= 1
            self.valid[t][sl] &= ~(counted & (cnt == 0))
            self.version[t] += 1
        return out

    # ---- execution --------------------------------------------------------------------
    def run(self) -> None:
        """Round-robin over the agents, each until it blocks. An agent blocked on its tile
        is not retried until that tile's memory or message queues changed (``version``)."""
        n_agents = len(self.pc)
        tile_of = self.tile_of
        seen = [-1] * n_agents
        version = self.version
        while not self.halted.all():
            progress = False
            for a in range(n_agents):
                if self.halted[a]:
                    continue
                t = tile_of[a]
                if self.waiting[a] is not None and seen[a] == version[t]:
                    continue
                seen[a] = version[t]
                progress |= self._run_agent(a)
            if not progress:
                self._deadlock()

    def _code(self, a: int) -> list[tuple]:
        """Agent ``a``'s stream as plain tuples (decoded once; numpy rows are slow)."""
        dec = self.prog.derived("decoded")
        code = (self.prog.core_code[a] if a < self.n_core_agents
                else self.prog.tile_code[a - self.n_core_agents])
        if a not in dec or dec[a][0] is not code:    # a stream replaced in the list
            dec[a] = (code, code.tolist())
        return dec[a][1]

    def _run_agent(self, a: int) -> bool:
        """Run agent ``a`` until it blocks or halts; True if it executed anything.

        The ISA's semantics, one opcode per branch (see :mod:`simulator.isa`); the hot
        path is kept inline because a program executes millions of these."""
        code = self._code(a)
        n = len(code)
        ireg = self.iregs[a]
        tile = self.tile_of[a]
        regs = self.regs[a] if a < self.n_core_agents else None
        valid, count, mem = self.valid[tile], self.count[tile], self.mem[tile]
        words = len(count)
        size = self.lay.size
        pc = int(self.pc[a])
        ran = False
        executed = 0
        try:
            while True:
                if pc >= n:
                    self.halted[a] = True
                    return True
                op, fn, dst, src1, src2, vec, imm, mask, cnt, ra, rr, peer, _ = code[pc]
                nxt = pc + 1
                if op == _LOAD or op == _STORE or op == _SEND or op == _RECV:
                    addr = imm + (int(ireg[ra]) if ra >= 0 else 0)
                    if addr < 0 or addr + vec > words:
                        self.pc[a] = pc
                        raise SimulationError(
                            f"{self._name(a)} pc {pc}: memory address {addr} (+{vec}) outside "
                            f"tile {tile}'s {words} words")
                    if op == _LOAD:
                        if not valid[addr:addr + vec].all():
                            self.waiting[a] = {"wait": "load", "tile": tile, "addr": addr,
                                               "vec": vec}
                            return ran
                        d = dst + (int(ireg[rr]) if rr >= 0 else 0)
                        if d < 0 or d + vec > size:
                            self.pc[a] = pc
                            self._check_reg(a, d, vec)
                        regs[:, d:d + vec] = self._read(tile, addr, vec)
                    elif op == _STORE:
                        if valid[addr:addr + vec].any():
                            self.waiting[a] = {"wait": "store", "tile": tile, "addr": addr,
                                               "vec": vec}
                            return ran
                        sr = src1 + (int(ireg[rr]) if rr >= 0 else 0)
                        if sr < 0 or sr + vec > size:
                            self.pc[a] = pc
                            self._check_reg(a, sr, vec)
                        mem[:, addr:addr + vec] = regs[:, sr:sr + vec]
                        count[addr:addr + vec] = cnt
                        valid[addr:addr + vec] = True
                        self.version[tile] += 1
                    elif op == _SEND:
                        q = self.queues.setdefault((tile, peer, dst), deque())
                        readable = bool(valid[addr:addr + vec].all())
                        if len(q) >= self.cfg.tile.recv_buffer or not readable:
                            why = "send (receive buffer full)" if readable else "send"
                            self.waiting[a] = {"wait": why, "tile": tile, "addr": addr,
                                               "vec": vec}
                            return ran
                        q.append(self._read(tile, addr, vec))
                        self.version[peer] += 1
                    else:
                        q = self.queues.setdefault((peer, tile, dst), deque())
                        if not q or valid[addr:addr + vec].any():
                            self.waiting[a] = {"wait": "recv", "tile": tile, "addr": addr,
                                               "vec": vec, "from_tile": peer}
                            return ran
                        if q[0].shape[1] != vec:
                            raise SimulationError(
                                f"{self._name(a)} pc {pc}: recv of {vec} words got a message "
                                f"of {q[0].shape[1]} from tile {peer} (FIFO {dst})")
                        self._write(tile, addr, q.popleft(), cnt)
                        self.version[peer] += 1
                elif op == _ALU:
                    regs[:, dst:dst + vec] = alu(fn, regs[:, src1:src1 + vec],
                                                 regs[:, src2:src2 + vec], imm)
                elif op == _ALUI:
                    regs[:, dst:dst + vec] = alu(fn, regs[:, src1:src1 + vec], imm, imm)
                elif op == _IADD:
                    # wraps modulo 2**64 (isa.py), as the timing engine's int64 does; in
                    # Python ints, so numpy has no overflow to warn of
                    ireg[dst] = ((int(ireg[src1]) + imm + _INT64_HALF) & _INT64_MASK) - _INT64_HALF
                elif op == _BNE:
                    if ireg[src1] != ireg[src2]:
                        nxt = imm
                elif op == _MVM:
                    self._mvm(a, tile, mask)
                elif op == _COPY:
                    regs[:, dst:dst + vec] = regs[:, src1:src1 + vec]
                elif op == _SET:
                    regs[:, dst:dst + vec] = imm
                elif op == _ISET:
                    ireg[dst] = imm
                elif op == _BEQ:
                    if ireg[src1] == ireg[src2]:
                        nxt = imm
                elif op == _JMP:
                    nxt = imm
                elif op == _HLT:
                    self.halted[a] = True
                    pc = nxt
                    executed += 1
                    return True
                elif op != _NOP:
                    raise SimulationError(f"{self._name(a)} pc {pc}: opcode {op} cannot run "
                                          f"here")
                ran = True
                self.waiting[a] = None
                pc = nxt
                executed += 1
                if self.executed + executed > self.budget:
                    raise SimulationError(
                        f"program exceeded {self.budget} executed instructions (runaway "
                        f"loop?) at {self._name(a)} pc {pc}")
        finally:
            self.pc[a] = pc
            self.executed += executed

    def _name(self, a: int) -> str:
        return self.prog.agent_name(a)

    def _check_reg(self, a, reg, vec):
        if reg < 0 or reg + vec > self.lay.size:
            raise SimulationError(f"{self._name(a)} pc {self.pc[a]}: register {reg} (+{vec}) "
                                  f"outside the core's {self.lay.size} registers")

    def _mvm(self, a: int, tile: int, mask: int) -> None:
        core = a % self.cores
        regs = self.regs[a]
        lay = self.lay
        fused = self._fused(tile, core, mask)
        if fused is not None:
            # All masked MVMUs are lossless and contiguous: one stacked product.
            m0, m1, mats = fused
            B, k = regs.shape[0], m1 - m0
            x = regs[:, lay.xin_of(m0):lay.xin_of(m1)].reshape(B, k, lay.rows)
            x = wrap_inputs(x, self.cfg.input_bits)
            y = np.matmul(x.transpose(1, 0, 2).astype(np.float64), mats)     # (k, B, C)
            regs[:, lay.xout_of(m0):lay.xout_of(m1)] = np.rint(
                y.transpose(1, 0, 2).reshape(B, k * lay.cols)).astype(np.int64)
            return
        for m in range(self.cfg.core.mvmus):
            if mask >> m & 1:
                model = self.mvmus[(tile, core, m)]
                x = regs[:, lay.xin_of(m):lay.xin_of(m) + lay.rows]
                regs[:, lay.xout_of(m):lay.xout_of(m) + lay.cols] = model.mvm(x)

    def _fused(self, tile: int, core: int, mask: int):
        """(first, end, stacked W (k, R, C)) for a contiguous mask of lossless MVMUs,
        cached on the program; None when any of them needs the bit-serial path."""
        cache = self.prog.derived("fused_mvm")
        key = (tile, core, mask, self.exact_shortcut)
        if key not in cache:
            ms = [m for m in range(self.cfg.core.mvmus) if mask >> m & 1]
            models = [self.mvmus.get((tile, core, m)) for m in ms]
            ok = (len(ms) > 1 and ms == list(range(ms[0], ms[-1] + 1))
                  and all(md is not None and md.lossless for md in models))
            if not ok:
                cache[key] = None
            else:
                R, C = self.lay.rows, self.lay.cols
                mats = np.zeros((len(ms), R, C))
                for k, md in enumerate(models):
                    mats[k, :md.rows, :md.cols] = md.wmat   # undriven rows/cols stay 0
                cache[key] = (ms[0], ms[-1] + 1, mats)
        return cache[key]

    def _deadlock(self):
        stuck = []
        for a in range(len(self.pc)):
            if not self.halted[a]:
                w = dict(self.waiting[a] or {"wait": "?"})
                w.update(agent=self._name(a), pc=int(self.pc[a]))
                stuck.append(w)
        desc = "; ".join(f"{s['agent']} pc {s['pc']} waits to {s['wait']} tile {s.get('tile')} "
                         f"addr {s.get('addr')}" for s in stuck[:8])
        more = f" (+{len(stuck) - 8} more)" if len(stuck) > 8 else ""
        raise DeadlockError(f"deadlock: {len(stuck)} unfinished agents can never proceed: "
                            f"{desc}{more}", stuck)


def quantize_input(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """Real values -> signed ``bits``-bit integers of step ``scale`` (round half to even)."""
    lim = 1 << (bits - 1)
    return np.clip(np.rint(np.asarray(x, np.float64) / scale), -lim, lim - 1).astype(np.int64)


def check_input(name: str, x, error: type[Exception] = SimulationError) -> np.ndarray:
    """``x`` as an array if it is a usable input batch: batch first, at least one sample,
    real numbers, all finite; else ``error`` naming the input."""
    x = np.asarray(x)
    if x.ndim == 0:
        raise error(f"input {name!r} is a scalar; inputs are batch first (N, ...)")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
            or x.dtype == bool):
        raise error(f"input {name!r} has dtype {x.dtype}; inputs are real numbers")
    if len(x) == 0:
        raise error(f"input {name!r} has an empty batch (shape {x.shape}); give >= 1 sample")
    if not np.isfinite(x).all():
        raise error(f"input {name!r} holds {int((~np.isfinite(x)).sum())} NaN/inf values")
    return x


def check_inputs(prog: Program, inputs: Mapping[str, np.ndarray] | None,
                 batch: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """``inputs`` (None: none) as checked arrays, one per program input, each
    (batch, *its shape), and the batch (the first input's length unless given; 1 with no
    inputs); else SimulationError naming the culprit and what is expected."""
    names = [p.name for p in prog.inputs]
    if inputs is None:
        inputs = {}
    elif not isinstance(inputs, Mapping):
        raise SimulationError(f"inputs: got {type(inputs).__name__}; expected a dict of arrays "
                              f"by input name ({', '.join(names) or 'none'}), batch first")
    unknown = set(inputs) - set(names)
    if unknown:
        raise SimulationError(f"unknown input {sorted(unknown)[0]!r}; the program's inputs are "
                              f"{', '.join(names) or 'none'}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise SimulationError(f"missing input {missing[0]!r} (inputs: {', '.join(names)})")
    inputs = {k: check_input(k, v) for k, v in inputs.items()}
    if batch is None:
        batch = len(next(iter(inputs.values()))) if inputs else 1
    for port in prog.inputs:
        x = inputs[port.name]
        if x.shape[1:] != tuple(port.shape) or len(x) != batch:
            same_n = f" (N = {batch}, as the other inputs)" if len(prog.inputs) > 1 else ""
            raise SimulationError(f"input {port.name!r} has shape {x.shape}; expected "
                                  f"(N, {', '.join(map(str, port.shape))}){same_n}: a batch "
                                  f"axis first")
    return inputs, batch


def run_values(prog: Program, inputs: dict[str, np.ndarray] | None = None,
               batch: int | None = None, exact_shortcut: bool = True) -> dict[str, np.ndarray]:
    """Run ``prog`` on real-valued inputs (one array per program input, batch first).
    ``exact_shortcut=False`` forces every MVM through the bit-serial ADC path even where
    the ADC provably cannot lose information (same results, slower; for benchmarking).

    Returns the outputs as real values (integer words times each output's scale) plus,
    under ``name + ':int'``, the raw integers."""
    return run_checked_values(prog, *check_inputs(prog, inputs, batch), exact_shortcut)


def run_checked_values(prog: Program, inputs: dict[str, np.ndarray], batch: int,
                       exact_shortcut: bool = True) -> dict[str, np.ndarray]:
    """:func:`run_values` on inputs :func:`check_inputs` has checked (not again)."""
    eng = ValueEngine(prog, batch, exact_shortcut=exact_shortcut)
    for port in prog.inputs:
        x = inputs[port.name]
        q = quantize_input(x.reshape(batch, -1), port.scale, prog.config.input_bits)
        a = port.addresses()
        eng.mem[port.tile][:, a] = q
        eng.count[port.tile][a] = port.count
        eng.valid[port.tile][a] = True
    eng.run()
    out = {}
    for port in prog.outputs:
        a = port.addresses()
        if not eng.valid[port.tile][a].all():
            raise SimulationError(f"output {port.name!r} was never (fully) written: tile "
                                  f"{port.tile} addr {port.addr} (+{port.size})")
        q = eng.mem[port.tile][:, a].reshape((batch,) + tuple(port.shape))
        out[port.name + ":int"] = q
        out[port.name] = q.astype(np.float64) * port.scale
    return out
