"""Run a Program: the timing engine for time and counts, the value engine for outputs,
the cost tables for energy and area; returns a :class:`~simulator.report.Report`."""
from __future__ import annotations

import os
import time

import numpy as np

from . import costs
from .errors import DeadlockError, SimulationError
from .functional import check_inputs, run_checked_values
from .isa import INSTR_DTYPE, TRANSCENDENTAL_FNS, UNARY_FNS, Op
from .program import Program
from .report import Report, build_report, check_reference
from .timing import (_SHIFT as AGENT_BITS, BAD_ADDRESS, BAD_MESSAGE, BAD_REGISTER, DEADLOCK,
                     N_COUNTERS, OK, RUNAWAY, TIME_LIMIT, TIME_LIMIT_BITS, UNRECEIVED, W_RECV,
                     W_SEND_FULL, WAIT_NAMES, run_timing)

# ~37x the most a compiled model here executes (DenseNet-121 at 224x224: 6.8 M); a runaway
# loop that touches memory runs ~6 M instructions/s, so it is stopped in under a minute
DEFAULT_MAX_INSTRUCTIONS = 250_000_000
DEFAULT_TRACE_CAP = 200_000   # trace events kept: ~40 MB of trace JSON
MAX_TRACE_CAP = 50_000_000    # 2 GB of events in memory, ~10 GB of JSON


def mvmu_tables(prog: Program):
    """Per (core, MVMU): latency in cycles, per-MVM counts, and the ADC bits charged."""
    cfg = prog.config
    n_cores = prog.n_tiles * cfg.tile.cores
    nm = cfg.core.mvmus
    lat = np.zeros((n_cores, nm), np.int64)
    stats = np.zeros((n_cores, nm, 3), np.int64)
    bits = np.zeros((n_cores, nm), np.int64)
    per_step = cfg.arrays * cfg.slices
    steps = cfg.input_steps
    for i, (t, c, m) in enumerate(prog.mvmu_loc.tolist()):
        k = t * cfg.tile.cores + c
        adc_bits = prog.adc_bits_of(i)
        cols, rows = int(prog.mvmu_cols_used[i]), int(prog.mvmu_rows_used[i])
        lat[k, m] = costs.mvm_cycles(cfg, cols, adc_bits, rows)
        # Partial reads (xbar.active_rows) convert every column once per read; the array's
        # read energy is counted in whole-array reads (each row is driven once per step).
        reads = cfg.reads_per_step(rows)
        stats[k, m] = (per_step * steps, rows * per_step * steps,
                       cols * per_step * steps * reads)
        bits[k, m] = costs.cost_bits(cfg, adc_bits)
    return lat, stats, bits


def channels(prog: Program, flat: np.ndarray, starts: np.ndarray):
    """Each send/recv's channel (sending tile, receiving tile, FIFO): (index per instruction,
    -1 elsewhere; the channels' (src, dst, fifo) rows). Both ends of a channel see its
    messages in order, and a full or empty channel holds up no other channel's messages
    (channels still share control streams, NoC links and memory ports)."""
    tiles = prog.agent_tiles()
    tile_of = np.repeat(tiles, np.diff(starts))
    op = flat["op"].astype(np.int64)
    peer = flat["peer"].astype(np.int64)
    fifo = flat["dst"].astype(np.int64)
    is_send, is_recv = op == int(Op.SEND), op == int(Op.RECV)
    moves = is_send | is_recv
    keys = np.stack([np.where(is_send, tile_of, peer), np.where(is_send, peer, tile_of),
                     fifo], 1)[moves]
    rows, idx = np.unique(keys, axis=0, return_inverse=True)
    chan = np.full(len(flat), -1, np.int64)
    chan[moves] = idx.reshape(-1)
    return chan, rows.reshape(-1, 3), tiles


