"""Schedule + codegen: placed layers -> instruction streams, memory image, I/O ports.

Memory: every storage tensor gets a buffer (with its padded border preloaded) in each tile
that produces or reads it; constants (bias, multipliers) live in the tile of the core that
uses them; partial-sum slots carry consumer count 1 so a producer cannot overwrite a slot
before it was read (PUMA-style flow control, no barriers).

Cores: each layer is one loop nest over its output pixels (program size grows with layers
and crossbars, not pixels). Tile control units: one loop nest per layer ("phase") moving
partial sums and output chunks between tiles with send/recv; per iteration all sends come
before all receives, so phases cannot deadlock. Layer i's phase runs on control stream
``i mod tile.control_streams`` of each tile it touches, in FIFO ``i mod control_streams``:
the same stream and FIFO on every tile, so both ends of a FIFO take its phases in layer
order, while layers on different streams move their data side by side (with one stream,
a layer's transfers would wait for every earlier layer's on that tile, which serializes
the layer pipeline across tiles). Still deadlock-free: the earliest unfinished layer's
phases are at the head of their streams, and its inputs are all delivered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.isa import PERSISTENT, Fn, Op, RegisterLayout
from simulator.program import Program, TensorPort

from .emitter import Emitter
from .errors import CompilerError
from .ir import LayerProgram, MVMLayer, TensorInfo
from .place import Placement
from .vfu import out_pointer


@dataclass
class TileMemory:
    words: int = 0
    init: list = field(default_factory=list)

    def alloc(self, n: int) -> int:
        a = self.words
        self.words += max(int(n), 1)
        return a


@dataclass
class Codegen:
    prog: LayerProgram
    pl: Placement
    cfg: object
    mem: dict = field(default_factory=dict)          # tile -> TileMemory
    buf: dict = field(default_factory=dict)          # (storage, tile) -> base address
    producers: dict = field(default_factory=dict)    # storage -> layer index
    readers: dict = field(default_factory=dict)      # storage -> set of tiles reading it

    def tilemem(self, t: int) -> TileMemory:
        return self.mem.setdefault(t, TileMemory())

    # ---- buffers ---------------------------------------------------------------------
    def buffer(self, name: str, tile: int) -> int:
        st = self.prog.storage(name)
        key = (st, tile)
        if key not in self.buf:
            t = self.prog.tensors[st]
            m = self.tilemem(tile)
            base = m.alloc(t.words)
            self.buf[key] = base
            if t.kind == "map" and any(t.pad):
                for a, vals in _border_segments(t):
                    m.init.append((tile, base + a, vals, PERSISTENT))
        return self.buf[key]

    def layer_tiles_reading(self, i: int) -> set:
        L = self.prog.layers[i]
        if L.kind == "mvm":
            return {b.loc[0] for ss in self.pl.copies(i) for s in ss for b in s.blocks} | {
                s.owner[0] for ss in self.pl.copies(i) for s in ss}
        return {self.pl.vfu_core[i][0]}

    def producer_tiles(self, i: int) -> set:
        L = self.prog.layers[i]
        if L.kind == "mvm":
            return {s.owner[0] for ss in self.pl.copies(i) for s in ss}
        return {self.pl.vfu_core[i][0]}


class ControlStreams:
    """The tiles' control streams, made when a layer first moves data through a tile."""

    def __init__(self, cfg):
        self.n_int, self.k = cfg.core.int_registers, cfg.tile.control_streams
        self.em: dict[tuple[int, int], Emitter] = {}

    def __call__(self, tile: int, layer: int) -> tuple[Emitter, int]:
        """(the emitter of ``layer``'s phase on ``tile``, its FIFO)."""
        fifo = layer % self.k
        key = (tile, fifo)
        if key not in self.em:
            self.em[key] = Emitter(self.n_int, where=f"tile {tile} control (FIFO {fifo})")
        return self.em[key], fifo

    def assemble(self) -> tuple[list, list]:
        """(streams, the tile of each), in tile then stream order."""
        keys = sorted(self.em)
        return [self.em[k].assemble() for k in keys], [t for t, _ in keys]


