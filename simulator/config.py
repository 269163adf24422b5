"""The machine description: one frozen, validated configuration object.

Hierarchy after PUMA (Ankit et al., ASPLOS 2019): node -> tile -> core -> MVMU -> crossbar.
Every block is a frozen dataclass; every field is checked on construction and a bad value
raises :class:`ConfigError` naming its dotted key (``adc.bits``), the value and what is
allowed. Presets ship as YAML files in ``simulator/presets`` and cite their sources.

Resolution convention: ``bits: int | None`` where ``None`` means ideal (never "0 means ideal").
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from .crossbar import n_slices, row_groups
from .errors import ConfigError, first_line

PRESET_DIR = Path(__file__).with_name("presets")
ADC_MODELS = ("puma", "isaac", "survey", "sar")
ADC_MODES = ("clip", "scale")
MAPPINGS = ("differential", "offset")
VARIATION_KINDS = ("normal", "lognormal")
#: Widest ADC a config, a program or an adaptive ADC may have.
MAX_ADC_BITS = 32
#: Largest weight_bits + input_bits + ceil(log2(xbar.rows)) whose crossbar sums float64
#: (53-bit mantissa) holds exactly, offset mapping's extra bit included.
EXACT_SUM_BITS = 54


def _quoted_number_hint(value: Any) -> str:
    """Why a number given as text (``"6"`` in a file, ``'6'`` in ``--set``) is refused: as
    in recipes, a number field takes numbers only."""
    if isinstance(value, str) and (_YAML_INT.fullmatch(value) or _YAML_FLOAT.fullmatch(value)):
        return " (a number, not text: drop the quotes)"
    return ""


def _check_int(section: str, name: str, value: Any, lo: int, hi: int | None = None,
               none: str | None = None) -> None:
    """``none``: what ``None`` means where it is allowed (``"ideal"``); None: not allowed."""
    key = f"{section}.{name}" if section else name
    if value is None and none:
        return
    allowed = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    if none:
        allowed += f", or none for {none}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        raise ConfigError(f"{key} = {value!r}: must be {allowed}{_quoted_number_hint(value)}")


def _check_float(section: str, name: str, value: Any, lo: float, hi: float | None = None,
                 lo_open: bool = False) -> None:
    key = f"{section}.{name}" if section else name
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ConfigError(f"{key} = {value!r}: must be a number {rng}"
                          f"{_quoted_number_hint(value)}")


def _check_choice(section: str, name: str, value: Any, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} = {value!r}: must be one of {', '.join(choices)}")


@dataclass(frozen=True, slots=True)
class XbarConfig:
    """One crossbar array."""

    rows: int = 128
    """Word lines (inputs) per crossbar."""
    cols: int = 128
    """Bit lines (outputs) per crossbar."""
    cell_bits: int = 2
    """Bits stored per cell; a cell has ``2**cell_bits`` conductance levels (at most 8: a
    cell's level is one byte in the program, and ReRAM cells hold a few bits)."""
    mapping: str = "differential"
    """Signed weights: ``differential`` (positive and negative arrays, each a magnitude;
    symmetric weights, |w| <= 2**(weight_bits-1) - 1) or ``offset`` (unsigned weight +
    2**(weight_bits-1); the bias is removed digitally by counting input ones, as in ISAAC)."""
    g_min_us: float = 1.0
    """Lowest programmable conductance, microsiemens (level 0). Descriptive: values are
    simulated in levels, and a finite on/off ratio is ``noise.on_off_ratio`` (the
    compressor's geometry carries the range into its conductance projection)."""
    g_max_us: float = 100.0
    """Highest programmable conductance, microsiemens (top level); descriptive, as
    ``g_min_us``."""
    active_rows: int | None = None
    """Word lines driven in one read; ``None`` = every row at once (PUMA, ISAAC). Fewer rows
    per read bound each column sum an ADC converts, so fewer ADC bits are lossless, at the
    cost of ``ceil(rows used / active_rows)`` reads and conversions per input step, summed
    digitally (partial parallel read, as NeuroSim's row-parallel read)."""

    def __post_init__(self):
        _check_int("xbar", "rows", self.rows, 1, 65536)
        _check_int("xbar", "active_rows", self.active_rows, 1, 65536,
                   none="every row")
        if self.active_rows is not None and self.active_rows > self.rows:
            raise ConfigError(f"xbar.active_rows = {self.active_rows}: must be <= xbar.rows "
                              f"= {self.rows}, or none for every row")
        _check_int("xbar", "cols", self.cols, 1, 65536)
        _check_int("xbar", "cell_bits", self.cell_bits, 1, 8)
        _check_choice("xbar", "mapping", self.mapping, MAPPINGS)
        _check_float("xbar", "g_min_us", self.g_min_us, 0.0)
        _check_float("xbar", "g_max_us", self.g_max_us, 0.0, lo_open=True)
        if self.g_max_us <= self.g_min_us:
            raise ConfigError(f"xbar.g_max_us = {self.g_max_us!r}: must exceed "
                              f"xbar.g_min_us = {self.g_min_us!r}")


@dataclass(frozen=True, slots=True)
class DacConfig:
    """Digital-to-analog converters on the word lines."""

    bits: int = 1
    """Input bits applied per step (bit-serial input: 1)."""

    def __post_init__(self):
        _check_int("dac", "bits", self.bits, 1, 16)


@dataclass(frozen=True, slots=True)
class AdcConfig:
    """Analog-to-digital converters on the bit lines, shared by an MVMU's columns."""

    bits: int | None = 8
    """Resolution in bits; ``None`` = ideal (every column sum converted exactly)."""
    model: str = "puma"
    """Cost model: ``puma`` (linear in bits, with leakage), ``isaac`` (ISAAC's 8-bit point
    scaled by 2**(b-8) in energy and area), ``survey`` (Murmann survey fit, as Accelergy)
    or ``sar`` (NeuroSim SAR); see ``simulator.costs.adc_cost``."""
    per_mvmu: int = 8
    """ADCs per MVMU, time-shared across all its columns and slices."""
    mode: str = "clip"
    """Out-of-range behaviour: ``clip`` (saturate at the top code) or ``scale`` (keep the
    column's top bits: drop LSBs so the column's full range fits)."""
    adaptive: bool = False
    """Use per MVMU the bits its weights need to be lossless (TinyADC / ISAAC formula)
    instead of ``bits``: the widest need of its crossbars (arrays and slices), which share
    its ``per_mvmu`` ADCs."""

    def __post_init__(self):
        _check_int("adc", "bits", self.bits, 1, MAX_ADC_BITS, none="ideal")
        _check_choice("adc", "model", self.model, ADC_MODELS)
        _check_int("adc", "per_mvmu", self.per_mvmu, 1, 65536)
        _check_choice("adc", "mode", self.mode, ADC_MODES)
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"adc.adaptive = {self.adaptive!r}: must be true or false")


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """A core: MVMUs, a vector functional unit and a register file."""

    mvmus: int = 6
    """Matrix-vector multiply units (one logical matrix each, all its bit slices)."""
    vfu_lanes: int = 4
    """Vector functional unit lanes (elements per cycle)."""
    registers: int = 2048
    """General-purpose data registers (words) besides the MVMU input/output registers."""
    int_registers: int = 16
    """Scalar integer registers for loop counters and register-indirect addresses."""

    def __post_init__(self):
        _check_int("core", "mvmus", self.mvmus, 1, 63)  # mvm mask is one int64
        _check_int("core", "vfu_lanes", self.vfu_lanes, 1, 65536)
        _check_int("core", "registers", self.registers, 1, 1 << 26)
        _check_int("core", "int_registers", self.int_registers, 1, 1024)