def run_timing_engine(prog: Program, trace_cap: int = 0,
                      max_instructions: int = DEFAULT_MAX_INSTRUCTIONS):
    """Timing + counts of one inference. Raises DeadlockError / SimulationError."""
    cfg = prog.config
    streams = list(prog.core_code) + list(prog.tile_code)
    if len(streams) >= 1 << AGENT_BITS:   # an agent's index shares a 64-bit key with time
        raise SimulationError(f"{len(streams)} agents (cores and tile control streams): the "
                              f"timing engine runs fewer than {1 << AGENT_BITS}; use fewer "
                              f"tiles, cores per tile or tile.control_streams")
    flat = np.concatenate(streams) if streams else np.zeros(0, INSTR_DTYPE)
    starts = np.concatenate([[0], np.cumsum([len(s) for s in streams])]).astype(np.int64)
    chan, chan_rows, agent_tiles = channels(prog, flat, starts)
    ctrl_order = np.argsort(prog.control_tiles, kind="stable")
    ctrl_agent = (len(prog.core_code) + ctrl_order).astype(np.int64)
    ctrl_start = np.searchsorted(prog.control_tiles[ctrl_order],
                                 np.arange(prog.n_tiles + 1)).astype(np.int64)
    lay = prog.layout
    tile_words = prog.mem_words.astype(np.int64)
    tile_base = np.concatenate([[0], np.cumsum(tile_words)[:-1]]).astype(np.int64)
    total = int(tile_words.sum())
    params = np.array([cfg.core.mvmus, lay.xout, lay.gp, lay.rows, lay.cols, cfg.core.vfu_lanes,
                       cfg.tile.mem_ports, cfg.tile.port_words, cfg.tile.mem_latency,
                       cfg.tile.recv_buffer, cfg.node.mesh_width, cfg.node.hop_cycles,
                       cfg.node.router_cycles, cfg.node.flit_words, max_instructions, lay.size,
                       cfg.core.int_registers], np.int64)
    lat, stats, bits = mvmu_tables(prog)
    valid = np.zeros(total, np.bool_)
    cnt = np.zeros(total, np.int32)
    for t, addr, vals, c in prog.mem_init:
        b = tile_base[t] + addr
        valid[b:b + len(vals)] = True
        cnt[b:b + len(vals)] = c
    for port in prog.inputs:  # the host writes inputs before the run starts
        a = tile_base[port.tile] + port.addresses()
        valid[a] = True
        cnt[a] = port.count
    vtime = np.zeros(total, np.int64)
    ftime = np.zeros(total, np.int64)
    n_layers = len(prog.layers) + 1
    counters = np.zeros((n_layers, N_COUNTERS), np.int64)
    # one column per ADC width charged (0..widest; an ideal ADC is costed at its
    # worst-case width, which can pass 32 bits)
    adc_by_bits = np.zeros((n_layers, max(33, int(bits.max(initial=0)) + 1)), np.int64)
    span = np.full((n_layers, 2), -1, np.int64)
    span[:, 1] = 0
    trace = np.zeros((max(trace_cap, 1), 5), np.int64)
    transc = np.zeros(64, np.bool_)
    for f in TRANSCENDENTAL_FNS:
        transc[int(f)] = True
    unary = np.zeros(64, np.bool_)
    for f in UNARY_FNS:
        unary[int(f)] = True
    f = {k: np.ascontiguousarray(flat[k]).astype(np.int64) for k in INSTR_DTYPE.names}
    status, end, info, tlen = run_timing(
        f["op"], f["fn"], f["dst"], f["src1"], f["src2"], f["vec"], f["imm"], f["mask"],
        f["count"], f["ra"], f["rr"], f["peer"], f["layer"], chan, starts, agent_tiles,
        ctrl_start, ctrl_agent, len(chan_rows), prog.n_tiles, cfg.tile.cores, params,
        tile_base, tile_words, lat, stats, bits, valid, cnt, vtime, ftime, counters,
        adc_by_bits, span, trace, trace_cap, transc, unary)
    _raise_for_status(prog, status, info, streams, chan_rows, max_instructions)
    return {"end": int(end), "counters": counters, "adc_by_bits": adc_by_bits, "span": span,
            "trace": trace[:tlen].copy(), "mvm_latency": lat}


