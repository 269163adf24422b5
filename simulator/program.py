"""A compiled program: instruction streams, crossbar contents, memory image, I/O and mapping.

Saved as a folder: ``program.npz`` (arrays only, loaded with ``allow_pickle=False``) and
``manifest.json`` (config, I/O descriptions, layers, mapping summary). No pickle anywhere.
A program is validated when built and when loaded: a reference to a missing tile, core,
MVMU, register, address or integer register is refused with a message naming it.
"""
from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import MAX_ADC_BITS, MachineConfig, from_dict
from .errors import ConfigError, ProgramError, XbarsimError, first_line
from .fileio import atomic_write, read_npz
from .isa import (CORE_OPS, INSTR_DTYPE, MAX_COUNT, TILE_OPS, TRANSCENDENTAL_FNS, UNARY_FNS,
                  Fn, Op, RegisterLayout, disassemble)

FORMAT_VERSION = 2
#: Versions :meth:`Program.load` reads: 1 had one control stream per tile (no
#: ``control_tiles``; an older reader would run version 2's streams on the wrong tiles).
READS_VERSIONS = (1, 2)


@dataclass
class TensorPort:
    """Where a graph input or output lives in tile memory and how it is quantized.

    Real value = integer word * ``scale``. Words are laid out in C order of ``shape``
    (no batch dimension) starting at ``addr`` of tile ``tile``."""

    name: str
    tile: int
    addr: int
    shape: tuple[int, ...]
    scale: float
    count: int = 0  # consumer count the host stores inputs with (0 = persistent)
    map_layout: tuple | None = None
    """(H, W, C, pad_top, pad_left, padded_width): a (C, H, W) tensor stored channel-last
    inside a padded buffer; None = contiguous."""
    perm: tuple | None = None
    """Contiguous layout only: memory word i holds logical (C-order) element perm[i]."""

    @property
    def size(self) -> int:
        # Python integers: an int64 product of a huge shape wraps (to 0, or below)
        return math.prod(int(d) for d in self.shape)

    def end(self) -> int:
        """One past the last tile-memory word the tensor occupies (its padded buffer's
        last element with a map layout)."""
        if self.map_layout is not None:
            H, W, C, pt, pl, Wp = self.map_layout
            return self.addr + ((H - 1 + pt) * Wp + W - 1 + pl) * C + C
        return self.addr + self.size

    def addresses(self) -> np.ndarray:
        """Tile-memory address of each logical element (C order)."""
        if self.map_layout is not None:
            H, W, C, pt, pl, Wp = self.map_layout
            c, y, x = np.meshgrid(np.arange(C), np.arange(H), np.arange(W), indexing="ij")
            return (self.addr + ((y + pt) * Wp + x + pl) * C + c).reshape(-1).astype(np.int64)
        if self.perm is not None:
            a = np.empty(self.size, np.int64)
            a[np.asarray(self.perm)] = self.addr + np.arange(self.size)
            return a
        return self.addr + np.arange(self.size, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"name": self.name, "tile": self.tile, "addr": self.addr,
                "shape": list(self.shape), "scale": self.scale, "count": self.count,
                "map_layout": None if self.map_layout is None else list(self.map_layout),
                "perm": None if self.perm is None else [int(v) for v in self.perm]}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorPort":
        ml, perm = d.get("map_layout"), d.get("perm")
        where = f"tensor {d.get('name')!r}"
        return cls(d["name"], _json_int(d["tile"], f"{where} tile"),
                   _json_int(d["addr"], f"{where} addr"), tuple(d["shape"]),
                   _json_float(d["scale"], f"{where} scale"),
                   _json_int(d.get("count", 0), f"{where} count"),
                   None if ml is None else tuple(_json_int(v, f"{where} map_layout")
                                                 for v in ml),
                   None if perm is None else tuple(_json_int(v, f"{where} perm")
                                                   for v in perm))


def _json_int(v, what: str) -> int:
    """An integer read from a manifest: a JSON number with no fraction (1.9 tiles or a
    ``true`` would otherwise be truncated or counted as 1)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ProgramError(f"{what}: {v!r} is not an integer")
    return int(v)


def _json_float(v, what: str) -> float:
    """A real number read from a manifest (``true`` would otherwise read as 1.0)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProgramError(f"{what}: {v!r} is not a number")
    return float(v)


def _int_array(value, what: str, dtype=np.int32) -> np.ndarray:
    """``value`` as a ``dtype`` array, refused where an entry would wrap (2**32 + 3 ADC bits
    read as 3) or is not an integer."""
    arr = np.asarray(value)
    if arr.size == 0:
        return arr.astype(dtype)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ProgramError(f"{what} must hold integers (got {arr.dtype})")
    info = np.iinfo(dtype)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < info.min or hi > info.max:
        raise ProgramError(f"{what}: {lo if lo < info.min else hi} is outside the "
                           f"{np.dtype(dtype).name} range of the format")
    return arr.astype(dtype)


