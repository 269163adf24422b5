"""Place: crossbar blocks -> MVMUs -> cores -> tiles; VFU layers -> cores; tensors -> tiles.

Greedy and in layer order, over the tiles in snake order across the mesh so consecutive
layers sit on neighbouring tiles (short NoC paths). Each MVM layer starts on a fresh core
(layers then pipeline instead of sharing an in-order core); a column strip's blocks stay in
one tile when they fit, so its partial sums meet in tile memory rather than on the NoC.
VFU layers (pooling, residual adds, activations not fused into an MVM layer) go to the least
busy core of the tile that holds their first input. With ``vfu_cores="own"`` (the default)
the MVM layers after them skip that core, so a VFU layer has a core of its own: a pool that
shared the next convolution's core would hold it for the pool's whole pixel loop (LeNet-5
on puma: 11 % slower). Where that tile has no idle core left (copies or earlier layers
filled it) a VFU layer takes the next fresh core, on the next tile if need be: the
transfer that adds costs less than a shared core (with 8 control streams ResNet-18 is
2.8-4.5 % faster than sharing, VGG-8 with 8 copies 4.8 %: benchmarks/vfu_fresh_cores.py;
with one control stream per tile it had measured slower). Where those fresh cores would
not fit the node, such VFU layers share a core by their input instead
(``vfu_layers_sharing`` in the mapping), and only where even that does not fit do all
share. Own cores cost cores, and sometimes a tile:
``"shared"`` packs MVM layers onto every core (the fewest cores and tiles, the least area),
and is also what "own" falls back to, with a warning, when own cores would not fit the
node. A model that needs more MVMUs than the node has is refused with the numbers.

Weight replication (``replicate=N``, for pipeline balance as ISAAC does): a convolution gets
up to N copies of its crossbars, in proportion to its output pixels relative to the
largest convolution's, on fresh cores of the same tile; copy j computes one band of output
rows, so the copies work in parallel on the same input map. Only layers that sit in one
tile are copied, only as many copies as that tile has room for, and never so many that
the rest of the model no longer fits the node (placement then retries with fewer)."""
from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass, field

from .errors import CompilerError, ModelTooBigError
from .ir import LayerProgram, MVMLayer
from .partition import Strip