def _border_segments(t: TensorInfo):
    """(offset, values) runs covering a padded map's border."""
    C, Wp = t.C, t.Wp
    pt, pl, pb, pr = t.pad
    segs = []
    if pt:
        segs.append((0, pt * Wp * C))
    for y in range(pt, pt + t.H):
        if pl:
            segs.append((y * Wp * C, pl * C))
        if pr:
            segs.append(((y * Wp + pl + t.W) * C, pr * C))
    if pb:
        segs.append(((pt + t.H) * Wp * C, pb * Wp * C))
    return [(a, np.full(n, t.pad_value, np.int64)) for a, n in segs]


def generate(prog: LayerProgram, pl: Placement, cfg, mapping: dict) -> Program:
    cg = Codegen(prog, pl, cfg)
    lay = RegisterLayout.of(cfg)
    n_tiles = pl.n_tiles
    cores = cfg.tile.cores
    n_int = cfg.core.int_registers
    core_em = {(t, c): Emitter(n_int, lay.gp, cfg.core.registers, f"tile {t} core {c}")
               for t in range(n_tiles) for c in range(cores)}
    tile_em = ControlStreams(cfg)

    # Who reads each storage tensor where (buffers must exist before code refers to them).
    for i, L in enumerate(prog.layers):
        if L.kind == "alias":
            continue
        cg.producers[prog.storage(L.output)] = i
        for x in L.inputs:
            cg.readers.setdefault(prog.storage(x), set()).update(cg.layer_tiles_reading(i))
    out_home = {}
    for o in prog.outputs:
        st = prog.storage(o)
        if st in cg.producers:
            home = min(cg.producer_tiles(cg.producers[st]))
        else:
            home = next(iter(cg.readers.get(st, {0})))
        out_home[o] = home
        cg.readers.setdefault(st, set()).add(home)

    # Graph inputs: the host writes a copy into every tile that reads them.
    ports_in = []
    for name in prog.inputs:
        t = prog.tensors[name]
        for tile in sorted(cg.readers.get(name, {0})):
            base = cg.buffer(name, tile)
            ports_in.append(_port(t, name, tile, base))

    worst: dict[str, tuple] = {}    # register kind -> (needed, the core's, layer, where)
    for i, L in enumerate(prog.layers):
        if L.kind == "alias":
            continue
        st = prog.storage(L.output)
        for tile in cg.producer_tiles(i) | cg.readers.get(st, set()):
            cg.buffer(L.output, tile)
        try:
            if hasattr(L, "generate_code"):     # a layer with its own code generator (LSTM)
                L.generate_code(cg, i, core_em, tile_em, lay)
            elif L.kind == "mvm":
                _mvm_code(cg, i, L, core_em, tile_em, lay)
            else:
                _vfu_code(cg, i, L, core_em, tile_em)
        except CompilerError as e:   # say which layer it was
            raise CompilerError(f"layer {L.name!r} ({L.op}): {e}") from e
        for em in (*core_em.values(), *tile_em.em.values()):
            for kind, (need, have) in em.shortfall().items():
                if need > worst.get(kind, (0,))[0]:
                    worst[kind] = (need, have, L, em.where)
    if worst:   # the most any layer needs, so one change of the config is enough
        raise CompilerError("; ".join(
            f"layer {L.name!r} ({L.op}): {where}: needs {need} "
            f"{'general' if kind == 'registers' else 'integer'} registers, the core has "
            f"{have} (raise core.{kind} to at least {need})"
            for kind, (need, have, L, where) in sorted(worst.items())))

    ports_out = []
    for o in prog.outputs:
        home = out_home[o]
        ports_out.append(_port(prog.tensors[o], o, home, cg.buffer(o, home)))

    core_code = [core_em[(t, c)].assemble() for t in range(n_tiles) for c in range(cores)]
    tile_code, control_tiles = tile_em.assemble()
    blocks = pl.all_blocks()
    mem_words = np.array([max(cg.tilemem(t).words, 1) for t in range(n_tiles)], np.int64)
    init = [seg for t in range(n_tiles) for seg in cg.tilemem(t).init]
    R, C = cfg.xbar.rows, cfg.xbar.cols
    levels = np.empty((len(blocks), cfg.arrays * cfg.slices, R, C), np.uint8)
    for k, b in enumerate(blocks):      # one copy of the cell levels, not two (VGG: 1 GB)
        levels[k] = b.levels
        b.levels = levels[k]
    mapping["mem_words_max"] = int(mem_words.max())
    mapping["edram_words"] = cfg.edram_words
    mapping["edram_overflow_tiles"] = 0 if cfg.tile.edram_fit else int(
        (mem_words > cfg.edram_words).sum())
    return Program(
        config=cfg, n_tiles=n_tiles, core_code=core_code, tile_code=tile_code,
        control_tiles=control_tiles,
        mvmu_loc=[b.loc for b in blocks], mvmu_levels=levels,
        mvmu_rows_used=[max(len(b.rows), 1) for b in blocks],
        mvmu_cols_used=[b.cols for b in blocks], mvmu_adc_bits=[b.adc_bits for b in blocks],
        mvmu_layer=[b.layer for b in blocks], mem_init=init, inputs=ports_in,
        outputs=ports_out,
        layers=[{"name": L.name, "op": L.op, "kind": L.kind} for L in prog.layers],
        mapping=mapping, mem_words=mem_words)


