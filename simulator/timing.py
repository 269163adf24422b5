"""The timing engine: event-driven, numba-compiled, over a Program's instruction streams.

Timing does not depend on data values, so this engine carries no values: only program
counters, integer registers (loop counters, addresses), the valid/count state of tile
memory words, message queues, and the times at which each resource becomes free.

Agents are the cores (index ``tile * cores + core``) and the tiles' control streams
(send / receive; one or more per tile, after the cores). A heap orders agents by their next
issue time; an agent runs instructions that touch only its own state (integer ops,
branches, VFU, mvm) without going through the heap, and yields before one that touches
shared state (tile memory, NoC) unless it is the earliest agent. Contention: an MVMU is busy
until its MVM completes; a core's VFU runs one op at a time; each tile-memory port serves
one request per cycle; each directed NoC link carries one flit per cycle; a receive buffer
holds ``tile.recv_buffer`` messages per channel (sending tile, receiving tile, FIFO). A load
waits for valid words, a store for free ones; when nothing can move and some agent has not
halted, the run ends as a deadlock naming the stuck agents and addresses.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .isa import Op

# Counter columns of the per-layer count table.
C_XBAR, C_DAC, C_ADC, C_SHADD, C_VFU, C_EDRAM, C_NOC, C_INSTR, C_MVM, C_RD, C_WR, C_PKT = range(12)
N_COUNTERS = 12
COUNTER_NAMES = ("crossbar_reads", "dac_conversions", "adc_conversions", "shift_add_ops",
                 "vfu_element_ops", "edram_accesses", "noc_flit_hops", "instructions",
                 "mvm_ops", "mem_words_read", "mem_words_written", "packets")

# Status codes.
OK, DEADLOCK, RUNAWAY, BAD_ADDRESS, BAD_MESSAGE, BAD_REGISTER, UNRECEIVED, TIME_LIMIT = range(8)
# Wait kinds (for deadlock reports).
W_NONE, W_LOAD, W_STORE, W_SEND_FULL, W_RECV = 0, 1, 2, 3, 4
WAIT_NAMES = {W_NONE: "?", W_LOAD: "load (words not valid)",
              W_STORE: "store (words not yet consumed)",
              W_SEND_FULL: "send (receiver's buffer full)", W_RECV: "recv (no message)"}

_OP_LOAD, _OP_STORE, _OP_SEND, _OP_RECV = int(Op.LOAD), int(Op.STORE), int(Op.SEND), int(Op.RECV)
_OP_NOP, _OP_HLT, _OP_COPY, _OP_SET = int(Op.NOP), int(Op.HLT), int(Op.COPY), int(Op.SET)
_OP_ALU, _OP_ALUI, _OP_MVM = int(Op.ALU), int(Op.ALUI), int(Op.MVM)
_OP_ISET, _OP_IADD, _OP_JMP, _OP_BEQ, _OP_BNE = (int(Op.ISET), int(Op.IADD), int(Op.JMP),
                                                 int(Op.BEQ), int(Op.BNE))
_SHIFT = 20  # heap key = time << _SHIFT | agent
#: Simulated cycles a heap key holds: an agent at a later time is not queued (its key would
#: wrap negative, read as stale, and the run end as a false deadlock).
TIME_LIMIT_BITS = 63 - _SHIFT


@nb.njit(cache=True)
def _heap_push(heap, size, key):
    i = size
    heap[i] = key
    while i > 0:
        p = (i - 1) >> 1
        if heap[p] <= heap[i]:
            break
        heap[p], heap[i] = heap[i], heap[p]
        i = p
    return size + 1


@nb.njit(cache=True)
def _heap_pop(heap, size):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        if left + 1 < size and heap[left + 1] < heap[left]:
            c = left + 1
        if heap[i] <= heap[c]:
            break
        heap[i], heap[c] = heap[c], heap[i]
        i = c
    return top, size


@nb.njit(cache=True)
def _mvmu_wait(reg, vec, xout0, gp0, rows, cols, nm, mvmu_free, core):
    """Latest busy-until time of the MVMUs whose in/out registers overlap [reg, reg+vec)."""
    t = 0
    lo, hi = reg, reg + vec
    if lo < xout0:  # input registers
        a = lo // rows
        b = min(hi, xout0) - 1
        b = b // rows
        for m in range(a, min(b, nm - 1) + 1):
            t = max(t, mvmu_free[core, m])
    if hi > xout0 and lo < gp0:  # output registers
        a = (max(lo, xout0) - xout0) // cols
        b = (min(hi, gp0) - 1 - xout0) // cols
        for m in range(a, min(b, nm - 1) + 1):
            t = max(t, mvmu_free[core, m])
    return t


@nb.njit(cache=True)
def _wake_tile(tile, now, cores, ctrl_start, ctrl_agent, state, t_agent, heap, hsize):
    """Blocked agents of ``tile`` retry, no earlier than ``now``: the waker's issue time, which
    keeps shared operations in time order. When the retried access starts is then up to its
    data's own times (``vtime``/``ftime``), not the waker's (possibly far later) start."""
    n_ctrl = ctrl_start[tile + 1] - ctrl_start[tile]
    for k in range(cores + n_ctrl):
        a = tile * cores + k if k < cores else ctrl_agent[ctrl_start[tile] + k - cores]
        if state[a] == 1:
            state[a] = 0
            if t_agent[a] < now:
                t_agent[a] = now
            hsize = _heap_push(heap, hsize, (t_agent[a] << _SHIFT) | a)
    return hsize


@nb.njit(cache=True)
def _trace(trace, tlen, cap, agent, start, end, op, layer):
    """Record one timeline event while there is room; returns the new length."""
    if tlen < cap:
        trace[tlen, 0] = agent
        trace[tlen, 1] = start
        trace[tlen, 2] = end
        trace[tlen, 3] = op
        trace[tlen, 4] = layer
        tlen += 1
    return tlen


#: Future bookings a memory port or NoC link remembers. A request processed now may be
#: ready long before one processed earlier (a store that waits for its MVM): it takes the
#: earliest free gap, not the time after the last booking. Past this many live bookings the
#: two neighbours with the smallest gap between them merge into one span covering both (that
#: gap is given up: conservative, and the least; merging the two earliest gave up exactly the
#: near gaps the next requests need). The list may then hold a booking inside a span, which
#: the gap search steps over.
BOOKINGS = 32


@nb.njit(cache=True)
def _earliest_gap(b_start, b_end, n_book, r, ready, dur, now):
    """The earliest start >= ``ready`` of ``dur`` free cycles on resource ``r``. Bookings
    that ended by ``now`` are dropped first: requests are processed in time order, so none
    later is ready before ``now``."""
    k = 0
    for i in range(n_book[r]):
        if b_end[r, i] > now:
            b_start[r, k] = b_start[r, i]
            b_end[r, k] = b_end[r, i]
            k += 1
    n_book[r] = k
    s = ready
    for i in range(k):   # bookings sorted by start (a merged span may hold others)
        if s + dur <= b_start[r, i]:
            break
        if b_end[r, i] > s:
            s = b_end[r, i]
    return s


@nb.njit(cache=True)
def _book(b_start, b_end, n_book, r, s, dur):
    """Book [s, s + dur) on resource ``r`` (a gap :func:`_earliest_gap` found)."""
    if dur <= 0:
        return
    k = n_book[r]
    if k == b_start.shape[1]:    # full: merge the neighbours the least free time parts
        j = 0
        for i in range(1, k - 1):   # ties to the later pair: near gaps stay free
            if b_start[r, i + 1] - b_end[r, i] <= b_start[r, j + 1] - b_end[r, j]:
                j = i
        # max: one may lie inside the other, booked in a gap
        b_end[r, j] = max(b_end[r, j], b_end[r, j + 1])
        for i in range(j + 1, k - 1):
            b_start[r, i] = b_start[r, i + 1]
            b_end[r, i] = b_end[r, i + 1]
        k -= 1
    i = k
    while i > 0 and b_start[r, i - 1] > s:
        b_start[r, i] = b_start[r, i - 1]
        b_end[r, i] = b_end[r, i - 1]
        i -= 1
    b_start[r, i] = s
    b_end[r, i] = s + dur
    n_book[r] = k + 1


#: Receive-buffer slots per channel allocated at the start; all channels' rings double
#: together while the busiest channel has sent as many messages as they hold.
RING_SLOTS = 16


@nb.njit(cache=True)
def _grown(ring, slots):
    """``ring`` (a row per channel) widened to ``slots``, each message in its slot."""
    out = np.zeros((ring.shape[0], slots), np.int64)
    out[:, :ring.shape[1]] = ring
    return out


@nb.njit(cache=True)
def run_timing(op, fn, dst, src1, src2, vec, imm, mask, count, ra, rr, peer, layer, chan,
               agent_start, agent_tile, ctrl_start, ctrl_agent, n_chan, n_tiles,
               cores, params, tile_base, tile_words, mvm_lat, mvm_stats, mvm_bits, valid, cnt,
               vtime, ftime, counters, adc_by_bits, layer_span, trace, trace_cap,
               fn_transcendental, fn_unary):
    """Run all agents to completion. Returns (status, end_time, info array, trace_len);
    info names the culprit of a failed run, and holds the receive-buffer slots allocated
    per channel after a successful one: up to the most messages any one channel sends in
    the run (rounded up to RING_SLOTS times a power of two), at most tile.recv_buffer.

    chan[p]: the channel (0..n_chan-1) a send/recv moves through.
    agent_tile[a]: each agent's tile; ctrl_agent[ctrl_start[t]:ctrl_start[t + 1]]: tile t's
    control streams (agents).

    params: [nm, xout0, gp0, rows, cols, lanes, nports, port_words, mem_lat, recv_cap,
             mesh_w, hop_cycles, router_cycles, flit_words, max_instr, n_regs, n_int]
    mvm_stats[core, m, :] = crossbar reads, dac conversions, adc conversions per MVM.
    """
    nm, xout0, gp0, rows, cols = params[0], params[1], params[2], params[3], params[4]
    lanes, nports, port_words, mem_lat = params[5], params[6], params[7], params[8]
    recv_cap, mesh_w, hop_cycles, router_cycles = params[9], params[10], params[11], params[12]
    flit_words, max_instr, n_regs, n_int = params[13], params[14], params[15], params[16]

    n_core_agents = n_tiles * cores
    n_agents = len(agent_start) - 1
    pc = np.zeros(n_agents, np.int64)
    for a in range(n_agents):
        pc[a] = agent_start[a]
    ireg = np.zeros((n_agents, n_int), np.int64)
    t_agent = np.zeros(n_agents, np.int64)
    state = np.zeros(n_agents, np.int64)      # 0 ready/queued, 1 blocked, 2 halted
    wait_kind = np.zeros(n_agents, np.int64)
    wait_tile = np.zeros(n_agents, np.int64)
    wait_addr = np.zeros(n_agents, np.int64)
    mvmu_free = np.zeros((max(n_core_agents, 1), max(nm, 1)), np.int64)
    # memory ports (tile * nports + port) and NoC links (router * 4 + direction)
    port_start = np.zeros((n_tiles * nports, BOOKINGS), np.int64)
    port_end = np.zeros((n_tiles * nports, BOOKINGS), np.int64)
    port_n = np.zeros(n_tiles * nports, np.int64)
    n_links = max(mesh_w * ((n_tiles - 1) // mesh_w + 1) * 4, 1)
    link_start = np.zeros((n_links, BOOKINGS), np.int64)
    link_end = np.zeros((n_links, BOOKINGS), np.int64)
    link_n = np.zeros(n_links, np.int64)
    # Each channel's buffer is a ring of recv_cap slots (recv_cap may be set huge to mean
    # unbounded). Only ring_len of them are allocated, shared by all channels, doubled when
    # any channel has sent ring_len messages in all (received or not): so up to the most
    # messages any one channel sends in the run, at most recv_cap. Below recv_cap, no
    # channel has sent more messages than the ring holds, so message k is in slot k as in
    # the full ring and the times are those of the full ring.
    ring_len = min(recv_cap, RING_SLOTS)
    ring_arr = np.zeros((max(n_chan, 1), ring_len), np.int64)
    # when each slot's last message left the buffer (its recv's write done): a send into
    # it waits for that, not for the recv being processed, which can be long before
    ring_free = np.zeros((max(n_chan, 1), ring_len), np.int64)
    ring_vec = np.zeros((max(n_chan, 1), ring_len), np.int64)
    ring_head = np.zeros(max(n_chan, 1), np.int64)
    ring_tail = np.zeros(max(n_chan, 1), np.int64)
    heap = np.zeros(n_agents + 8, np.int64)
    hsize = 0
    for a in range(n_agents):
        hsize = _heap_push(heap, hsize, a)
    executed = 0
    end_time = 0
    tlen = 0
    info = np.zeros(4, np.int64)

    while hsize > 0:
        key, hsize = _heap_pop(heap, hsize)
        a = key & ((1 << _SHIFT) - 1)
        if state[a] != 0:
            continue
        if (key >> _SHIFT) != t_agent[a]:
            continue  # stale entry
        end = agent_start[a + 1]
        is_core = a < n_core_agents
        tile = agent_tile[a]
        core = a if is_core else 0
        while True:
            p = pc[a]
            if p >= end:
                state[a] = 2
                end_time = max(end_time, t_agent[a])
                break
            o = op[p]
            shared = o == _OP_LOAD or o == _OP_STORE or o == _OP_SEND or o == _OP_RECV
            # only agents at shared instructions are queued: the one waking others too, and
            # those it wakes were checked here when they blocked
            if shared and t_agent[a] >> TIME_LIMIT_BITS:
                info[0] = a
                info[1] = p
                return TIME_LIMIT, end_time, info, tlen
            if shared and hsize > 0 and (heap[0] >> _SHIFT) < t_agent[a]:
                hsize = _heap_push(heap, hsize, (t_agent[a] << _SHIFT) | a)
                break  # someone else acts earlier on shared state
            executed += 1
            if executed > max_instr:
                info[0] = a
                info[1] = p
                return RUNAWAY, end_time, info, tlen
            t = t_agent[a]
            lay = layer[p] + 1
            spans = True      # False: this instruction does not start its layer's span
            start = t
            fin = t + 1
            nxt = p + 1
            v = vec[p]
            if o == _OP_HLT:
                state[a] = 2
                end_time = max(end_time, t + 1)
                t_agent[a] = t + 1
                counters[lay, C_INSTR] += 1
                break
            elif o == _OP_NOP:
                pass
            elif o == _OP_ISET:
                ireg[a, dst[p]] = imm[p]
            elif o == _OP_IADD:
                ireg[a, dst[p]] = ireg[a, src1[p]] + imm[p]
            elif o == _OP_JMP:
                nxt = agent_start[a] + imm[p]
            elif o == _OP_BEQ:
                if ireg[a, src1[p]] == ireg[a, src2[p]]:
                    nxt = agent_start[a] + imm[p]
            elif o == _OP_BNE:
                if ireg[a, src1[p]] != ireg[a, src2[p]]:
                    nxt = agent_start[a] + imm[p]
            elif o == _OP_SET or o == _OP_COPY or o == _OP_ALU or o == _OP_ALUI:
                w = _mvmu_wait(dst[p], v, xout0, gp0, rows, cols, nm, mvmu_free, core)
                if o != _OP_SET:
                    w = max(w, _mvmu_wait(src1[p], v, xout0, gp0, rows, cols, nm,
                                          mvmu_free, core))
                if o == _OP_ALU and not fn_unary[fn[p]]:   # unary fns ignore src2
                    w = max(w, _mvmu_wait(src2[p], v, xout0, gp0, rows, cols, nm,
                                          mvmu_free, core))
                start = max(t, w)
                dur = (v + lanes - 1) // lanes
                if (o == _OP_ALU or o == _OP_ALUI) and fn_transcendental[fn[p]]:
                    dur = dur * 1  # one activation unit per lane, 1 cycle (PUMA act_lat)
                fin = start + dur
                counters[lay, C_VFU] += v
            elif o == _OP_MVM:
                mk = mask[p]
                w = t
                for m in range(nm):
                    if (mk >> m) & 1:
                        w = max(w, mvmu_free[core, m])
                start = w
                last = w
                for m in range(nm):
                    if (mk >> m) & 1:
                        f = w + mvm_lat[core, m]
                        mvmu_free[core, m] = f
                        last = max(last, f)
                        counters[lay, C_MVM] += 1
                        counters[lay, C_XBAR] += mvm_stats[core, m, 0]
                        counters[lay, C_DAC] += mvm_stats[core, m, 1]
                        counters[lay, C_ADC] += mvm_stats[core, m, 2]
                        counters[lay, C_SHADD] += mvm_stats[core, m, 2]
                        adc_by_bits[lay, mvm_bits[core, m]] += mvm_stats[core, m, 2]
                fin = w + 1
                end_time = max(end_time, last)
                tlen = _trace(trace, tlen, trace_cap, a, w, last, o, lay - 1)
                if layer_span[lay, 0] < 0 or w < layer_span[lay, 0]:
                    layer_span[lay, 0] = w
                layer_span[lay, 1] = max(layer_span[lay, 1], last)
            else:
                # Shared-state instructions: tile memory and the NoC.
                addr = imm[p]
                if ra[p] >= 0:
                    addr += ireg[a, ra[p]]
                if addr < 0 or addr + v > tile_words[tile]:
                    info[0] = a
                    info[1] = p
                    info[2] = addr
                    return BAD_ADDRESS, end_time, info, tlen
                pair = 0
                if o == _OP_SEND:
                    pair = chan[p]
                    if ring_tail[pair] - ring_head[pair] >= recv_cap:
                        state[a] = 1
                        wait_kind[a] = W_SEND_FULL
                        wait_tile[a] = peer[p]
                        wait_addr[a] = addr
                        break
                    if ring_tail[pair] == ring_len and ring_len < recv_cap:
                        ring_len = min(2 * ring_len, recv_cap)
                        ring_arr = _grown(ring_arr, ring_len)
                        ring_free = _grown(ring_free, ring_len)
                        ring_vec = _grown(ring_vec, ring_len)
                if o == _OP_RECV:
                    pair = chan[p]
                    if ring_tail[pair] == ring_head[pair]:
                        state[a] = 1
                        wait_kind[a] = W_RECV
                        wait_tile[a] = peer[p]
                        wait_addr[a] = addr
                        break
                    if ring_vec[pair, ring_head[pair] % ring_len] != v:
                        info[0] = a
                        info[1] = p
                        info[2] = ring_vec[pair, ring_head[pair] % ring_len]
                        return BAD_MESSAGE, end_time, info, tlen
                reading = o == _OP_LOAD or o == _OP_SEND
                ok = True
                ready = t
                base = tile_base[tile]
                for i in range(base + addr, base + addr + v):
                    if valid[i] != reading:
                        ok = False
                        break
                    if reading:
                        ready = max(ready, vtime[i])
                    else:
                        ready = max(ready, ftime[i])
                if not ok:
                    state[a] = 1
                    wait_kind[a] = W_LOAD if reading else W_STORE
                    wait_tile[a] = tile
                    wait_addr[a] = addr
                    break
                if o == _OP_LOAD or o == _OP_STORE:
                    # the register operand, offset by ireg[rr] as the ISA states
                    reg = dst[p] if o == _OP_LOAD else src1[p]
                    if rr[p] >= 0:
                        reg += ireg[a, rr[p]]
                        if reg < 0 or reg + v > n_regs:   # only run time can tell
                            info[0] = a
                            info[1] = p
                            info[2] = reg
                            return BAD_REGISTER, end_time, info, tlen
                    ready = max(ready, _mvmu_wait(reg, v, xout0, gp0, rows, cols, nm,
                                                  mvmu_free, core))
                elif o == _OP_RECV:
                    ready = max(ready, ring_arr[pair, ring_head[pair] % ring_len])
                elif o == _OP_SEND:   # the sender stalls until its buffer slot is free
                    ready = max(ready, ring_free[pair, ring_tail[pair] % ring_len])
                acc = (v + port_words - 1) // port_words
                pt = tile * nports
                start = _earliest_gap(port_start, port_end, port_n, pt, ready, acc, t)
                for q in range(tile * nports + 1, (tile + 1) * nports):
                    s_q = _earliest_gap(port_start, port_end, port_n, q, ready, acc, t)
                    if s_q < start:
                        pt, start = q, s_q
                _book(port_start, port_end, port_n, pt, start, acc)
                fin = start + mem_lat + acc
                counters[lay, C_EDRAM] += acc
                if reading:
                    counters[lay, C_RD] += v
                    freed = False
                    # reading only persistent words (weights' constants, loaded once at the
                    # start) is not when the layer's data work begins
                    spans = False
                    for i in range(base + addr, base + addr + v):
                        if cnt[i] != 0:
                            spans = True
                            cnt[i] -= 1
                            # free once its last read (in time, not in processing order:
                            # a read processed later may take an earlier port gap) is done
                            ftime[i] = max(ftime[i], start + acc)
                            if cnt[i] == 0:
                                valid[i] = False
                                freed = True
                    if freed:
                        hsize = _wake_tile(tile, t, cores, ctrl_start, ctrl_agent, state,
                                           t_agent, heap, hsize)
                else:
                    counters[lay, C_WR] += v
                    for i in range(base + addr, base + addr + v):
                        valid[i] = True
                        cnt[i] = count[p]
                        vtime[i] = fin
                    hsize = _wake_tile(tile, t, cores, ctrl_start, ctrl_agent, state,
                                       t_agent, heap, hsize)
                if o == _OP_SEND:
                    dst_tile = peer[p]
                    flits = (v + flit_words - 1) // flit_words
                    x0, y0 = tile % mesh_w, tile // mesh_w
                    x1, y1 = dst_tile % mesh_w, dst_tile // mesh_w
                    cur = fin
                    hops = 0
                    x, y = x0, y0
                    while x != x1 or y != y1:  # XY routing; link = (router, direction)
                        if x != x1:
                            d = 0 if x1 > x else 1
                        else:
                            d = 2 if y1 > y else 3
                        lk = (y * mesh_w + x) * 4 + d
                        s = _earliest_gap(link_start, link_end, link_n, lk, cur, flits, t)
                        _book(link_start, link_end, link_n, lk, s, flits)
                        cur = s + router_cycles + hop_cycles
                        hops += 1
                        if d == 0:
                            x += 1
                        elif d == 1:
                            x -= 1
                        elif d == 2:
                            y += 1
                        else:
                            y -= 1
                    arrival = cur + flits if hops > 0 else fin
                    slot = ring_tail[pair] % ring_len
                    ring_arr[pair, slot] = arrival
                    ring_vec[pair, slot] = v
                    ring_tail[pair] += 1
                    counters[lay, C_NOC] += flits * hops
                    counters[lay, C_PKT] += 1
                    end_time = max(end_time, arrival)
                    hsize = _wake_tile(dst_tile, t, cores, ctrl_start, ctrl_agent, state,
                                       t_agent, heap, hsize)
                elif o == _OP_RECV:
                    ring_free[pair, ring_head[pair] % ring_len] = fin
                    ring_head[pair] += 1
                    hsize = _wake_tile(peer[p], t, cores, ctrl_start, ctrl_agent, state,
                                       t_agent, heap, hsize)
                tlen = _trace(trace, tlen, trace_cap, a, start, fin, o, lay - 1)
            counters[lay, C_INSTR] += 1
            # a layer's span: its data work (MVMs have their own), not the integer loop
            # set-up a core runs at cycle 0, long before its first input exists
            if lay > 0 and o != _OP_MVM and o != _OP_ISET and o != _OP_IADD \
                    and o != _OP_JMP and o != _OP_BEQ and o != _OP_BNE and o != _OP_NOP:
                if spans and (layer_span[lay, 0] < 0 or start < layer_span[lay, 0]):
                    layer_span[lay, 0] = start
                layer_span[lay, 1] = max(layer_span[lay, 1], fin)
            if o == _OP_ALU or o == _OP_ALUI or o == _OP_SET or o == _OP_COPY:
                tlen = _trace(trace, tlen, trace_cap, a, start, fin, o, lay - 1)
            t_agent[a] = fin
            pc[a] = nxt
            end_time = max(end_time, fin)

    for a in range(n_agents):
        if state[a] != 2:
            # Deadlock: pack the stuck agents into info (agent, pc, kind, tile, addr) rows.
            k = 0
            for b in range(n_agents):
                if state[b] != 2:
                    k += 1
            info = np.zeros(5 * k, np.int64)
            k = 0
            for b in range(n_agents):
                if state[b] != 2:
                    info[5 * k] = b
                    info[5 * k + 1] = pc[b] - agent_start[b]
                    info[5 * k + 2] = wait_kind[b]
                    info[5 * k + 3] = wait_tile[b]
                    info[5 * k + 4] = wait_addr[b]
                    k += 1
            return DEADLOCK, end_time, info, tlen
    for pair in range(n_chan):
        if ring_tail[pair] != ring_head[pair]:
            # every agent halted with messages left in a receive buffer: a send without
            # its recv, which a compiled program never has (its data went nowhere)
            info[0] = pair
            info[1] = ring_tail[pair] - ring_head[pair]
            return UNRECEIVED, end_time, info, tlen
    info[0] = ring_len
    return OK, end_time, info, tlen
