"""Code for a :class:`~compiler.ops.recurrent.RecurrentLayer` (LSTM, GRU, RNN): one loop over
the time steps per core and per tile control unit; what changes per step lives in integer
registers. A reverse layer walks its pointers from the last step down (``time_walk``).

Roles (any core may hold several):

* *block cores* hold crossbar blocks of ``Wcat``. Each step they load x_t (pointer ``px``,
  stride ``x_step``) and h_{t-1} (pointer ``ph``: the initial state first, then the previous
  step's slot of Y in their tile), run their MVMUs, and hand column-strip partial sums to
  the strip's owner through counted slots, as in a fully connected layer;
* *strip owners* reduce, add the bias, requantize and apply the cell's activations to their
  columns; an owner other than the home core stores its gate activations in a counted slot;
* the *home core* (owner of the first strip) gathers all the gate activations, updates the
  cell's state (kept in its registers for the whole sequence: an LSTM's c, a GRU's h) and
  stores h_t into Y[t] (persistent) in its tile.

Tile control units move, per step and in this order, partial sums between tiles, gate
activations to the home tile, and h_t from the home tile to every other tile holding Y
(block tiles and downstream readers). Each stage only waits on earlier ones, so the
recurrence cannot deadlock while no cycle of tiles carries more messages per step than a
receive buffer holds (checked at compile time).
"""
from __future__ import annotations

import numpy as np

from simulator.isa import PERSISTENT, Fn, Op

from ..codegen import (alloc_partial_slots, blocks_by_core, emit_block_partials,
                       emit_reduce_partials, may_deadlock)
from ..errors import CompilerError
from ..vfu import chunk_list
from .recurrent import H_SPACE


def emit_gates(em, r: int, cst: int, c0: int, n: int, L, layer: int) -> None:
    """Accumulators r[0:n] (columns c0..c0+n) -> gate activations in place; ``cst`` holds
    the bias then the multipliers. Twin of :meth:`RecurrentLayer.gates_ref
    <compiler.ops.recurrent.RecurrentLayer.gates_ref>`."""
    fmt = L.fmt
    em.emit(Op.ALU, fn=Fn.ADD, dst=r, src1=r, src2=cst, vec=n, layer=layer)
    if L.pre_shift:
        em.emit(Op.ALUI, fn=Fn.SHR, dst=r, src1=r, imm=L.pre_shift, vec=n, layer=layer)
    if L.pre_clip:   # saturate rather than wrap where no shift is left (as an MVM layer)
        em.emit(Op.ALU, fn=Fn.CLIP, dst=r, src1=r, imm=L.pre_clip, vec=n, layer=layer)
    em.emit(Op.ALU, fn=Fn.MUL, dst=r, src1=r, src2=cst + n, vec=n, layer=layer)
    em.emit(Op.ALUI, fn=Fn.SHR, dst=r, src1=r, imm=L.shift, vec=n, layer=layer)
    em.emit(Op.ALU, fn=Fn.CLIP, dst=r, src1=r, imm=fmt.bits, vec=n, layer=layer)
    for fn, lo, hi in L.activation_spans():          # the span's part of these columns
        a, b = max(lo, c0), min(hi, c0 + n)
        if a < b:
            em.emit(Op.ALU, fn=fn, dst=r + a - c0, src1=r + a - c0, imm=fmt.f, vec=b - a,
                    layer=layer)


def _const(cg, tile: int, vals) -> int:
    m = cg.tilemem(tile)
    a = m.alloc(len(vals))
    m.init.append((tile, a, np.asarray(vals, np.int64), PERSISTENT))
    return a


