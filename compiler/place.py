"""Place: crossbar blocks -> MVMUs -> cores -> tiles; VFU layers -> cores; tensors -> tiles.

Greedy and in layer order, over the tiles in snake order across the mesh so consecutive
layers sit on neighbouring tiles (short NoC paths). Each MVM layer starts on a fresh core
(layers then pipeline instead of sharing an in-order core); a column strip's blocks stay in
one tile when they fit, so its partial sums meet in tile memory rather than on the NoC.
VFU layers go to an idle core of the tile that holds their input. A model that needs more
MVMUs than the node has is refused with the numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ModelTooBigError
from .ir import LayerProgram
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


def place(prog: LayerProgram, strips: dict[int, list[Strip]], cfg) -> Placement:
    M, cores = cfg.core.mvmus, cfg.tile.cores
    per_tile = M * cores
    order = snake_order(cfg.node.tiles, cfg.node.mesh_width)
    needed = sum(len(s.blocks) for ss in strips.values() for s in ss)
    pl = Placement(strips)
    slot = 0                       # next free MVMU slot, in (tile order, core, mvmu) order
    core_busy: dict[tuple, int] = {}   # (tile, core) -> VFU layers placed there
    overflow = 0                   # tiles the slots need when more than the node has

    def loc(s):
        nonlocal overflow
        t, rest = divmod(s, per_tile)
        if t >= len(order):
            # Keep placing (slots do not depend on the mesh) to report the exact need.
            overflow = max(overflow, t + 1)
            t = 0
        c, m = divmod(rest, M)
        return order[t], c, m

    for i, L in enumerate(prog.layers):
        if L.kind == "mvm":
            if slot % M:
                slot += M - slot % M                     # fresh core per layer
            tiles = set()
            for s in strips[i]:
                nb = len(s.blocks)
                room = per_tile - slot % per_tile
                if 0 < nb <= per_tile and nb > room:
                    slot += room                         # keep the strip in one tile
                for b in s.blocks:
                    b.loc = loc(slot)
                    slot += 1
                    tiles.add(b.loc[0])
                if s.blocks:
                    s.owner = s.blocks[0].loc[:2]
            # Strips with no weights at all (bias only) reduce on the layer's first core.
            first = next((s.owner for s in strips[i] if s.owner), None)
            if first is None:
                t, c, _ = loc(slot)
                first = (t, c)
                slot += M
            for s in strips[i]:
                if s.owner is None:
                    s.owner = first
                    tiles.add(first[0])
            pl.layer_tiles[i] = tiles
        elif L.kind == "vfu":
            home = _home_tile(prog, pl, L.inputs[0] if L.inputs else None, order)
            used_cores = {b.loc[:2] for ss in strips.values() for s in ss for b in s.blocks
                          if b.loc is not None}
            cand = [(core_busy.get((home, c), 0) + (1 if (home, c) in used_cores else 0), c)
                    for c in range(cores)]
            _, c = min(cand)
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
    # A graph input: its first consumer's tile, or the first tile.
    for i, L in enumerate(prog.layers):
        if L.kind == "mvm" and any(prog.storage(x) == st for x in L.inputs):
            return pl.strips[i][0].owner[0]
    return order[0]