def _port(t: TensorInfo, name: str, tile: int, base: int) -> TensorPort:
    shape = tuple(t.shape[1:])
    if t.kind == "map":
        return TensorPort(name, tile, base, shape, t.scale,
                          map_layout=(t.H, t.W, t.C, t.pad[0], t.pad[1], t.Wp))
    return TensorPort(name, tile, base, shape, t.scale,
                      perm=None if t.perm is None else tuple(int(v) for v in t.perm))


# ---- MVM layers ----------------------------------------------------------------------

def _mvm_geometry(cg: Codegen, L: MVMLayer):
    prog = cg.prog
    t_in = prog.tensors[prog.storage(L.inputs[0])]
    t_out = prog.tensors[L.output]
    if L.is_conv:
        dims = [L.Ho, L.Wo]
        in_strides = [L.stride[0] * t_in.Wp * t_in.C, L.stride[1] * t_in.C]
    else:
        dims, in_strides = [], []
    out_off, out_strides = out_pointer(t_out)
    if not L.is_conv:
        out_off, out_strides = (t_out.offset(0, 0) if t_out.kind == "map" else 0), []
    return t_in, t_out, dims, in_strides, out_off, out_strides


def _mvm_code(cg: Codegen, i: int, L: MVMLayer, core_em, tile_em, lay) -> None:
    t_in, t_out, dims, in_strides, out_off, out_strides = _mvm_geometry(cg, L)
    bands = cg.pl.bands.get(i) or [(0, dims[0] if dims else 0, cg.pl.strips[i])]
    for k, (row0, rows, strips) in enumerate(bands):    # a band of output rows per copy
        band_dims = [rows] + dims[1:] if dims else dims
        slots = _mvm_band_code(cg, i, L, strips, band_dims, row0, t_in, in_strides,
                               out_off + row0 * (out_strides[0] if out_strides else 0),
                               out_strides, core_em, lay)
        if k == 0:
            slot, rslot = slots
    # Tile control: partial sums across tiles, then output chunks to reading tiles (a
    # layer with copies sits in one tile: no partial sums cross tiles).
    strips = cg.pl.strips[i]
    remote_partials = [(s, k) for (s, k) in rslot]
    chunks = {}                                      # producing tile -> [(offset, n)]
    for s in strips:
        chunks.setdefault(s.owner[0], []).append((s.c0, s.n))
    _phase(cg, i, L.output, dims, out_off, out_strides, chunks, tile_em,
           partials=[(k[0], strips[s].owner[0], slot[(s, k)], rslot[(s, k)], strips[s].n)
                     for s, k in remote_partials])