def snake_order(tiles: int, width: int) -> list[int]:
    order = []
    rows = -(-tiles // width)
    for y in range(rows):
        xs = range(width) if y % 2 == 0 else range(width - 1, -1, -1)
        order += [y * width + x for x in xs if y * width + x < tiles]
    return order


@dataclass
class Placement:
    strips: dict[int, list[Strip]]
    vfu_core: dict[int, tuple] = field(default_factory=dict)       # layer -> (tile, core)
    layer_tiles: dict[int, set] = field(default_factory=dict)      # tiles the layer runs on
    n_tiles: int = 0
    tile_of_order: list = field(default_factory=list)              # physical tile ids
    # layer -> [(first output row, rows, strips)], one per copy; copy 0's strips are
    # ``strips[layer]``. Absent: one copy computing every row.
    bands: dict[int, list] = field(default_factory=dict)
    vfu_cores: str = "own"                 # the policy placement could keep (VFU_CORES)
    vfu_sharing: list = field(default_factory=list)  # "own", yet no idle core: VFU layers

    def copies(self, i: int) -> list[list[Strip]]:
        """The strips of every copy of MVM layer i."""
        return [b[2] for b in self.bands[i]] if i in self.bands else [self.strips[i]]

    def all_blocks(self) -> list:
        return [b for i in self.strips for ss in self.copies(i) for s in ss for b in s.blocks]


def wanted_copies(prog: LayerProgram, replicate: int) -> dict[int, int]:
    """Copies per convolution: ``replicate`` for the one with most output pixels, fewer
    in proportion for the others, never more than its output rows."""
    convs = {i: L for i, L in enumerate(prog.layers) if _replicable(L)}
    if replicate <= 1 or not convs:
        return {}
    top = max(L.Ho * L.Wo for L in convs.values())
    return {i: max(1, min(replicate, L.Ho, _share(replicate, L, top)))
            for i, L in convs.items()}


def _share(replicate: int, L, top: int) -> int:
    """The copies ``L`` gets for its output pixels, before its rows or a tile limit it."""
    return round(replicate * L.Ho * L.Wo / top)


def _replicable(L) -> bool:
    return (isinstance(L, MVMLayer) and L.is_conv and L.Ho > 1
            and not hasattr(L, "generate_code"))


VFU_CORES = ("own", "shared")
"""Where VFU layers run: on a core of their own, or sharing MVM layers' cores."""


def check_vfu_cores(vfu_cores) -> None:
    if vfu_cores not in VFU_CORES:
        raise CompilerError(f"vfu_cores = {vfu_cores!r}: must be one of "
                            f"{', '.join(VFU_CORES)}")


def place(prog: LayerProgram, strips: dict[int, list[Strip]], cfg,
          replicate: int = 1, vfu_cores: str = "own") -> Placement:
    """Place every layer; with ``replicate`` > 1, copies that would push the model past the
    node are given up (one fewer at a time, down to none, with a warning saying what was
    kept); ``vfu_cores`` (see the module docstring) falls back from "own" to "shared"
    before copies are given up."""
    if isinstance(replicate, bool) or not isinstance(replicate, numbers.Integral) \
            or replicate < 1:
        raise CompilerError(f"replicate = {replicate!r}: must be a whole number >= 1")
    replicate = asked = int(replicate)
    check_vfu_cores(vfu_cores)
    # copies split a layer's output rows: a convolution with one gets none, said where it
    # would otherwise have had some (not a classifier whose kernel spans its whole input)
    convs = [L for L in prog.layers if isinstance(L, MVMLayer) and L.is_conv]
    top = max((L.Ho * L.Wo for L in convs), default=1)
    flat = [L.name for L in convs if L.Ho == 1 and _share(replicate, L, top) > 1]
    if replicate > 1 and flat:
        warnings.warn(f"replicate = {replicate}: {', '.join(flat[:3])}"
                      f"{' and others' if len(flat) > 3 else ''} not copied (a convolution "
                      f"with one output row, e.g. 1-D: copies split output rows)",
                      stacklevel=3)
    # (own cores, fresh cores where the input's tile has none idle): own cores, taking
    # fresh ones; then sharing a core by the input where none is idle; then shared
    tries = ((True, True), (True, False), (False, False)) if vfu_cores == "own" else (
        (False, False),)
    own_need = None     # node.tiles that VFU layers on cores of their own need
    while True:
        for own_cores, fresh in tries:
            try:
                pl = _place(prog, strips, cfg, replicate, own_cores, fresh)
            except ModelTooBigError as e:
                if replicate == 1 and own_cores and fresh:
                    own_need = e.tiles_needed
                if replicate == 1 and not own_cores:
                    if vfu_cores == "own" and own_need and own_need > (e.tiles_needed or 0):
                        # the shared placement's need fits only by dropping the policy asked
                        raise ModelTooBigError(f"{e} ({own_need} for VFU layers on cores of "
                                               f"their own, as vfu_cores = own asks)",
                                               tiles_needed=e.tiles_needed) from None
                    raise
                continue
            if not own_cores and vfu_cores == "own" and pl.vfu_core:
                copies = f" with up to {replicate} copies" if replicate > 1 else ""
                warnings.warn(f"vfu_cores = own: VFU layers share cores with MVM layers; "
                              f"with cores of their own the model{copies} does not fit the "
                              f"node's {cfg.node.tiles} tiles", stacklevel=3)
            if replicate < asked:
                warnings.warn(f"replicate = {asked}: " + (
                    f"up to {replicate} copies" if replicate > 1 else "no copies")
                    + f" fit the node's {cfg.node.tiles} tiles", stacklevel=3)
            return pl
        replicate -= 1   # halving skipped counts that fit (3 gave 1 where 2 fit)


def _place(prog: LayerProgram, strips: dict[int, list[Strip]], cfg,
           replicate: int, own_cores: bool = True, fresh: bool = True) -> Placement:
    """One placement attempt. ``own_cores``: MVM layers skip cores that VFU layers took
    (else they may share them). ``fresh``: a VFU layer with no idle core on its input's
    tile takes the next fresh core (else it shares one there)."""
    for ss in strips.values():
        for s in ss:
            s.owner = None                 # a retry starts from scratch: no core taken
            for b in s.blocks:
                b.loc = None
    M, cores = cfg.core.mvmus, cfg.tile.cores
    per_tile = M * cores
    order = snake_order(cfg.node.tiles, cfg.node.mesh_width)
    needed = sum(len(s.blocks) for ss in strips.values() for s in ss)
    pl = Placement(strips, vfu_cores="own" if own_cores else "shared")
    want = wanted_copies(prog, replicate)
    slot = 0                       # next free MVMU slot, in (tile order, core, mvmu) order
    core_busy: dict[tuple, int] = {}   # (tile, core) -> VFU layers placed there
    overflow = 0                   # tiles the slots need when more than the node has

    def tile_at(t: int) -> int:
        # Past the node, tiles of their own (ids below 0): placing goes on as on a node that
        # big (slots do not depend on the mesh), to report the exact need. Folded onto tile
        # 0, later VFU layers took its idle cores and the need came out one tile short.
        return order[t] if t < len(order) else -1 - t

    def loc(s):
        nonlocal overflow
        t, rest = divmod(s, per_tile)
        if t >= len(order):
            overflow = max(overflow, t + 1)
        c, m = divmod(rest, M)
        return tile_at(t), c, m

    def vfu_taken(s) -> bool:      # slot s starts a core that a VFU layer runs on
        t, rest = divmod(s, per_tile)
        return own_cores and s % M == 0 and (tile_at(t), rest // M) in core_busy

    def fresh_core(s) -> int:      # the first slot at or after s that starts a free core
        s += -s % M
        while vfu_taken(s):
            s += M
        return s

    for i, L in enumerate(prog.layers):
        if L.kind == "mvm":
            slot = fresh_core(slot)                      # fresh core per layer
            tiles = set()
            for s in strips[i]:
                nb = len(s.blocks)
                to_end = per_tile - slot % per_tile
                room = sum(not vfu_taken(k - k % M) for k in range(slot, slot + to_end))
                if 0 < nb <= per_tile and nb > room:
                    slot += to_end                       # keep the strip in one tile
                for b in s.blocks:
                    while vfu_taken(slot):
                        slot += M
                    b.loc = loc(slot)
                    slot += 1
                    tiles.add(b.loc[0])
                if s.blocks:
                    s.owner = s.blocks[0].loc[:2]
            # Strips with no weights at all (bias only) reduce on the layer's first core.
            first = next((s.owner for s in strips[i] if s.owner), None)
            if first is None:
                t, c, _ = loc(slot)   # slot starts a free core: the layer placed nothing
                first = (t, c)
                slot += M
            for s in strips[i]:
                if s.owner is None:
                    s.owner = first
                    tiles.add(first[0])
            pl.layer_tiles[i] = tiles
            if want.get(i, 1) > 1 and len(tiles) == 1 and not overflow:
                slot = _replicate(pl, i, L, want[i], slot, M, per_tile, loc, vfu_taken)
        elif L.kind == "vfu":
            # The least busy core of the tile that writes its first input (measured, the
            # tiles of all inputs placed ResNet-18 10 % slower when tiles had one control
            # stream); with own cores and none idle there, the next fresh core.
            home = _home_tile(prog, pl, L.inputs[0] if L.inputs else None, order)
            used_cores = {b.loc[:2] for b in pl.all_blocks() if b.loc is not None}
            used_cores |= {s.owner for ss in pl.strips.values() for s in ss if s.owner}
            _, c = min((core_busy.get((home, c), 0) + ((home, c) in used_cores), c)
                       for c in range(cores))
            if own_cores and (home, c) in used_cores | set(core_busy):
                if fresh:                     # the next fresh core, maybe on the next tile
                    slot = fresh_core(slot)
                    home, c, _ = loc(slot)
                else:
                    pl.vfu_sharing.append(i)  # no idle core where its inputs are
            pl.vfu_core[i] = (home, c)
            core_busy[(home, c)] = core_busy.get((home, c), 0) + 1
            pl.layer_tiles[i] = {home}
    if overflow:
        xb = cfg.arrays * cfg.slices
        raise ModelTooBigError(
            f"the model needs {needed} MVMUs ({needed * xb} crossbars), placed a layer per "
            f"core on {overflow} tiles of {cores} cores x {M} MVMUs; the node has "
            f"{cfg.node.tiles} tiles ({per_tile * cfg.node.tiles * xb} crossbars); use "
            f"--set node.tiles={overflow} or more, or bigger crossbars", tiles_needed=overflow)
    used = set()
    for ts in pl.layer_tiles.values():
        used |= ts
    # Program tile ids are physical ids; the program covers every id up to the largest.
    pl.n_tiles = max(used) + 1 if used else 1
    pl.tile_of_order = order
    return pl


def _replicate(pl: Placement, i: int, L, copies: int, slot: int, M: int, per_tile: int,
               loc, vfu_taken) -> int:
    """Add up to ``copies - 1`` copies of layer i's crossbars on fresh cores after ``slot``
    in the same tile (as many as fit before the tile's end or a core a VFU layer took);
    split the output rows into bands. Returns the next free slot."""
    strips = pl.strips[i]
    nb = sum(len(s.blocks) for s in strips)
    per_copy = max(1, -(-nb // M)) * M               # whole cores, so copies never share
    slot += -slot % M
    room = (per_tile - slot % per_tile) % per_tile if slot % per_tile else 0
    room = next((k for k in range(0, room, M) if vfu_taken(slot + k)), room)
    # a layer with no crossbar (all-zero weights: its bias alone) computes nothing a copy
    # could share: a copy would only take a core
    copies = min(copies, 1 + room // per_copy) if nb else 1
    if copies <= 1:
        return slot
    sets = [strips]
    for _ in range(copies - 1):
        copy, k = [], slot
        for s in strips:
            c = Strip(s.layer, s.index, s.c0, s.n)
            for b in s.blocks:
                c.blocks.append(dataclasses.replace(b, loc=loc(k)))
                k += 1
            copy.append(c)
        first = next((b.loc[:2] for c in copy for b in c.blocks), loc(slot)[:2])
        for c in copy:
            c.owner = c.blocks[0].loc[:2] if c.blocks else first
        sets.append(copy)
        slot += per_copy
    edges = [round(j * L.Ho / copies) for j in range(copies + 1)]
    pl.bands[i] = [(edges[j], edges[j + 1] - edges[j], sets[j]) for j in range(copies)]
    return slot


def _home_tile(prog: LayerProgram, pl: Placement, tensor: str | None, order) -> int:
    """The tile where a tensor's producer writes it (first producer tile), or tile 0."""
    if tensor is None:
        return order[0]
    st = prog.storage(tensor)
    for i, L in enumerate(prog.layers):
        if L.output == st and L.kind != "alias":
            if L.kind == "mvm":
                return pl.strips[i][0].owner[0]
            return pl.vfu_core[i][0]
    # A graph input: its first placed crossbar consumer's tile, or the first tile (a VFU
    # layer can read it before any crossbar layer that does is placed).
    for i, L in enumerate(prog.layers):
        if (L.kind == "mvm" and pl.strips[i] and pl.strips[i][0].owner is not None
                and any(prog.storage(x) == st for x in L.inputs)):
            return pl.strips[i][0].owner[0]
    return order[0]