def _raise_for_status(prog, status, info, streams, chan_rows, max_instructions):
    if status == OK:
        return
    if status == DEADLOCK:
        stuck = []
        for k in range(len(info) // 5):
            a, pc, kind, tile, addr = (int(v) for v in info[5 * k:5 * k + 5])
            op = Op(int(streams[a][pc]["op"])).name.lower() if pc < len(streams[a]) else "end"
            s = {"agent": prog.agent_name(a), "pc": pc, "instruction": op,
                 "wait": WAIT_NAMES[kind], "tile": tile, "addr": addr}
            if kind in (W_SEND_FULL, W_RECV):
                # the engine records the other end; the address is in the agent's own tile
                s.update(tile=prog.agent_tile(a), peer=tile, fifo=int(streams[a][pc]["dst"]))
            stuck.append(s)
        desc = "; ".join(
            f"{s['agent']} pc {s['pc']} ({s['instruction']}) waits: {s['wait']}, "
            + (f"{'to' if s['instruction'] == 'send' else 'from'} tile {s['peer']} FIFO "
               f"{s['fifo']}, " if "peer" in s else "") + f"tile {s['tile']} addr {s['addr']}"
            for s in stuck[:6])
        more = f" (+{len(stuck) - 6} more)" if len(stuck) > 6 else ""
        raise DeadlockError(f"deadlock: {len(stuck)} agent(s) can never proceed: {desc}{more}",
                            stuck)
    if status == UNRECEIVED:
        src, dst, fifo = (int(v) for v in chan_rows[int(info[0])])
        raise SimulationError(f"tile {src} sent {int(info[1])} message(s) to tile {dst} "
                              f"(FIFO {fifo}) that no recv consumed; every send needs a "
                              f"matching recv on the receiving tile")
    a, pc = int(info[0]), int(info[1])
    start = sum(len(s) for s in streams[:a])
    where = f"{prog.agent_name(a)} pc {pc - start}"
    if status == RUNAWAY:
        raise SimulationError(f"program exceeded its budget of {max_instructions} executed "
                              f"instructions (a runaway loop? an instruction retried after "
                              f"blocking counts again) at {where}; a program that needs more: "
                              f"simulate(..., max_instructions=N)")
    if status == BAD_ADDRESS:
        raise SimulationError(f"{where}: memory address {int(info[2])} outside the tile's "
                              f"memory")
    if status == BAD_REGISTER:
        raise SimulationError(f"{where}: register {int(info[2])} (offset by its rr register) "
                              f"and its vector leave the core's {prog.layout.size} registers")
    if status == BAD_MESSAGE:
        raise SimulationError(f"{where}: recv width differs from the message's "
                              f"{int(info[2])} words")
    if status == TIME_LIMIT:
        raise SimulationError(f"{where}: simulated time passed 2**{TIME_LIMIT_BITS} cycles "
                              f"(the timing engine's limit)")
    raise SimulationError(f"timing engine failed with status {status}")


def simulate(prog: Program, inputs: dict[str, np.ndarray] | None = None, *,
             values: bool = True, trace: bool = False, trace_cap: int = DEFAULT_TRACE_CAP,
             reference: dict[str, np.ndarray] | None = None,
             exact_shortcut: bool = True,
             max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> Report:
    """Simulate one inference of ``prog`` (timing, energy, area) and, when ``values`` and
    inputs are given (or the program has none), compute its outputs bit-exactly for the
    whole batch of ``inputs``. ``reference``: expected outputs to report the error against.
    ``max_instructions``: the timing engine's budget, which stops a runaway loop.
    """
    # the arguments are checked before the timing engine runs, not after it
    if not isinstance(prog, Program):
        hint = (" (a program folder: load it with Program.load)"
                if isinstance(prog, (str, os.PathLike)) else "")
        raise SimulationError(f"prog: got {type(prog).__name__}{hint}; expected a Program")
    computes_outputs = values and (inputs is not None or not prog.inputs)
    if inputs is not None or computes_outputs:
        inputs, batch = check_inputs(prog, inputs)
    if reference is not None:
        if not computes_outputs:
            raise SimulationError("reference: no outputs to compare it with; simulate computes "
                                  "them with values=True and the program's inputs")
        check_reference(prog, reference, batch)
    if trace and (isinstance(trace_cap, bool) or not isinstance(trace_cap, (int, np.integer))
                  or not 1 <= trace_cap <= MAX_TRACE_CAP):
        # the events are held in memory, 40 bytes each, before any is written
        raise SimulationError(f"trace_cap = {trace_cap!r}: must be an integer from 1 to "
                              f"{MAX_TRACE_CAP} (the most trace events kept)")
    t0 = time.perf_counter()
    # one event past the cap tells a cut trace from one that just fills it
    timing = run_timing_engine(prog, int(trace_cap) + 1 if trace else 0, max_instructions)
    t1 = time.perf_counter()
    outputs = None
    if computes_outputs:   # else timing and energy only: they do not depend on the values
        outputs = run_checked_values(prog, inputs, batch, exact_shortcut)
    t2 = time.perf_counter()
    rep = build_report(prog, timing, outputs, reference)
    if trace:
        rep.trace_truncated = len(rep.trace_events) > trace_cap
        rep.trace_events = rep.trace_events[:trace_cap]
    else:
        rep.trace_events = None     # none recorded: save_trace says so instead of writing []
    rep.sim_wall_s = time.perf_counter() - t0
    rep.timing_wall_s = t1 - t0
    rep.values_wall_s = t2 - t1
    return rep


__all__ = ["simulate", "run_timing_engine", "Report", "SimulationError"]