def _mvm_band_code(cg: Codegen, i: int, L: MVMLayer, strips, dims, row0: int, t_in,
                   in_strides, out_off, out_strides, core_em, lay) -> tuple[dict, dict]:
    """The cores' code of one copy of MVM layer i over output rows row0.. (``dims``; the
    output pointer ``out_off`` already at row0); returns its partial-sum slots."""
    by_core = blocks_by_core(strips)
    slot, rslot = {}, {}
    for s in strips:
        alloc_partial_slots(cg, s, slot, rslot)
    for core, blocks in sorted(by_core.items()):
        tile = core[0]
        em = core_em[core]
        em.reset_gp()
        mine = sorted({b.strip for b in blocks})
        owned = [s for s in strips if s.owner == core]
        widest = max([s.n for s in strips])
        # A strip with blocks here sums into its own accumulator across the MVMs; one owned
        # but with no block here (a pruned, bias-only strip, or all blocks elsewhere) is only
        # live from its reduction to its store, so such strips share one window: a layer
        # pruned to a few of many column strips fits the register file.
        acc = {s: em.gp(strips[s].n) for s in mine}
        elsewhere = sorted({s.index for s in owned} - set(mine))
        if elsewhere:
            pooled = em.gp(max(strips[s].n for s in elsewhere))
            acc.update({s: pooled for s in elsewhere})
        # Bias and multipliers stay in registers across the pixel loop when they fit;
        # otherwise they are re-loaded from tile memory per pixel into one shared slot.
        resident = (em.gp_next - em.gp_base + widest + sum(2 * s.n for s in owned)
                    <= em.gp_size)
        consts, const_addr = {}, {}
        # Re-loaded constants share one window of both; where even that does not fit
        # beside the accumulators and tmp (wide crossbars, many strips on one core), bias
        # and multipliers are loaded one after the other into tmp, free after the reduction.
        split = not resident and bool(owned) and (
            em.gp_next - em.gp_base + 3 * widest > em.gp_size)
        shared = None if resident or split or not owned else em.gp(2 * widest)
        for s in owned:
            addr = cg.tilemem(tile).alloc(2 * s.n)
            cg.tilemem(tile).init.append((tile, addr, np.concatenate(
                [L.bias[s.c0:s.c0 + s.n], L.mult[s.c0:s.c0 + s.n]]).astype(np.int64),
                PERSISTENT))
            const_addr[s.index] = addr
            if resident:
                r = em.gp(2 * s.n)
                em.emit(Op.LOAD, dst=r, imm=addr, vec=2 * s.n, layer=i)
                consts[s.index] = r
        tmp = em.gp(widest)
        in_base = cg.buffer(L.inputs[0], tile) + L.base_offset(t_in, row0, 0)
        # a core that owns no strip only sends partial sums: no output buffer on its tile
        out_base = cg.buffer(L.output, tile) + out_off if owned else 0
        with em.loop_nest(dims, [(in_base, in_strides), (out_base, out_strides)], i) as (
                pin, pout):
            for b in blocks:
                x0 = lay.xin_of(b.loc[2])
                for off, pos, n in b.segments:
                    em.emit(Op.LOAD, dst=x0 + pos, imm=off, ra=pin.ireg, vec=n, layer=i)
            emit_block_partials(em, lay, core, blocks, mine, strips, acc, slot, i)
            for st in owned:                         # reduce, requantize, store outputs
                s, n = st.index, st.n
                emit_reduce_partials(em, core, st, mine, acc, tmp, slot, rslot, i)
                if split:
                    r = tmp
                    em.emit(Op.LOAD, dst=tmp, imm=const_addr[s], vec=n, layer=i)
                elif resident:
                    r = consts[s]
                else:
                    r = shared
                    em.emit(Op.LOAD, dst=r, imm=const_addr[s], vec=2 * n, layer=i)
                em.emit(Op.ALU, fn=Fn.ADD, dst=acc[s], src1=acc[s], src2=r, vec=n, layer=i)
                if L.pre_shift:
                    em.emit(Op.ALUI, fn=Fn.SHR, dst=acc[s], src1=acc[s], imm=L.pre_shift,
                            vec=n, layer=i)
                if L.pre_clip:
                    em.emit(Op.ALU, fn=Fn.CLIP, dst=acc[s], src1=acc[s], imm=L.pre_clip,
                            vec=n, layer=i)
                if split:
                    em.emit(Op.LOAD, dst=tmp, imm=const_addr[s] + n, vec=n, layer=i)
                em.emit(Op.ALU, fn=Fn.MUL, dst=acc[s], src1=acc[s],
                        src2=tmp if split else r + n, vec=n, layer=i)
                _emit_requant_tail(em, acc[s], n, L, i)
                em.emit(Op.STORE, src1=acc[s], imm=st.c0, ra=pout.ireg, vec=n, count=0,
                        layer=i)
    return slot, rslot