def generate_recurrent(cg, i: int, L, core_em, tile_em, lay) -> None:
    prog = cg.prog
    strips = cg.pl.strips[i]
    home = strips[0].owner
    by_core = blocks_by_core(strips)                   # home included: it owns strips[0]
    # Y (and h_t each step) goes where it is read: tiles whose blocks take h_{t-1}, the
    # home tile that writes it, and the layers downstream; not to tiles of x rows only.
    h_tiles = {b.loc[0] for s in strips for b in s.blocks
               if any(off >= H_SPACE for off, _, _ in b.segments)}
    holders = cg.readers.get(prog.storage(L.output), set()) | h_tiles | {home[0]}
    y_buf = {t: cg.buffer(L.output, t) for t in sorted(holders)}
    h0 = {t: _const(cg, t, L.h0) for t in sorted(h_tiles)}
    s0 = _const(cg, home[0], L.s0)
    # Counted slots: partial sums (strip, core) -> owner, gates (strip) -> home.
    slot, rslot, gslot, rgslot = {}, {}, {}, {}
    for s in strips:
        alloc_partial_slots(cg, s, slot, rslot)
        if s.owner != home:
            gslot[s.index] = cg.tilemem(s.owner[0]).alloc(s.n)
            if s.owner[0] != home[0]:
                rgslot[s.index] = cg.tilemem(home[0]).alloc(s.n)
    for core, blocks in sorted(by_core.items()):
        _core_code(cg, i, L, core, blocks, core == home, strips, core_em[core], lay,
                   y_buf, h0, s0, slot, rslot, gslot, rgslot)
    _tile_code(cg, i, L, strips, home[0], holders, y_buf, slot, rslot, gslot, rgslot,
               tile_em)


def _core_code(cg, i, L, core, blocks, is_home, strips, em, lay, y_buf, h0, s0, slot,
               rslot, gslot, rgslot) -> None:
    H, T = L.hidden, L.steps
    tile = core[0]
    em.reset_gp()
    mine = sorted({b.strip for b in blocks})
    owned = [s for s in strips if s.owner == core]
    G = S = None
    if is_home:
        G, S = em.gp(L.weight.shape[1]), em.gp(H)
    acc = {}
    for s in sorted(set(mine) | {s.index for s in owned}):
        own_home = is_home and strips[s].owner == core
        acc[s] = G + strips[s].c0 if own_home else em.gp(strips[s].n)
    consts = {}
    for s in owned:
        a = _const(cg, tile, np.concatenate([L.bias[s.c0:s.c0 + s.n], L.mult[s.c0:s.c0 + s.n]]))
        consts[s.index] = em.gp(2 * s.n)
        em.emit(Op.LOAD, dst=consts[s.index], imm=a, vec=2 * s.n, layer=i)
    tmp = em.gp(max(s.n for s in strips))
    if is_home:
        em.emit(Op.LOAD, dst=S, imm=s0, vec=H, layer=i)
    has_x = any(off < H_SPACE for b in blocks for off, _, _ in b.segments)
    has_h = any(off >= H_SPACE for b in blocks for off, _, _ in b.segments)
    ptr_specs = []
    if has_x:
        ptr_specs.append(("x", *L.time_walk(cg.buffer(L.inputs[0], tile), L.x_step)))
    if has_h or is_home:
        ptr_specs.append(("y", *L.time_walk(y_buf[tile], H)))
    ph = None
    if has_h:
        ph = em.int_reg()
        em.emit(Op.ISET, dst=ph, imm=h0[tile], layer=i)
    with em.loop_nest([T], [(base, st) for _, base, st in ptr_specs], i) as ptrs:
        p = {name: q.ireg for (name, _, _), q in zip(ptr_specs, ptrs)}
        for b in blocks:                               # crossbar inputs: x_t and h_{t-1}
            x0 = lay.xin_of(b.loc[2])
            for off, pos, n in b.segments:
                if off >= H_SPACE:
                    em.emit(Op.LOAD, dst=x0 + pos, imm=off - H_SPACE, ra=ph, vec=n, layer=i)
                else:
                    em.emit(Op.LOAD, dst=x0 + pos, imm=off, ra=p["x"], vec=n, layer=i)
        emit_block_partials(em, lay, core, blocks, mine, strips, acc, slot, i)
        for st in owned:                               # reduce + gate activations
            s, n = st.index, st.n
            emit_reduce_partials(em, core, st, mine, acc, tmp, slot, rslot, i)
            emit_gates(em, acc[s], consts[s], st.c0, n, L, i)
            if not is_home:
                em.emit(Op.STORE, src1=acc[s], imm=gslot[s], vec=n, count=1, layer=i)
        if is_home:
            for st in strips:                          # gates computed elsewhere
                if st.owner != core:
                    addr = gslot[st.index] if st.owner[0] == tile else rgslot[st.index]
                    em.emit(Op.LOAD, dst=G + st.c0, imm=addr, vec=st.n, layer=i)
            for j0, n in chunk_list(H):
                h = L.emit_cell(em, G, S, j0, n, i)
                em.emit(Op.STORE, src1=h, imm=j0, ra=p["y"], vec=n, count=PERSISTENT,
                        layer=i)
        if ph is not None:                             # next step reads h_t from Y[t]
            em.emit(Op.IADD, dst=ph, src1=p["y"], imm=0, layer=i)
    if ph is not None:
        em.release_int(ph)