@dataclass
class Program:
    """Everything the simulator needs to run a model on one node."""

    config: MachineConfig
    n_tiles: int
    core_code: list[np.ndarray]
    """Instruction stream per core, index ``tile * tile.cores + core``."""
    tile_code: list[np.ndarray]
    """Tile control streams (send/recv); stream ``s`` runs on tile ``control_tiles[s]``."""
    mvmu_loc: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    """(n, 3): tile, core, MVMU index of each programmed MVMU."""
    mvmu_levels: np.ndarray | None = None
    """(n, arrays*slices, rows, cols) uint8 cell levels."""
    mvmu_rows_used: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mvmu_cols_used: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mvmu_adc_bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    """Per MVMU ADC bits; -1 = the config's ``adc.bits``; 0 = ideal."""
    mvmu_layer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mem_init: list[tuple[int, int, np.ndarray, int]] = field(default_factory=list)
    """Preloaded memory segments: (tile, addr, int64 values, consumer count)."""
    inputs: list[TensorPort] = field(default_factory=list)
    outputs: list[TensorPort] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    """Layer table: at least ``name`` and ``op`` per layer; index = instruction ``layer``."""
    mapping: dict = field(default_factory=dict)
    """Summary: layer -> crossbars/cores/tiles, utilization (free-form, JSON-able)."""
    mem_words: np.ndarray | None = None
    """Words of tile memory each tile's program uses (default: the eDRAM's size). May
    exceed ``tile.edram_kb``; the report then flags the overflow."""
    control_tiles: np.ndarray | None = None
    """The tile of each control stream (default: one stream per tile, stream t on tile t).
    A tile runs at most ``tile.control_streams`` of them side by side."""

    def __post_init__(self):
        loc = _int_array(self.mvmu_loc, "mvmu_loc")
        if loc.size and (loc.ndim != 2 or loc.shape[1] != 3):
            raise ProgramError(f"mvmu_loc must be (n, 3) rows of tile, core, MVMU (got shape "
                               f"{loc.shape})")
        self.mvmu_loc = loc.reshape(-1, 3)
        n = len(self.mvmu_loc)
        cfg = self.config
        if self.mvmu_levels is None:
            self.mvmu_levels = np.zeros((n, cfg.arrays * cfg.slices, cfg.xbar.rows,
                                         cfg.xbar.cols), np.uint8)
        self.mvmu_levels = np.asarray(self.mvmu_levels)
        levels_dtype = self.mvmu_levels.dtype
        # a fraction would be dropped when the crossbars are programmed
        if not np.issubdtype(levels_dtype, np.integer):
            raise ProgramError(f"mvmu_levels must hold integer cell levels (got "
                               f"{levels_dtype})")
        for name, default in (("mvmu_rows_used", cfg.xbar.rows),
                              ("mvmu_cols_used", cfg.xbar.cols),
                              ("mvmu_adc_bits", -1), ("mvmu_layer", -1)):
            arr = _int_array(getattr(self, name), name)
            if arr.size == 0 and n:
                arr = np.full(n, default, np.int32)
            setattr(self, name, arr)
        if self.mem_words is None:
            self.mem_words = np.full(self.n_tiles, cfg.edram_words, np.int64)
        self.mem_words = _int_array(self.mem_words, "mem_words", np.int64).reshape(-1)
        self.core_code = [np.asarray(c, INSTR_DTYPE) for c in self.core_code]
        self.tile_code = [np.asarray(c, INSTR_DTYPE) for c in self.tile_code]
        if self.control_tiles is None:
            if len(self.tile_code) != self.n_tiles:
                raise ProgramError(f"program has {len(self.tile_code)} control streams for "
                                   f"{self.n_tiles} tiles; with other than one per tile, "
                                   f"give control_tiles (the tile of each)")
            self.control_tiles = np.arange(self.n_tiles, dtype=np.int64)
        ctl = np.asarray(self.control_tiles)
        if ctl.size and (ctl.ndim != 1 or not np.issubdtype(ctl.dtype, np.integer)
                         or np.abs(ctl).max() > 1 << 62):
            raise ProgramError(f"control_tiles must be a 1-D list of tile indices (got "
                               f"{ctl.dtype}, {ctl.ndim}-D)")
        self.control_tiles = ctl.astype(np.int64).reshape(-1)
        validate(self)
        # in range now (cells hold at most 8 bits): stored as the format saves them, so a
        # program built with int64 levels loads back from its own folder
        self.mvmu_levels = self.mvmu_levels.astype(np.uint8, copy=False)
        # What the simulator derives (crossbar models, decoded streams) is cached per
        # program: an edit in place would leave it stale, so the arrays it reads are
        # read-only. Assign a new array (or use dataclasses.replace, which validates).
        for arr in (self.mvmu_loc, self.mvmu_levels, self.mvmu_rows_used,
                    self.mvmu_cols_used, self.mvmu_adc_bits, self.mvmu_layer,
                    self.control_tiles, *self.core_code, *self.tile_code):
            arr.flags.writeable = False

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        self.__dict__.pop("_derived", None)      # any field changed: derive again

    def derived(self, what: str) -> dict:
        """A cache the simulator keeps on this program (``what``: which), emptied whenever a
        field is assigned."""
        return self.__dict__.setdefault("_derived", {}).setdefault(what, {})

    # ---- derived views -------------------------------------------------------------------
    @property
    def layout(self) -> RegisterLayout:
        return RegisterLayout.of(self.config)

    @property
    def n_agents(self) -> int:
        """Instruction streams: every tile's cores, then the control streams."""
        return len(self.core_code) + len(self.tile_code)

    def agent_tiles(self) -> np.ndarray:
        """The tile of every agent (index into ``core_code + tile_code``)."""
        return np.concatenate([np.repeat(np.arange(self.n_tiles, dtype=np.int64),
                                         self.config.tile.cores), self.control_tiles])

    def agent_tile(self, a: int) -> int:
        return int(self.agent_tiles()[a])

    def agent_name(self, a: int) -> str:
        """``tile 3 core 2``; a control stream by its FIFO, ``tile 3 control 5`` (the FIFO
        its sends and receives use, the same on every tile: one layer's transfers carry one
        name), ``tile 3 control`` when it is the tile's only stream, on FIFO 0 or none, and
        ``tile 3 control #1`` (its place among the tile's streams) otherwise."""
        names = self.derived("agent_names")      # named once per program
        if not names:
            names.update(enumerate(self._agent_names()))
        return names[a]

    def _agent_names(self) -> list[str]:
        cores = self.config.tile.cores
        out = [f"tile {t} core {c}" for t in range(self.n_tiles) for c in range(cores)]
        fifos = [self._stream_fifo(s) for s in range(len(self.tile_code))]
        for s, t in enumerate(self.control_tiles.tolist()):
            mine = np.flatnonzero(self.control_tiles == t).tolist()
            theirs = [fifos[m] for m in mine]
            f = fifos[s]
            if len(mine) == 1 and f in (0, None):
                out.append(f"tile {t} control")
            elif f is not None and theirs.count(f) == 1:
                out.append(f"tile {t} control {f}")
            else:
                out.append(f"tile {t} control #{mine.index(s)}")
        return out

    def _stream_fifo(self, s: int) -> int | None:
        """The one FIFO control stream ``s`` sends and receives on (None: none, or several)."""
        code = self.tile_code[s]
        f = np.unique(code["dst"][np.isin(code["op"], [int(Op.SEND), int(Op.RECV)])])
        return int(f[0]) if len(f) == 1 else None

    def mvmu_index(self) -> dict[tuple[int, int, int], int]:
        return {tuple(int(v) for v in loc): i for i, loc in enumerate(self.mvmu_loc)}

    def adc_bits_of(self, i: int) -> int | None:
        """Resolved ADC bits of MVMU ``i`` (None = ideal)."""
        b = int(self.mvmu_adc_bits[i])
        if b == -1:
            return self.config.adc.bits
        return None if b == 0 else b

    def device_keys(self) -> list[tuple[int, int]]:
        """A stable identity per MVMU for device randomness: (layer + 1, index among that
        layer's MVMUs). Copies of a layer's weights come after its own blocks, so adding
        copies changes no other MVMU's key (noise draws stay comparable)."""
        seen: dict[int, int] = {}
        keys = []
        for layer in self.mvmu_layer.tolist():
            k = seen.get(layer, 0)
            seen[layer] = k + 1
            keys.append((int(layer) + 1, k))
        return keys

    def cores_used(self) -> set[tuple[int, int]]:
        """(tile, core) of every core that holds an MVMU or runs code: what area is charged.
        A stream of only ``hlt``/``nop`` is no work (the compiler ends every core's stream
        with ``hlt``, the idle ones' too)."""
        used = {(int(t), int(c)) for t, c, _ in self.mvmu_loc}
        used |= {divmod(k, self.config.tile.cores) for k, code in enumerate(self.core_code)
                 if _works(code)}
        return used

    def tiles_used(self, routes: bool = False) -> set[int]:
        """Tiles the program uses (their eDRAM is charged): one with a working core or
        control unit, memory it preloads, or a tensor the host writes or reads. Placement
        fills tiles in snake order over the mesh, so tiles below the highest index used may
        hold nothing. ``routes``: also the tiles whose router only passes a message on its
        XY route (their routers are charged)."""
        used = {t for t, _ in self.cores_used()}
        used |= {int(t) for t, code in zip(self.control_tiles, self.tile_code)
                 if _works(code)}
        used |= {int(t) for t, *_ in self.mem_init}
        used |= {p.tile for p in self.inputs + self.outputs}
        if not routes:
            return used
        width = self.config.node.mesh_width
        for src, code in zip(self.control_tiles.tolist(), self.tile_code):
            for dst in np.unique(code["peer"][code["op"] == int(Op.SEND)]).tolist():
                x, y = src % width, src // width      # XY routing, as the NoC model's
                x1, y1 = dst % width, dst // width
                while (x, y) != (x1, y1):
                    if x != x1:
                        x += 1 if x1 > x else -1
                    else:
                        y += 1 if y1 > y else -1
                    used.add(y * width + x)
        return used

    @property
    def n_instructions(self) -> int:
        return sum(len(c) for c in self.core_code) + sum(len(c) for c in self.tile_code)

    def listing(self, tile: int | None = None, core: int | None = None) -> str:
        """The program as text, as PUMA's compiler writes per-core assembly: tile by tile,
        each core's stream and then the tile's control streams, each under a header
        (``# tile 0 core 1: 12 instructions, MVMUs 0-3, layers fc1, relu1``) and listed by
        :func:`~simulator.isa.disassemble`, an instruction of a layer ending ``# NAME``.
        ``tile``: only that tile's streams; ``core`` (with ``tile``): only that core's."""
        cores = self.config.tile.cores
        for name, v in (("tile", tile), ("core", core)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise ProgramError(f"{name} = {v!r}: an index (an integer) or None")
        if core is not None and tile is None:
            raise ProgramError(f"core {core}: name its tile too (core indices are per tile)")
        if tile is not None and not 0 <= tile < self.n_tiles:
            raise ProgramError(f"tile {tile}: the program has {_indices('tile', self.n_tiles)}")
        if core is not None and not 0 <= core < cores:
            raise ProgramError(f"core {core}: tile {tile} has {_indices('core', cores)} "
                               f"(tile.cores)")
        agents = []     # indices into core_code + tile_code, as agent_name takes them
        for t in range(self.n_tiles) if tile is None else [tile]:
            agents += [t * cores + c for c in (range(cores) if core is None else [core])]
            if core is None:
                agents += (len(self.core_code) + np.flatnonzero(self.control_tiles == t)).tolist()
        # an object array so that a stream's layer indices pick its names at once; the
        # extra last entry is what index -1 (no layer) picks
        names = np.array([x["name"] for x in self.layers] + [""], dtype=object)
        mvmus: dict[tuple[int, int], list[int]] = {}
        for t, c, m in self.mvmu_loc.tolist():
            mvmus.setdefault((t, c), []).append(m)
        streams = self.core_code + self.tile_code
        blocks = []
        for a in agents:
            code = streams[a]
            n = len(code)
            about = [f"{n} instruction{'s' * (n != 1)}"]
            if a < len(self.core_code):
                held = sorted(mvmus.get(divmod(a, cores), []))
                if held:
                    about.append(f"MVMU{'s' * (len(held) > 1)} {_ranges(held)}")
            layer_ids, first = np.unique(code["layer"], return_index=True)
            used = [names[i] for i in layer_ids[np.argsort(first)] if i >= 0]  # stream order
            if used:
                about.append(f"layer{'s' * (len(used) > 1)} {', '.join(used)}")
            lines = disassemble(code)
            width = max(map(len, lines), default=0)
            blocks.append("\n".join(
                [f"# {self.agent_name(a)}: {', '.join(about)}"]
                + [f"{line:<{width}s}  # {name}" if name else line
                   for line, name in zip(lines, names[code["layer"]].tolist())]))
        return "\n\n".join(blocks) + "\n"

    # ---- persistence ------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``program.npz`` + ``manifest.json`` into ``folder`` (created)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a program is saved as a folder, and this "
                                     "is a file", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "core_code": _concat(self.core_code), "core_start": _starts(self.core_code),
            "tile_code": _concat(self.tile_code), "tile_start": _starts(self.tile_code),
            "control_tiles": self.control_tiles,
            "mvmu_loc": self.mvmu_loc, "mvmu_levels": self.mvmu_levels,
            "mvmu_rows_used": self.mvmu_rows_used, "mvmu_cols_used": self.mvmu_cols_used,
            "mvmu_adc_bits": self.mvmu_adc_bits, "mvmu_layer": self.mvmu_layer,
            "mem_words": self.mem_words,
            "init_tile": np.array([s[0] for s in self.mem_init], np.int64),
            "init_addr": np.array([s[1] for s in self.mem_init], np.int64),
            "init_count": np.array([s[3] for s in self.mem_init], np.int64),
            "init_start": _starts([s[2] for s in self.mem_init]),
            "init_values": (np.concatenate([np.asarray(s[2], np.int64) for s in self.mem_init])
                            if self.mem_init else np.zeros(0, np.int64)),
        }
        manifest = {
            "format": "xbarsim-program", "version": FORMAT_VERSION,
            "config": self.config.to_dict(), "n_tiles": self.n_tiles,
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
            "layers": self.layers, "mapping": self.mapping,
        }
        text = json.dumps(manifest, indent=1, default=jsonable)
        # each file renamed into place only once complete; the old manifest goes only when
        # the new archive is written (a failed save leaves the previous program loading),
        # just before that archive replaces the old, so no folder pairs old and new; the
        # manifest last
        with atomic_write(folder / "program.npz", ".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
            (folder / "manifest.json").unlink(missing_ok=True)
        with atomic_write(folder / "manifest.json") as tmp:
            tmp.write_text(text)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Program":
        """Read a program saved by :meth:`save`; refuses malformed or inconsistent ones."""
        folder = Path(folder)
        mpath, apath = folder / "manifest.json", folder / "program.npz"
        for p in (mpath, apath):
            if not p.exists():
                raise ProgramError(f"{folder}: not a program folder (missing {p.name}); "
                                   f"make one with `xbarsim compile MODEL.onnx -o {folder}`")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ProgramError(f"{mpath}: not valid JSON ({first_line(e)})") from e
        if not isinstance(manifest, dict) or manifest.get("format") != "xbarsim-program":
            raise ProgramError(f"{mpath}: not an xbarsim program manifest")
        version = manifest.get("version")
        if isinstance(version, bool) or version not in READS_VERSIONS:
            raise ProgramError(f"{mpath}: format version {manifest.get('version')!r}, "
                               f"this xbarsim reads versions "
                               f"{', '.join(map(str, READS_VERSIONS))}")
        a = read_npz(apath, ProgramError)
        required = ("core_code", "core_start", "tile_code", "tile_start", "mvmu_loc",
                    "mvmu_levels", "mvmu_rows_used", "mvmu_cols_used", "mvmu_adc_bits",
                    "mvmu_layer", "mem_words", "init_tile", "init_addr", "init_count",
                    "init_start", "init_values")
        missing = [k for k in required if k not in a]
        if missing:   # save writes them all: a missing one would load as a default
            raise ProgramError(f"{apath}: missing arrays {', '.join(missing)}; recompile with "
                               f"`xbarsim compile`")
        if a["mvmu_levels"].dtype != np.uint8:
            raise ProgramError(f"{apath}: mvmu_levels has dtype {a['mvmu_levels'].dtype}; "
                               f"cell levels are uint8")
        for k in required + ("control_tiles",) * ("control_tiles" in a):
            if k not in ("core_code", "tile_code", "mvmu_levels") and not (
                    np.issubdtype(a[k].dtype, np.integer) and a[k].ndim == (2 if k ==
                                                                           "mvmu_loc" else 1)):
                raise ProgramError(f"{apath}: {k} must be a {'2' if k == 'mvmu_loc' else '1'}"
                                   f"-D integer array (got {a[k].dtype}, {a[k].ndim}-D)")
            if a[k].dtype == np.uint64 and a[k].size and a[k].max() > np.iinfo(np.int64).max:
                raise ProgramError(f"{apath}: {k} holds {int(a[k].max())}, past the int64 "
                                   f"the machine's words are")
        n_seg = len(a["init_start"]) - 1
        if not (n_seg >= 0 and a["init_start"][0] == 0
                and a["init_start"][-1] == len(a["init_values"])
                and (np.diff(a["init_start"]) >= 0).all()
                and len(a["init_tile"]) == len(a["init_addr"]) == len(a["init_count"])
                == n_seg):
            raise ProgramError(f"{apath}: the memory image's arrays disagree (init_start must "
                               f"rise from 0 to the {len(a['init_values'])} init_values, one "
                               f"segment per init_tile/init_addr/init_count entry)")
        if a["core_code"].dtype != INSTR_DTYPE or a["tile_code"].dtype != INSTR_DTYPE:
            raise ProgramError(f"{apath}: instruction arrays do not have the ISA's dtype")
        for code, start in (("core_code", "core_start"), ("tile_code", "tile_start")):
            st, n = np.asarray(a[start]), len(a[code])
            if not (st.ndim == 1 and len(st) and st[0] == 0 and st[-1] == n
                    and (np.diff(st) >= 0).all()):
                # a cut or padded stream would otherwise run as a shorter, plausible program
                raise ProgramError(f"{apath}: {start} does not split the {n} instructions of "
                                   f"{code} (it must rise from 0 to {n}); recompile with "
                                   f"`xbarsim compile`")
        malformed = (KeyError, TypeError, ValueError, IndexError, AttributeError)
        try:
            parts = cls._parts(manifest, a)
        except ConfigError as e:   # name the file the machine came from
            raise ProgramError(f"{mpath}: config: {e}") from e
        except XbarsimError as e:
            raise ProgramError(f"{mpath}: {e}") from e
        except malformed as e:
            # a hand-edited or truncated manifest: name the file, not the Python error site
            raise ProgramError(f"{mpath}: malformed ({type(e).__name__}: {e}); recompile "
                               f"with `xbarsim compile`") from e
        try:
            return cls(**parts)   # validate() checks the parts against the machine
        except XbarsimError as e:   # name the folder the inconsistent program came from
            raise ProgramError(f"{folder}: {e}") from e
        except malformed as e:   # arrays of the wrong rank or type that validate() trips on
            raise ProgramError(f"{folder}: inconsistent program ({type(e).__name__}: {e}); "
                               f"recompile with `xbarsim compile`") from e

    @staticmethod
    def _parts(manifest: dict, a: dict) -> dict:
        """The constructor's arguments, read from the manifest and the arrays."""
        cfg = from_dict(manifest["config"])
        init = [(int(t), int(ad), a["init_values"][s:e].copy(), int(c)) for t, ad, c, s, e in
                zip(a["init_tile"], a["init_addr"], a["init_count"], a["init_start"][:-1],
                    a["init_start"][1:])]
        return dict(
            config=cfg, n_tiles=_json_int(manifest["n_tiles"], "n_tiles"),
            core_code=_split(a["core_code"], a["core_start"]),
            tile_code=_split(a["tile_code"], a["tile_start"]),
            control_tiles=a.get("control_tiles"),   # older files: one stream per tile
            mvmu_loc=a["mvmu_loc"], mvmu_levels=a["mvmu_levels"],
            mvmu_rows_used=a.get("mvmu_rows_used", np.zeros(0)),
            mvmu_cols_used=a.get("mvmu_cols_used", np.zeros(0)),
            mvmu_adc_bits=a.get("mvmu_adc_bits", np.zeros(0)),
            mvmu_layer=a.get("mvmu_layer", np.zeros(0)),
            mem_init=init, mem_words=a.get("mem_words"),
            # every version wrote both: a missing list would load a program with no ports
            inputs=[TensorPort.from_dict(d) for d in manifest["inputs"]],
            outputs=[TensorPort.from_dict(d) for d in manifest["outputs"]],
            layers=manifest.get("layers", []), mapping=manifest.get("mapping", {}),
        )


def jsonable(o):
    """``json.dumps`` default for numpy scalars and arrays."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _concat(streams: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(streams) if streams else np.zeros(0, INSTR_DTYPE)


def _starts(chunks) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)


def _split(flat: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    return [flat[s:e].copy() for s, e in zip(starts[:-1], starts[1:])]


_IDLE_OPS = [int(Op.HLT), int(Op.NOP)]


def _works(code: np.ndarray) -> bool:
    """Whether a stream does anything: the compiler ends every stream with ``hlt``, the
    idle ones' too."""
    return not np.isin(code["op"], _IDLE_OPS).all()


def _indices(what: str, n: int) -> str:
    """``tile 0``, ``tiles 0-2``: the indices of ``n`` things."""
    return f"{what}{'s' * (n > 1)} {_ranges(list(range(n)))}"


def _ranges(values: list[int]) -> str:
    """Sorted integers as runs: ``0-3,6``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def validate(prog: Program) -> None:
    """Refuse a program that references something the machine does not have."""
    cfg = prog.config
    cores, tiles = cfg.tile.cores, prog.n_tiles
    if not 1 <= tiles <= cfg.node.tiles:
        raise ProgramError(f"program uses {tiles} tiles; the node has {cfg.node.tiles} "
                           f"(node.tiles)")
    if len(prog.core_code) != tiles * cores:
        raise ProgramError(f"program has {len(prog.core_code)} core streams; expected "
                           f"{tiles} tiles x {cores} cores = {tiles * cores}")
    ctl = prog.control_tiles
    if len(ctl) != len(prog.tile_code):
        raise ProgramError(f"control_tiles names a tile for {len(ctl)} control streams; the "
                           f"program has {len(prog.tile_code)}")
    if len(ctl) and not ((ctl >= 0) & (ctl < tiles)).all():
        raise ProgramError(f"a control stream's tile is outside 0..{tiles - 1}")
    per_tile = np.bincount(ctl, minlength=tiles)
    if len(ctl) and per_tile.max() > cfg.tile.control_streams:
        t = int(per_tile.argmax())
        raise ProgramError(f"tile {t} runs {int(per_tile[t])} control streams; its control "
                           f"unit runs {cfg.tile.control_streams} (tile.control_streams)")
    lay = RegisterLayout.of(cfg)
    if len(prog.mem_words) != tiles or (prog.mem_words < 1).any() \
            or (prog.mem_words > MAX_MEM_WORDS).any():
        raise ProgramError(f"mem_words must give a size in 1..{MAX_MEM_WORDS} words for each "
                           f"of the {tiles} tiles")
    if not isinstance(prog.layers, list) or not all(
            isinstance(x, dict) and isinstance(x.get("name"), str)
            and isinstance(x.get("op"), str) for x in prog.layers):
        raise ProgramError("layers must be a list of layer records (objects with a string "
                           "name and op)")
    if not isinstance(prog.mapping, dict):   # the report reads its keys
        raise ProgramError(f"mapping must be an object (a dict of the compiler's figures), "
                           f"not {type(prog.mapping).__name__}")
    n_layers = len(prog.layers)
    n = len(prog.mvmu_loc)
    if n and not ((prog.mvmu_layer >= -1) & (prog.mvmu_layer < n_layers)).all():
        raise ProgramError(f"an MVMU's layer index is outside -1..{n_layers - 1} (the program "
                           f"lists {n_layers} layers)")
    for name in ("mvmu_rows_used", "mvmu_cols_used", "mvmu_adc_bits", "mvmu_layer"):
        if len(getattr(prog, name)) != n:
            raise ProgramError(f"{name} has {len(getattr(prog, name))} entries for {n} MVMUs")
    shape = (n, cfg.arrays * cfg.slices, cfg.xbar.rows, cfg.xbar.cols)
    if prog.mvmu_levels.shape != shape:
        raise ProgramError(f"crossbar contents have shape {prog.mvmu_levels.shape}; the config "
                           f"needs {shape} (MVMUs, arrays*slices, rows, cols)")
    if prog.mvmu_levels.size and prog.mvmu_levels.min() < 0:
        raise ProgramError(f"a cell level {int(prog.mvmu_levels.min())} is negative; cells "
                           f"hold 0..{(1 << cfg.xbar.cell_bits) - 1}")
    if prog.mvmu_levels.size and prog.mvmu_levels.max() >= (1 << cfg.xbar.cell_bits):
        raise ProgramError(f"a cell level {int(prog.mvmu_levels.max())} exceeds the "
                           f"{cfg.xbar.cell_bits}-bit cells' top level "
                           f"{(1 << cfg.xbar.cell_bits) - 1}")
    # Where the cells hold more bits than the weights need, the most significant slice of
    # each array holds only the rest: a larger level decodes past the weight range (and
    # past what the exact float64 sums are sized for).
    stored = cfg.weight_bits - (cfg.xbar.mapping == "differential")
    top_bits = stored - (cfg.slices - 1) * cfg.xbar.cell_bits
    if prog.mvmu_levels.size and top_bits < cfg.xbar.cell_bits:
        top = prog.mvmu_levels[:, cfg.slices - 1::cfg.slices]
        if top.max() >= (1 << top_bits):
            raise ProgramError(
                f"a most significant cell level {int(top.max())} decodes past the "
                f"{cfg.weight_bits}-bit {cfg.xbar.mapping} weight range (that slice holds "
                f"{top_bits} of the weight's bits: levels 0..{(1 << top_bits) - 1})")
    seen = set()
    programmed: dict[tuple[int, int], set[int]] = {}    # (tile, core) -> its MVMUs
    for i, (t, c, m) in enumerate(prog.mvmu_loc.tolist()):
        if not (0 <= t < tiles and 0 <= c < cores and 0 <= m < cfg.core.mvmus):
            raise ProgramError(f"MVMU {i} placed at tile {t} core {c} mvmu {m}: outside the "
                               f"machine ({tiles} tiles, {cores} cores, {cfg.core.mvmus} MVMUs)")
        if (t, c, m) in seen:
            raise ProgramError(f"two MVMUs placed at tile {t} core {c} mvmu {m}")
        seen.add((t, c, m))
        programmed.setdefault((t, c), set()).add(m)
        if not (1 <= prog.mvmu_rows_used[i] <= cfg.xbar.rows
                and 1 <= prog.mvmu_cols_used[i] <= cfg.xbar.cols):
            raise ProgramError(f"MVMU {i}: rows/cols used {prog.mvmu_rows_used[i]}/"
                               f"{prog.mvmu_cols_used[i]} outside 1..{cfg.xbar.rows}/"
                               f"1..{cfg.xbar.cols}")
        if not -1 <= prog.mvmu_adc_bits[i] <= MAX_ADC_BITS:
            raise ProgramError(f"MVMU {i}: adc bits {prog.mvmu_adc_bits[i]} outside "
                               f"-1..{MAX_ADC_BITS}")
    for k, code in enumerate(prog.core_code):
        t, c = divmod(k, cores)
        _validate_stream(code, f"tile {t} core {c}", CORE_OPS, cfg, lay,
                         int(prog.mem_words[t]), tiles,
                         programmed.get((t, c), set()), n_layers)
    ends: dict[tuple, int] = {}     # (send/recv, src, dst, FIFO) -> the stream at that end
    for s, code in enumerate(prog.tile_code):
        t = int(ctl[s])
        where = prog.agent_name(len(prog.core_code) + s)
        _validate_stream(code, where, TILE_OPS, cfg, lay, int(prog.mem_words[t]), tiles,
                         set(), n_layers)
        # Each end of a channel is one stream: two streams taking one channel's messages
        # would take them in an order that depends on timing (the engines could disagree).
        for pc, (op, fifo, peer) in enumerate(zip(code["op"].tolist(), code["dst"].tolist(),
                                                  code["peer"].tolist())):
            if op not in (Op.SEND, Op.RECV):
                continue
            src, dst = (t, peer) if op == Op.SEND else (peer, t)
            other = ends.setdefault((op, src, dst, fifo), s)
            if other != s:
                raise ProgramError(
                    f"{where} pc {pc} ({Op(op).name.lower()}): "
                    f"{prog.agent_name(len(prog.core_code) + other)} already "
                    f"{'sends' if op == Op.SEND else 'receives'} tile {src} -> tile {dst} "
                    f"FIFO {fifo}; one stream at each end of a channel (give the other "
                    f"stream another FIFO)")
    for t, addr, vals, cnt in prog.mem_init:
        if not (0 <= t < tiles and 0 <= addr and addr + len(vals) <= prog.mem_words[t]):
            raise ProgramError(f"memory image segment at tile {t} addr {addr} (+{len(vals)}) "
                               f"outside the program's tile memory ({tiles} tiles)")
        if not 0 <= cnt <= MAX_COUNT:
            raise ProgramError(f"memory image segment at tile {t} addr {addr}: consumer "
                               f"count {cnt} outside 0..{MAX_COUNT}")
    # an input has a copy per tile that reads it; an output is read back from one place
    names = [p.name for p in prog.outputs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ProgramError(f"output tensor {dup!r} is listed twice; output names must be "
                           f"unique")
    copies = [(p.name, p.tile) for p in prog.inputs]
    dup = next((c for c in copies if copies.count(c) > 1), None)
    if dup is not None:
        raise ProgramError(f"input tensor {dup[0]!r} is listed twice for tile {dup[1]}; "
                           f"an input has at most one copy per tile")
    for port in prog.inputs + prog.outputs:
        _validate_port(port)
        # the end computed, not the addresses listed: a huge shape or address would be
        # allocated before the check
        if not (0 <= port.tile < tiles and 0 <= port.addr
                and port.end() <= prog.mem_words[port.tile]):
            raise ProgramError(f"tensor {port.name!r} at tile {port.tile} addr {port.addr} "
                               f"(+{port.size}) outside the tile's memory")


def _validate_port(port: TensorPort) -> None:
    """A port's description must address each of its elements once, inside its buffer."""
    what = f"tensor {port.name!r}"
    if not (isinstance(port.name, str) and port.name):
        raise ProgramError(f"{what}: its name must be a non-empty string")
    # shape () is one word per sample: a model ending in Linear(k, 1) and view(-1)
    if not (isinstance(port.shape, (tuple, list))
            and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                    and 1 <= d <= MAX_MEM_WORDS for d in port.shape)
            and port.size <= MAX_MEM_WORDS):
        raise ProgramError(f"{what}: shape {list(port.shape)} must be positive integers ([] "
                           f"for one value) of at most {MAX_MEM_WORDS} elements in all")
    if not (np.isfinite(port.scale) and port.scale > 0):
        raise ProgramError(f"{what}: scale {port.scale} must be finite and positive")
    if not 0 <= port.count <= MAX_COUNT:
        raise ProgramError(f"{what}: consumer count {port.count} outside 0..{MAX_COUNT}")
    if port.map_layout is not None:
        H, W, C, pt, pl, Wp = port.map_layout
        if min(H, W, C) < 1 or pt < 0 or pl < 0 or Wp < W + pl or H * W * C != port.size \
                or (H + pt) * Wp * C > MAX_MEM_WORDS:
            raise ProgramError(f"{what}: map layout {list(port.map_layout)} (H, W, C, pad "
                               f"top, pad left, padded width) does not fit its shape "
                               f"{list(port.shape)}")
    if port.perm is not None and (
            any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in port.perm)
            or sorted(port.perm) != list(range(port.size))):   # True == 1 and 0.0 == 0
        raise ProgramError(f"{what}: perm is not a permutation of its {port.size} elements")