def blocks_by_core(strips) -> dict[tuple, list]:
    """Each core that holds a block or owns a strip -> its blocks."""
    by_core: dict[tuple, list] = {}
    for s in strips:
        for b in s.blocks:
            by_core.setdefault(b.loc[:2], []).append(b)
        by_core.setdefault(s.owner, [])
    return by_core


def alloc_partial_slots(cg: Codegen, s, slot: dict, rslot: dict) -> None:
    """Partial-sum slots of strip ``s``: (strip, producing core) -> address in the
    producer's tile, and for a remote owner the receiving slot in the owner's tile."""
    for k in sorted({b.loc[:2] for b in s.blocks} - {s.owner}):
        slot[(s.index, k)] = cg.tilemem(k[0]).alloc(s.n)
        if k[0] != s.owner[0]:
            rslot[(s.index, k)] = cg.tilemem(s.owner[0]).alloc(s.n)


def emit_block_partials(em, lay, core, blocks, mine, strips, acc, slot, i) -> None:
    """With the crossbar inputs loaded: run this core's MVMUs, sum its blocks' outputs per
    strip into ``acc[strip]`` and store the sums of strips owned elsewhere in their slots."""
    mask = 0
    for b in blocks:
        mask |= 1 << b.loc[2]
    if mask:
        em.emit(Op.MVM, mask=mask, layer=i)
    for s in mine:
        first = True
        for b in blocks:
            if b.strip != s:
                continue
            xo = lay.xout_of(b.loc[2])
            if first:
                em.emit(Op.COPY, dst=acc[s], src1=xo, vec=strips[s].n, layer=i)
                first = False
            else:
                em.emit(Op.ALU, fn=Fn.ADD, dst=acc[s], src1=acc[s], src2=xo,
                        vec=strips[s].n, layer=i)
    for s in mine:
        if strips[s].owner != core:
            em.emit(Op.STORE, src1=acc[s], imm=slot[(s, core)], vec=strips[s].n, count=1,
                    layer=i)


def emit_reduce_partials(em, core, st, mine, acc, tmp, slot, rslot, i) -> None:
    """On the owner of strip ``st``: add the other cores' partial sums into ``acc[st]``
    (zeroed first when this core holds none of its blocks)."""
    s, n = st.index, st.n
    if s not in mine:
        em.emit(Op.SET, dst=acc[s], imm=0, vec=n, layer=i)
    for k in sorted({b.loc[:2] for b in st.blocks} - {core}):
        addr = slot[(s, k)] if k[0] == core[0] else rslot[(s, k)]
        em.emit(Op.LOAD, dst=tmp, imm=addr, vec=n, layer=i)
        em.emit(Op.ALU, fn=Fn.ADD, dst=acc[s], src1=acc[s], src2=tmp, vec=n, layer=i)


def _emit_requant_tail(em, r, n, L: MVMLayer, i) -> None:
    if L.shift:
        em.emit(Op.ALUI, fn=Fn.SHRE if L.round_even else Fn.SHR, dst=r, src1=r, imm=L.shift,
                vec=n, layer=i)
    em.emit(Op.ALU, fn=Fn.CLIP, dst=r, src1=r, imm=L.out_bits, vec=n, layer=i)
    if L.act == "relu":
        em.emit(Op.ALU, fn=Fn.RELU, dst=r, src1=r, vec=n, layer=i)
    if L.lo is not None:
        em.emit(Op.ALUI, fn=Fn.MAX, dst=r, src1=r, imm=L.lo, vec=n, layer=i)
    if L.hi is not None:
        em.emit(Op.ALUI, fn=Fn.MIN, dst=r, src1=r, imm=L.hi, vec=n, layer=i)


# ---- VFU layers ----------------------------------------------------------------------

def _vfu_code(cg: Codegen, i: int, L, core_em, tile_em) -> None:
    prog = cg.prog
    tile, core = cg.pl.vfu_core[i]
    em = core_em[(tile, core)]
    em.reset_gp()
    tensors = _storage_view(prog)
    const_addr = {}
    for key, vals in L.constants(tensors).items():
        a = cg.tilemem(tile).alloc(len(vals))
        cg.tilemem(tile).init.append((tile, a, np.asarray(vals, np.int64), PERSISTENT))
        const_addr[key] = a
    for dims, ptr_specs, tag in L.regions(tensors):   # one loop nest per region
        names = list(ptr_specs)
        bases = [cg.buffer(n, tile) + ptr_specs[n][0] for n in names]
        with em.loop_nest(dims, [(b, ptr_specs[n][1]) for b, n in zip(bases, names)],
                          i) as ptrs:
            ptr = dict(zip(names, ptrs))
            ptr["__in_base"] = cg.buffer(L.inputs[0], tile) if L.inputs else 0
            ptr["__region"] = tag
            L.emit_body(em, ptr, const_addr, tensors, i)
        off, strides = ptr_specs[L.output]
        _phase(cg, i, L.output, dims, off, strides, {tile: L.chunks(tensors, tag)}, tile_em,
               [])