def _tile_code(cg, i, L, strips, home_tile, holders, y_buf, slot, rslot, gslot, rgslot,
               tile_em) -> None:
    """Per step: partial sums between tiles, gates to the home tile, h_t to the holders.
    Each transfer is listed once; its send and receive follow from it, so every tile pair
    sees its messages in the same order on both ends."""
    stages = [[], [], []]            # (src, dst, src addr, dst addr, n, count, via pointer)
    for (s, k), ra in sorted(rslot.items()):
        stages[0].append((k[0], strips[s].owner[0], slot[(s, k)], ra, strips[s].n, 1, False))
    for s, ra in sorted(rgslot.items()):
        stages[1].append((strips[s].owner[0], home_tile, gslot[s], ra, strips[s].n, 1, False))
    for dst in sorted(holders - {home_tile}):
        for j0, n in chunk_list(L.hidden):
            stages[2].append((home_tile, dst, j0, j0, n, PERSISTENT, True))
    plan: dict[int, list] = {}
    for stage in stages:
        for src, dst, sa, _da, n, cnt, via in stage:
            plan.setdefault(src, []).append((0, "send", dst, sa, n, cnt, via))
        for src, dst, _sa, da, n, cnt, via in stage:
            plan.setdefault(dst, []).append((1, "recv", src, da, n, cnt, via))
    # Each stage has every tile send before it receives, and starts once the earlier ones
    # are done; a stage cannot deadlock while no cycle of its tiles sends more per step
    # than a receive buffer holds (placement keeps partial sums flowing one way today; a
    # change that broke it should fail here, not hang).
    for k, stage in enumerate(stages):
        sends = {}
        for src, dst, *_ in stage:
            sends.setdefault(src, []).append(("send", dst, 0, 0))
        if may_deadlock(sends, cg.cfg.tile.recv_buffer):
            raise CompilerError(
                f"its per-step {('partial sums', 'gate activations', 'h_t copies')[k]} "
                f"between tiles form a cycle carrying more messages per tile pair than "
                f"tile.recv_buffer = {cg.cfg.tile.recv_buffer} holds, which could deadlock; "
                f"raise tile.recv_buffer")
    for tile, ops in sorted(plan.items()):
        em, fifo = tile_em(tile, i)
        # a tile that only moves partial sums or gates holds no Y: its pointer goes unused
        with em.loop_nest([L.steps], [L.time_walk(y_buf.get(tile, 0), L.hidden)], i) as (p,):
            for _, kind, peer, a, n, cnt, via in ops:
                ra = p.ireg if via else -1
                if kind == "send":
                    em.emit(Op.SEND, dst=fifo, imm=a, ra=ra, vec=n, peer=peer, layer=i)
                else:
                    em.emit(Op.RECV, dst=fifo, imm=a, ra=ra, vec=n, peer=peer, count=cnt,
                            layer=i)