@dataclass(frozen=True, slots=True)
class TileConfig:
    """A tile: cores sharing an eDRAM with valid/count words, a receive buffer, a router."""

    cores: int = 8
    """Cores per tile."""
    edram_kb: int = 64
    """Shared memory size, KiB (words are ``input_bits`` wide, rounded up to bytes)."""
    edram_fit: bool = False
    """Size each tile's eDRAM to what its program keeps there (the next power of two KiB, at
    least 1), not ``edram_kb``, for its area and leakage. The compiler keeps whole maps in
    a tile's memory, so where they outgrow ``edram_kb`` that size is a lower bound."""
    mem_ports: int = 1
    """Memory ports; each serves one request per cycle."""
    port_words: int = 16
    """Words one port moves per cycle (PUMA: 256-bit eDRAM access = 16 x 16-bit words)."""
    mem_latency: int = 2
    """Cycles from a port accepting a request to its first data (PUMA eDRAM: 2 ns)."""
    recv_buffer: int = 64
    """Messages a tile can hold per sender and FIFO before the sender stalls."""
    control_streams: int = 8
    """Contexts of the tile's control unit, each running its own stream of sends and
    receives with its own FIFO in every receive buffer. The compiler gives layer ``i``'s
    transfers to stream ``i mod control_streams`` (on every tile alike, so both ends of a
    FIFO see its messages in one order); 1 is a single in-order control unit, where one
    layer's transfers wait for every earlier layer's on that tile."""

    def __post_init__(self):
        _check_int("tile", "cores", self.cores, 1, 4096)
        _check_int("tile", "edram_kb", self.edram_kb, 1, 1 << 24)
        if not isinstance(self.edram_fit, bool):
            raise ConfigError(f"tile.edram_fit = {self.edram_fit!r}: must be true or false")
        _check_int("tile", "mem_ports", self.mem_ports, 1, 64)
        _check_int("tile", "port_words", self.port_words, 1, 65536)
        _check_int("tile", "mem_latency", self.mem_latency, 0, 1 << 20)
        _check_int("tile", "recv_buffer", self.recv_buffer, 1, 1 << 20)
        _check_int("tile", "control_streams", self.control_streams, 1, 1024)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A node: tiles on a 2-D mesh network-on-chip."""

    tiles: int = 16
    """Tiles on the node."""
    mesh_cols: int | None = None
    """Mesh width in tiles; ``None`` = the smallest square that holds ``tiles``."""
    hop_cycles: int = 1
    """Cycles a flit takes per router hop."""
    router_cycles: int = 31
    """Cycles a router spends per packet (PUMA 4-port router)."""
    flit_words: int = 16
    """Words per flit; a link carries one flit per cycle."""

    def __post_init__(self):
        _check_int("node", "tiles", self.tiles, 1, 1 << 20)
        _check_int("node", "mesh_cols", self.mesh_cols, 1, 1 << 20,
                   none="a square mesh")
        _check_int("node", "hop_cycles", self.hop_cycles, 0, 1 << 20)
        _check_int("node", "router_cycles", self.router_cycles, 0, 1 << 20)
        _check_int("node", "flit_words", self.flit_words, 1, 65536)

    @property
    def mesh_width(self) -> int:
        return self.mesh_cols or math.ceil(math.sqrt(self.tiles))


#: Largest lognormal programming variation: e**(10 z) stays finite for any normal draw z,
#: where 300 gave inf conductances and NaN outputs (a level-0 cell times inf).
MAX_LOGNORMAL_SIGMA = 10.0


@dataclass(frozen=True, slots=True)
class NoiseConfig:
    """Device non-idealities, each off by default, each with its own seeded random stream."""

    program_sigma: float = 0.0
    """Conductance programming variation: for ``normal`` the std of the multiplicative
    factor (mean 1); for ``lognormal`` the std of its logarithm (the factor exp(s*N) has
    mean exp(s**2/2) > 1, a gain as well as a spread), at most ``MAX_LOGNORMAL_SIGMA``
    (beyond it the factor overflows float64)."""
    program_dist: str = "normal"
    """Variation distribution: ``normal`` (g * (1 + s*N)) or ``lognormal`` (g * exp(s*N))."""
    read_sigma: float = 0.0
    """Output-referred read noise: std of a column sum is read_sigma * ||x|| * top level."""
    stuck_on: float = 0.0
    """Fraction of cells stuck at the top conductance level."""
    stuck_off: float = 0.0
    """Fraction of cells stuck at level 0."""
    on_off_ratio: float | None = None
    """G_on / G_off of the cells; ``None`` = infinite (level 0 conducts nothing). Finite:
    level l conducts l * (1 - 1/R) + top / R level units."""
    seed: int = 0
    """Seed; each non-ideality draws from its own stream spawned from it."""

    def __post_init__(self):
        _check_float("noise", "program_sigma", self.program_sigma, 0.0)
        _check_choice("noise", "program_dist", self.program_dist, VARIATION_KINDS)
        if self.program_dist == "lognormal" and self.program_sigma > MAX_LOGNORMAL_SIGMA:
            raise ConfigError(f"noise.program_sigma = {self.program_sigma!r}: must be <= "
                              f"{MAX_LOGNORMAL_SIGMA} with program_dist lognormal (e**(sigma*z) "
                              f"overflows beyond it)")
        _check_float("noise", "read_sigma", self.read_sigma, 0.0)
        _check_float("noise", "stuck_on", self.stuck_on, 0.0, 1.0)
        _check_float("noise", "stuck_off", self.stuck_off, 0.0, 1.0)
        if self.stuck_on + self.stuck_off > 1.0:
            raise ConfigError(f"noise.stuck_on + noise.stuck_off = "
                              f"{self.stuck_on + self.stuck_off!r}: must be <= 1")
        _check_int("noise", "seed", self.seed, 0)
        r = self.on_off_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))
                              or not r > 1 or not math.isfinite(r)):
            raise ConfigError(f"noise.on_off_ratio = {r!r}: must be a finite number > 1, or "
                              f"none for an infinite ratio")

    @property
    def enabled(self) -> bool:
        return bool(self.program_sigma or self.read_sigma or self.stuck_on or self.stuck_off
                    or self.on_off_ratio is not None)


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """The whole chip. Build with :func:`load_config`, change with :func:`with_overrides`."""

    name: str = "custom"
    """Preset name or a label for this configuration."""
    source: str = ""
    """Where the numbers come from."""
    weight_bits: int = 16
    """Fixed-point weight precision (signed)."""
    input_bits: int = 16
    """Fixed-point activation precision (signed); also the tile memory word width."""
    clock_ghz: float = 1.0
    """Core clock, GHz (1 cycle = 1/clock_ghz ns)."""
    xbar: XbarConfig = field(default_factory=XbarConfig)
    dac: DacConfig = field(default_factory=DacConfig)
    adc: AdcConfig = field(default_factory=AdcConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self):
        for section, cls in _SECTION_CLASSES.items():   # built directly, not by from_dict
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"{section} = {getattr(self, section)!r}: must be of type "
                                  f"{cls.__name__} (from_dict builds one from a mapping)")
        _check_int("", "weight_bits", self.weight_bits, 2, 32)   # a sign and a value bit
        _check_int("", "input_bits", self.input_bits, 2, 32)
        # up to 1 THz, far past any ReRAM design: an MVM's cycle count (ns x GHz) stays far
        # inside 64-bit integers (at 1e20 GHz it overflowed, a traceback)
        _check_float("", "clock_ghz", self.clock_ghz, 0.0, 1000.0, lo_open=True)
        for key in ("name", "source"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} = {getattr(self, key)!r}: must be text")
        if self.xbar.cell_bits > self.weight_bits:
            raise ConfigError(f"xbar.cell_bits = {self.xbar.cell_bits}: must be <= weight_bits "
                              f"= {self.weight_bits}")
        # A crossbar's integer output, up to rows * 2**(weight_bits-1) * 2**(input_bits-1),
        # is summed in float64 (BLAS), exact below 2**53: keep a bit of margin.
        row_bits = math.ceil(math.log2(self.xbar.rows))
        exact = self.weight_bits + self.input_bits + row_bits
        if exact > EXACT_SUM_BITS:
            raise ConfigError(
                f"weight_bits + input_bits + log2(xbar.rows) = {self.weight_bits} + "
                f"{self.input_bits} + {row_bits} = {exact}: must "
                f"be <= {EXACT_SUM_BITS}, or crossbar sums are no longer bit-exact in float64")
        if self.dac.bits > self.input_bits:
            raise ConfigError(f"dac.bits = {self.dac.bits}: must be <= input_bits "
                              f"= {self.input_bits}")
        if self.node.mesh_cols is not None and self.node.mesh_cols > self.node.tiles:
            raise ConfigError(f"node.mesh_cols = {self.node.mesh_cols}: must be <= node.tiles "
                              f"= {self.node.tiles}")

    # Derived quantities used by compiler, simulator and cost model alike.
    @property
    def slices(self) -> int:
        """Crossbars (bit slices) per array of a logical weight (``crossbar.n_slices``)."""
        return n_slices(self.weight_bits, self.xbar.cell_bits, self.xbar.mapping)

    @property
    def arrays(self) -> int:
        """Physical arrays per slice: 2 for differential mapping, 1 for offset."""
        return 2 if self.xbar.mapping == "differential" else 1

    @property
    def step_bits(self) -> int:
        """Widest input digit one DAC step drives: the sign bit's step is 1 bit, the others
        at most ``dac.bits`` of the remaining input_bits-1 (``crossbar.step_plan``). The
        lossless ADC width rests on it, not on ``dac.bits``, which may be wider."""
        return max(1, min(self.dac.bits, self.input_bits - 1))

    @property
    def input_steps(self) -> int:
        """DAC steps per MVM. The sign bit always gets a 1-bit step of its own (it is
        subtracted); the other input_bits-1 bits go dac.bits at a time. For dac.bits = 1
        this is input_bits, the usual bit-serial count."""
        return 1 + -(-(self.input_bits - 1) // self.dac.bits)

    def reads_per_step(self, rows_used: int | None = None) -> int:
        """Reads per input step of a crossbar whose first ``rows_used`` rows are driven
        (default all): 1 unless ``xbar.active_rows`` limits the rows driven at once."""
        return len(row_groups(self.xbar.rows if rows_used is None else rows_used,
                              self.xbar.active_rows))

    @property
    def cycle_ns(self) -> float:
        return 1.0 / self.clock_ghz

    @property
    def edram_words(self) -> int:
        return self.tile.edram_kb * 1024 // ((self.input_bits + 7) // 8)

    def edram_kb_of(self, words_used) -> np.ndarray:
        """Each tile's eDRAM size in KiB for the costs, given the words its program uses:
        ``tile.edram_kb``, or with ``tile.edram_fit`` the next power of two that holds them."""
        words = np.asarray(words_used, np.int64)
        if not self.tile.edram_fit:
            return np.full(words.shape, self.tile.edram_kb, np.int64)
        kib = -(-words * ((self.input_bits + 7) // 8) // 1024)          # ceil
        return np.maximum(1, 2 ** np.ceil(np.log2(np.maximum(kib, 1)))).astype(np.int64)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in fields(MachineConfig)}
_SECTION_CLASSES = {
    "xbar": XbarConfig, "dac": DacConfig, "adc": AdcConfig, "core": CoreConfig,
    "tile": TileConfig, "node": NodeConfig, "noise": NoiseConfig,
}


#: Each section's field types (``{"adc": {"bits": "int | None", ...}, ...}``).
_FIELD_TYPES = {section: {f.name: f.type for f in fields(cls)}
                for section, cls in _SECTION_CLASSES.items()}


def _allowed_keys(cls) -> str:
    return ", ".join(f.name for f in fields(cls))


def from_dict(data: dict) -> MachineConfig:
    """Build a config from nested plain data (as read from YAML); unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(data).__name__}")
    top = {}
    for key, value in data.items():
        if key in _SECTION_CLASSES:
            cls = _SECTION_CLASSES[key]
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a mapping with keys {_allowed_keys(cls)}")
            types = _FIELD_TYPES[key]
            unknown = set(value) - set(types)
            if unknown:
                bad = sorted(unknown, key=str)[0]   # YAML keys need not be strings
                raise ConfigError(f"{key}.{bad}: unknown key; allowed: {_allowed_keys(cls)}")
            top[key] = cls(**{k: _python_scalar(v) for k, v in value.items()})
        elif key in _SECTIONS:
            top[key] = _python_scalar(value)
        else:
            raise ConfigError(f"{key}: unknown key; allowed: {_allowed_keys(MachineConfig)}")
    return MachineConfig(**top)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | Path | MachineConfig | None = "puma",
                overrides: Iterable[str] | dict | None = ()) -> MachineConfig:
    """Load a preset by name (``puma``, ``isaac``, ``small``) or a YAML file, then apply
    ``KEY=VALUE`` overrides such as ``adc.bits=6`` or ``adc.bits=none`` (see
    :func:`with_overrides`)."""
    if isinstance(preset, MachineConfig):
        cfg = preset
    elif not isinstance(preset, (str, os.PathLike, type(None))):
        hint = "; from_dict builds a config from a mapping" if isinstance(preset, dict) else ""
        raise ConfigError(f"preset: a preset name, a .yaml path, a MachineConfig or None "
                          f"(puma), got {type(preset).__name__}{hint}")
    else:
        path = _preset_path("puma" if preset is None else preset)
        data = read_yaml(path, ConfigError)
        if data is None:   # as recipes: an empty file is more likely a mistake than "defaults"
            raise ConfigError(f"{path}: empty; a preset maps keys (name, xbar, adc, ...) to "
                              f"values")
        try:
            cfg = from_dict(data)
        except ConfigError as e:   # name the file the bad key or value is in
            raise ConfigError(f"{path}: {e}") from e
    return with_overrides(cfg, overrides)