#: The immediates an ALU function reads, by (ALUI?, function): a clip's bits, a fixed-point
#: unit's fraction bits, an immediate shift count.
_IMM_RANGE = {**{(i, Fn.CLIP): (1, 63) for i in (False, True)},
              **{(i, f): (0, 62) for i in (False, True) for f in TRANSCENDENTAL_FNS},
              (True, Fn.SHR): (0, 63), (True, Fn.SHRE): (0, 63), (True, Fn.SHL): (0, 63)}
#: Largest tile memory a program may declare, in words (addresses fit the ISA's int32 fields
#: with room for a vector).
MAX_MEM_WORDS = 1 << 30


def _validate_stream(code, where, allowed, cfg, lay, words, tiles, mvmus, n_layers) -> None:
    n = len(code)
    if n == 0:
        return
    ops = code["op"]
    # per-layer counters are indexed by it, unchecked in the compiled engine
    bad = (code["layer"] < -1) | (code["layer"] >= n_layers)
    if bad.any():
        pc = int(np.argmax(bad))
        raise ProgramError(f"{where} pc {pc}: layer index {int(code['layer'][pc])} outside "
                           f"-1..{n_layers - 1} (the program lists {n_layers} layers)")
    bad = ~np.isin(ops, np.array(sorted(int(o) for o in allowed)))
    if bad.any():
        pc = int(np.argmax(bad))
        raise ProgramError(f"{where} pc {pc}: opcode {int(ops[pc])} not allowed here; allowed: "
                           f"{', '.join(Op(o).name.lower() for o in sorted(allowed))}")
    nint = cfg.core.int_registers

    def here() -> str:   # the instruction's label, built only on error (it cost a third)
        return f"{where} pc {pc} ({Op(op).name.lower()})"

    for pc, r in enumerate(code.tolist()):   # noqa: B007 (here() reads pc)
        op, fn, dst, src1, src2, vec, imm, mask, count, ra, rr, peer, _ = r
        if op in (Op.LOAD, Op.STORE, Op.COPY, Op.SET, Op.ALU, Op.ALUI, Op.SEND, Op.RECV):
            if vec < 1:
                raise ProgramError(f"{here()}: vector width {vec} must be >= 1")
        for field_name, reg in (("ra", ra), ("rr", rr)):
            if reg >= nint or reg < -1:
                raise ProgramError(f"{here()}: {field_name} = integer register {reg} outside "
                                   f"0..{nint - 1} (or -1, none)")
        if op in (Op.LOAD, Op.STORE, Op.SEND, Op.RECV):
            if imm < 0 or (ra == -1 and imm + vec > words):
                raise ProgramError(f"{here()}: memory address {imm} (+{vec}) outside the tile's "
                                   f"{words} words")
        if op in (Op.STORE, Op.RECV) and count < 0:
            raise ProgramError(f"{here()}: consumer count {count} must be >= 0")
        if op in (Op.ALU, Op.ALUI):
            if fn not in Fn._value2member_map_:
                raise ProgramError(f"{here()}: unknown ALU function {fn}; allowed: "
                                   f"{', '.join(f.name.lower() for f in Fn)}")
            lo, hi = _IMM_RANGE.get((op == Op.ALUI, Fn(fn)), (None, None))
            if lo is not None and not lo <= imm <= hi:
                raise ProgramError(f"{here()}: {Fn(fn).name.lower()} immediate {imm} outside "
                                   f"{lo}..{hi}")
        regs = []
        if op == Op.LOAD:
            regs = [dst]
        elif op == Op.STORE:
            regs = [src1]
        elif op in (Op.COPY, Op.ALUI):
            regs = [dst, src1]
        elif op == Op.SET:
            regs = [dst]
        elif op == Op.ALU:
            regs = [dst, src1] + ([] if Fn(fn) in UNARY_FNS else [src2])
        for reg in regs:
            if reg < 0 or (rr == -1 or op not in (Op.LOAD, Op.STORE)) and reg + vec > lay.size:
                raise ProgramError(f"{here()}: register {reg} (+{vec}) outside the core's "
                                   f"{lay.size} registers")
        if op == Op.MVM:
            used = {b for b in range(64) if mask >> b & 1}
            if not used:
                raise ProgramError(f"{here()}: empty MVMU mask")
            missing = sorted(used - mvmus)
            if missing:
                raise ProgramError(f"{here()}: MVMU {missing[0]} is not programmed on this core "
                                   f"(programmed: {sorted(mvmus) or 'none'})")
        if op in (Op.ISET, Op.IADD) and not 0 <= dst < nint:
            raise ProgramError(f"{here()}: integer register {dst} outside 0..{nint - 1}")
        if op in (Op.IADD, Op.BEQ, Op.BNE) and not 0 <= src1 < nint:
            raise ProgramError(f"{here()}: integer register {src1} outside 0..{nint - 1}")
        if op in (Op.BEQ, Op.BNE) and not 0 <= src2 < nint:
            raise ProgramError(f"{here()}: integer register {src2} outside 0..{nint - 1}")
        if op in (Op.JMP, Op.BEQ, Op.BNE) and not 0 <= imm < n:
            raise ProgramError(f"{here()}: branch target {imm} outside 0..{n - 1}")
        if op in (Op.SEND, Op.RECV) and not 0 <= peer < tiles:
            raise ProgramError(f"{here()}: peer tile {peer} outside 0..{tiles - 1}")
        if op in (Op.SEND, Op.RECV) and not 0 <= dst < cfg.tile.control_streams:
            raise ProgramError(f"{here()}: FIFO {dst} outside 0..{cfg.tile.control_streams - 1} "
                               f"(one per control stream, tile.control_streams)")