class _StorageView(dict):
    """Tensor lookup where an alias resolves to a tensor with its storage's layout."""

    def __init__(self, prog):
        super().__init__(prog.tensors)
        self.prog = prog


def _storage_view(prog) -> dict:
    return _StorageView(prog)


def _phase(cg: Codegen, i: int, out_name: str, dims, out_off, out_strides, chunks: dict,
           tile_em, partials: list) -> None:
    """Layer i's transfers on the tile control units: per iteration of the layer's loop
    nest, partial sums (src tile, dst tile, src addr, dst addr, n) and output chunks from
    each producing tile to every other tile that reads the output (a producer that does
    not read it keeps only its own chunks: nothing there reads the others')."""
    readers = cg.readers.get(cg.prog.storage(out_name), set())
    plan: dict[int, list] = {}
    for src, dst, sa, da, n in partials:
        plan.setdefault(src, []).append(("send_p", dst, sa, n))
        plan.setdefault(dst, []).append(("recv_p", src, da, n))
    for src, chs in chunks.items():
        for dst in sorted(readers - {src}):
            for off, n in chs:
                plan.setdefault(src, []).append(("send", dst, off, n))
                plan.setdefault(dst, []).append(("recv", src, off, n))
    if not may_deadlock(plan, cg.cfg.tile.recv_buffer):
        # every tile sends before it receives: transfers overlap (the usual case)
        order = {"send_p": 0, "recv_p": 1, "send": 2, "recv": 3}
        for ops in plan.values():
            ops.sort(key=lambda o: order[o[0]])
    for tile, ops in sorted(plan.items()):
        em, fifo = tile_em(tile, i)
        # a tile that only moves partial sums holds no copy of the output
        moves_output = any(kind in ("send", "recv") for kind, *_ in ops)
        base = cg.buffer(out_name, tile) + out_off if moves_output else 0
        with em.loop_nest(dims, [(base, out_strides)], i) as (p,):
            for kind, peer, a, n in ops:
                if kind == "send_p":
                    em.emit(Op.SEND, dst=fifo, imm=a, vec=n, peer=peer, layer=i)
                elif kind == "recv_p":
                    em.emit(Op.RECV, dst=fifo, imm=a, vec=n, peer=peer, count=1, layer=i)
                elif kind == "send":
                    em.emit(Op.SEND, dst=fifo, imm=a, ra=p.ireg, vec=n, peer=peer, layer=i)
                else:
                    em.emit(Op.RECV, dst=fifo, imm=a, ra=p.ireg, vec=n, peer=peer, count=0,
                            layer=i)


def may_deadlock(plan: dict, recv_buffer: int) -> bool:
    """Whether sends-before-receives could deadlock: some directed tile pair carries more
    messages per iteration than a receive buffer holds (the sender then waits for the
    receiver) and the tiles' sends form a cycle (each waits on the next). Then every tile
    keeps the plan's order instead: one global order of the transfers, of which each tile
    does its part in sequence, so the earliest unfinished transfer always finds its sender
    and receiver ready and its (per-pair) buffer empty."""
    import networkx as nx
    sends: dict[tuple[int, int], int] = {}
    for tile, ops in plan.items():
        for kind, peer, _, _ in ops:
            if kind in ("send", "send_p"):
                sends[(tile, peer)] = sends.get((tile, peer), 0) + 1
    if max(sends.values(), default=0) <= recv_buffer:
        return False
    return not nx.is_directed_acyclic_graph(nx.DiGraph(list(sends)))


def check_registers(cfg, prog) -> None:
    if cfg.core.mvmus > 63:
        raise CompilerError("core.mvmus must be <= 63")