def names_preset_file(preset) -> bool:
    """Whether ``preset`` is a path to a preset file (ending in .yaml or .yml, any case)
    rather than a shipped preset's name."""
    return isinstance(preset, (str, Path)) and Path(preset).suffix.lower() in (".yaml", ".yml")


def _preset_path(preset: str | Path) -> Path:
    """The file ``preset`` names: a shipped preset by name, or a path ending in .yaml or
    .yml (any case)."""
    path = Path(preset)
    if not names_preset_file(preset):
        shipped = PRESET_DIR / f"{preset}.yaml"
        if shipped.is_file():
            return shipped
        what = ("is a file, but a preset file's name must end in .yaml or .yml" if path.is_file()
                else "not found")
        raise ConfigError(f"preset {str(preset)!r} {what}; available: "
                          f"{', '.join(preset_names())} (or a path to a .yaml file)")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; expected a .yaml file")
    if not path.exists():
        hint = (f"; did you mean the shipped preset {path.stem!r}?"
                if path.stem in preset_names() else "")
        raise ConfigError(f"config file {str(path)!r} does not exist{hint}")
    return path


def read_yaml(path: Path, error: type[Exception], label: str = "") -> Any:
    """The data of the YAML file at ``path`` (preset or recipe), read with
    :class:`UniqueKeyLoader`; if it is not valid YAML, ``error`` in one line naming
    ``label``, the file, the line and column, and what is wrong there."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where, problem = "", first_line(e)
        if isinstance(e, yaml.MarkedYAMLError):
            # PyYAML's message starts with the context ("while parsing a block mapping"):
            # the problem and its place come after it
            problem = e.problem or e.context or problem
            mark = e.problem_mark or e.context_mark
            if mark is not None:
                where = f" line {mark.line + 1}, column {mark.column + 1}"
        raise error(f"{label}{path}{where}: not valid YAML ({problem})") from e


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the last silently
    won, hiding the other value)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                given_twice = key in seen
            except TypeError:   # a list or mapping as key: super() refuses it, with its place
                continue
            if given_twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_YAML_INT = re.compile(r"[-+]?[0-9]+")
_YAML_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                         r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")

# Numbers in a preset or recipe file as typed, in decimal, as ``--set`` reads them: YAML 1.1
# reads ``010`` as 8, ``2:18`` as 138 and ``1:30.5`` as 90.5 (those forms are then text, and
# a number field refuses them by name), and ``1e-3`` (no dot) as text (a number here).
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
# int before float: a resolver list is tried in order
UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:int",
                                      re.compile(f"^(?:{_YAML_INT.pattern})$"),
                                      list("-+0123456789"))
UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                      re.compile(f"^(?:{_YAML_FLOAT.pattern})$"),
                                      list("-+0123456789."))


def _decimal_int(loader, node):
    text = loader.construct_scalar(node)
    try:
        return int(text, 10)
    except ValueError:   # an explicit !!int 0x10: name the place, as YAML errors do
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a decimal integer", node.start_mark) from None


UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _decimal_int)


def _parse_value(text: str, field_type: str = "") -> Any:
    """An override's text as its field's value: text fields take it as typed (a name
    ``2024``, a mode ``ideal`` that the check then names); others (and an unknown type: "")
    read none, numbers and true/false as a preset file does (quoted ``'5'`` is text)."""
    t = text.strip()
    if not t:
        raise ConfigError("an empty value; give a number, true/false, a name, or none")
    if field_type == "str":
        return t
    if t.lower() in ("none", "null", "ideal", "~"):
        return None
    try:
        return yaml.load(t, Loader=UniqueKeyLoader)
    except yaml.YAMLError:
        return t


def _python_scalar(value: Any) -> Any:
    """Numpy scalars (a sweep's ``np.arange``) as the Python ones a field holds."""
    return value.item() if isinstance(value, np.generic) else value


def one_string_refused(what: str, text: str, form: str) -> str:
    """The error for a list argument given as one string, which iterating would take
    character by character (``override 'a': expected KEY=VALUE``)."""
    return f"{what}: a list of {form} strings, got the string {text!r}; wrap it in a list"


def with_overrides(cfg: MachineConfig,
                   overrides: Iterable[str] | dict | None) -> MachineConfig:
    """A new config with dotted-key overrides applied: ``KEY=VALUE`` strings
    (``["xbar.rows=256"]``) or a dict (``{"xbar.rows": 256}``, whose text values are read as
    the strings' are: ``"none"`` is none); None: none."""
    if isinstance(overrides, str):
        raise ConfigError(one_string_refused("overrides", overrides, "KEY=VALUE"))
    if isinstance(overrides, dict):
        items = []
        for key, value in overrides.items():
            field_type = _field_type(key)
            try:
                items.append((key, field_type, _parse_value(value, field_type)
                              if isinstance(value, str) else value))
            except ConfigError as e:
                raise ConfigError(f"override {key}={value!r}: {e}") from None
    elif not isinstance(overrides, collections.abc.Iterable | None):
        raise ConfigError(f"overrides: a list of KEY=VALUE strings or a dict, got "
                          f"{type(overrides).__name__}")
    else:
        items = []
        for item in overrides or ():
            if not isinstance(item, str):
                raise ConfigError(f"override {item!r}: expected a KEY=VALUE string, e.g. "
                                  f"adc.bits=6")
            key, eq, text = item.partition("=")
            key = key.strip()
            if not eq or not key:      # "=5" said ": unknown key"
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. adc.bits=6")
            field_type = _field_type(key)
            try:
                items.append((key, field_type, _parse_value(text, field_type)))
            except ConfigError as e:
                raise ConfigError(f"override {item!r}: {e}") from None
    data = cfg.to_dict()
    for key, _, value in items:
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    return from_dict(data)


def _field_type(key: str) -> str:
    """The declared type of dotted ``key`` (``adc.bits`` -> ``"int | None"``); an unknown
    key is an error naming what is allowed."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in _SECTIONS and parts[0] not in _SECTION_CLASSES:
        return _SECTIONS[parts[0]]
    if len(parts) == 2 and parts[0] in _SECTION_CLASSES:
        types = _FIELD_TYPES[parts[0]]
        if parts[1] not in types:
            raise ConfigError(f"{key}: unknown key; allowed in {parts[0]}: "
                              f"{_allowed_keys(_SECTION_CLASSES[parts[0]])}")
        return types[parts[1]]
    sections = ", ".join(_SECTION_CLASSES)
    top = ", ".join(k for k in _SECTIONS if k not in _SECTION_CLASSES)   # name, source too
    raise ConfigError(f"{key}: unknown key; use a top-level key ({top}) or SECTION.KEY with "
                      f"SECTION one of {sections}")
