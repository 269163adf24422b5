"""Cost tables (energy, latency, area) as data, each with its source, and the ADC models.

Energy = sum over components of (access count x energy per access) + leakage x time.
Units: energy pJ per access, latency ns, power mW, area mm^2.

Sources
-------
PUMA  puma-simulator ``include/constants.py`` (Ankit et al., ASPLOS 2019); its crossbar
      values come from ISAAC. Energies there are power x 1 ns cycle.
ISAAC Shafiee et al., ISCA 2016, Table 6: 8-bit ADC, 2 mW at 1.28 GS/s, 1200 um^2.
SURVEY Murmann ADC survey regression as used by Accelergy's ADC plug-in, 32 nm, 1.28 GS/s:
      0.92 / 1.07 / 1.93 / 16.4 pJ per conversion at 4 / 6 / 8 / 10 bits.
SAR   DNN+NeuroSim SAR ADC: latency (log2 L + 1) ns, power (0.538 log2 L + 4.375) uW, 22 nm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .crossbar import top_weight_level

# Components that count accesses; the order is the column order of every counter table.
COMPONENTS = ("crossbar", "dac", "adc", "shift_add", "vfu", "edram", "noc", "leakage")

# Per-access energies and latencies that do not depend on the ADC model.
TABLE = {
    # One crossbar array read for one input step (ADC excluded): 100 ns at 1.70 mW
    # (PUMA/ISAAC, 128x128). Energy scales with the array's cells relative to 128x128, the
    # read time with its rows (the bit line's length, whose RC the read settles): a
    # modelling choice, PUMA's table has one size.
    "crossbar_step_ns": 100.0,
    "crossbar_step_pj": 1.70 * 100.0,
    "crossbar_area_mm2_128": 2.5e-5,       # 256x256: 1e-4 (PUMA xbar_area_dict)
    # DAC: 1 ns, 0.0035 mW per conversion (one row, one step, one array).
    "dac_ns": 1.0,
    "dac_pj": 0.0035 * 1.0,
    "dac_area_mm2": 1.67e-7,
    # Shift-and-add: 1 ns, 0.045 mW dynamic per ADC output handled (PUMA sna_pow_dyn).
    "shift_add_ns": 1.0,
    "shift_add_pj": 0.045 * 1.0,
    "shift_add_area_mm2": 6e-5,
    # Sample-and-hold, per column (PUMA snh_area = 0.00004 / 8 / 128).
    "snh_area_mm2": 0.00004 / 8 / 128,
    # Vector functional unit: 1.707 mW per lane (PUMA alu_pow_dyn = 2.4*32/45), 1 ns per op,
    # for every element op alike (PUMA's hw_stats charges adds/copies 0.265 pJ, multiplies
    # 0.565, divides 1.08): an upper bound, a fraction of a percent of CNNs' energy.
    "vfu_pj_per_elem": 1.707,
    "vfu_area_mm2_per_lane": 0.00567 * 32 / 45,
    # MVMU input register (one entry per row) and output register (one per column): PUMA
    # xbar_inMem/outMem, 0.00078 mm^2 each at 128 entries; area only. The core register
    # file's area is register_file_area_mm2 (PUMA dataMem_area_dict).
    "mvmu_reg_area_mm2_128": 0.00078,
    "core_control_area_mm2": 0.00145 * 2.25,
    # Tile eDRAM, 64 KB: 2 ns, 17.2 pJ per 256-bit access (8.6 mW over 2 cycles),
    # 0.086 mm^2, 0.46 mW leakage.
    "edram_pj_per_access": 17.2,
    "edram_area_mm2": 0.086,
    "edram_leak_mw": 0.46,
    # 4-port router: 31 cycles/packet, 16.13 mW, 0.047 mm^2. Charged per flit per hop
    # (one router cycle of activity).
    "router_pj_per_flit_hop": 16.13,
    "router_area_mm2": 0.047,
}


@dataclass(frozen=True)
class AdcCost:
    """One ADC conversion under a given model."""

    model: str
    bits: int
    energy_pj: float
    latency_ns: float
    area_mm2: float
    leak_mw: float
    source: str


_SURVEY_POINTS = {4: 0.92, 6: 1.07, 8: 1.93, 10: 16.4}


def _survey_energy(bits: int) -> float:
    # Log-linear interpolation through the regression's published points; beyond them,
    # extrapolate with the nearest segment's slope.
    xs = sorted(_SURVEY_POINTS)
    logs = [math.log(_SURVEY_POINTS[x]) for x in xs]
    if bits <= xs[0]:
        i = 0
    elif bits >= xs[-1]:
        i = len(xs) - 2
    else:
        i = max(j for j in range(len(xs) - 1) if xs[j] <= bits)
    slope = (logs[i + 1] - logs[i]) / (xs[i + 1] - xs[i])
    return math.exp(logs[i] + slope * (bits - xs[i]))


def adc_cost(model: str, bits: int) -> AdcCost:
    """Energy, latency and area of one conversion of a ``bits``-bit ADC under ``model``."""
    if bits < 1:
        raise ValueError(f"adc bits must be >= 1, got {bits}")
    if model == "puma":
        # PUMA charges 0.225*b mW for one 1-ns cycle per conversion (8 bits: 1.8 pJ) and
        # converts one crossbar's 128 columns in 12.5*b ns (8 bits: 1.28 GS/s, as ISAAC);
        # leakage 0.025*b mW, from the same table (adc_pow_leak_dict; 8 bits: 0.2 mW).
        return AdcCost(model, bits, 0.225 * bits, 12.5 * bits / 128, 0.0012, 0.025 * bits,
                       "PUMA include/constants.py")
    if model == "isaac":
        # ISAAC's 8-bit point (2 mW at 1.28 GS/s); other widths scaled by 2**(b-8)
        # (energy per conversion doubles per bit, Walden figure of merit).
        e8 = 2.0 / 1.28
        return AdcCost(model, bits, e8 * 2.0 ** (bits - 8), 1 / 1.28,
                       0.0012 * 2.0 ** (bits - 8), 0.0, "ISAAC ISCA 2016 Table 6")
    if model == "survey":
        return AdcCost(model, bits, _survey_energy(bits), 1 / 1.28, 0.0012, 0.0,
                       "Murmann survey regression (Accelergy ADC plug-in), 32 nm")
    if model == "sar":
        lat = bits + 1.0                       # (log2 L + 1) ns, L = 2**bits levels
        power_mw = (0.538 * bits + 4.375) * 1e-3
        return AdcCost(model, bits, power_mw * lat, lat, 0.0012, 0.0,
                       "DNN+NeuroSim SAR ADC, 22 nm")
    raise ValueError(f"unknown ADC model {model!r}; allowed: puma, isaac, survey, sar")


def crossbar_area_mm2(rows: int, cols: int) -> float:
    return TABLE["crossbar_area_mm2_128"] * rows * cols / (128 * 128)


#: PUMA's data memory (a core's register file) area by entries (dataMem_area_dict), mm^2.
REGISTER_FILE_AREA_MM2 = {256: 0.00056, 512: 0.00108, 1024: 0.00192, 2048: 0.00392}


def register_file_area_mm2(entries: int) -> float:
    """A core register file of ``entries`` words: PUMA's table, linear between its sizes
    and in proportion to the nearest size outside them."""
    sizes = sorted(REGISTER_FILE_AREA_MM2)
    lo, hi = sizes[0], sizes[-1]
    if entries <= lo:
        return REGISTER_FILE_AREA_MM2[lo] * entries / lo
    if entries >= hi:
        return REGISTER_FILE_AREA_MM2[hi] * entries / hi
    return float(np.interp(entries, sizes, [REGISTER_FILE_AREA_MM2[k] for k in sizes]))


def mvm_cycles(cfg, cols_used: int, adc_bits: int | None, rows_used: int | None = None) -> int:
    """Latency of one ``mvm`` on one MVMU, in cycles (design, "Timing").

    Three pipeline stages per read: A = DAC + crossbar read, B = sample-and-hold +
    ``ceil(conversions / adcs)`` ADC conversions, C = shift-and-add. An input step is one
    read, or G = ``cfg.reads_per_step(rows_used)`` when ``xbar.active_rows`` limits the rows
    read at once. Over S steps: A + B + C + (S * G - 1) * max(A, B, C). A partial read is
    charged stage A in full (a crossbar read settles its bit lines whatever the number of
    word lines driven; PUMA's table has one read time), so reading fewer rows buys ADC bits
    with latency, not the other way round. The read time scales with ``xbar.rows`` / 128
    (bit-line length; see ``TABLE``)."""
    reads = cfg.input_steps * cfg.reads_per_step(rows_used)
    conv_per_step = cols_used * cfg.slices * cfg.arrays
    adc = adc_cost(cfg.adc.model, cost_bits(cfg, adc_bits))
    a = TABLE["dac_ns"] + TABLE["crossbar_step_ns"] * cfg.xbar.rows / 128
    b = -(-conv_per_step // cfg.adc.per_mvmu) * adc.latency_ns
    c = TABLE["shift_add_ns"]
    total_ns = a + b + c + (reads - 1) * max(a, b, c)
    return max(1, math.ceil(total_ns * cfg.clock_ghz - 1e-9))


def worst_case_adc_bits(cfg) -> int:
    """ADC bits lossless for any weights on ``cfg``'s crossbars (every cell of a read at the
    top level a weight can give it, every DAC step at full scale); an ideal ADC is costed
    as this wide."""
    rows = cfg.xbar.active_rows or cfg.xbar.rows
    top = top_weight_level(cfg.weight_bits, cfg.xbar.cell_bits, cfg.xbar.mapping)
    worst = rows * ((1 << cfg.step_bits) - 1) * top
    return max(1, math.ceil(math.log2(worst + 1)))


def cost_bits(cfg, adc_bits: int | None) -> int:
    """The bit width whose cost an ADC of ``adc_bits`` (None = ideal) is charged."""
    return adc_bits if adc_bits is not None else worst_case_adc_bits(cfg)


#: Bits of the eDRAM access and the flit the per-access and per-flit-hop energies are for
#: (PUMA's 256-bit eDRAM access; the default machine's 16 16-bit words a port access or flit).
REFERENCE_ACCESS_BITS = 256


def energy_table(cfg) -> dict[str, float]:
    """Energy per counted access, pJ, for the components that do not depend on ADC bits.
    An eDRAM port access and a flit-hop cost in proportion to the bits they carry
    (``port_words`` / ``flit_words`` words of ``input_bits``, stored in whole bytes), so
    wider ports or flits move the same data for the same energy in fewer accesses."""
    cells = cfg.xbar.rows * cfg.xbar.cols / (128 * 128)
    word_bits = 8 * ((cfg.input_bits + 7) // 8)        # as tile memory stores a word
    return {
        "crossbar": TABLE["crossbar_step_pj"] * cells,
        "dac": TABLE["dac_pj"],
        "shift_add": TABLE["shift_add_pj"],
        "vfu": TABLE["vfu_pj_per_elem"],
        "edram": TABLE["edram_pj_per_access"] * cfg.tile.port_words * word_bits
        / REFERENCE_ACCESS_BITS,
        "noc": TABLE["router_pj_per_flit_hop"] * cfg.node.flit_words * word_bits
        / REFERENCE_ACCESS_BITS,
    }


def adc_energy_by_bits(cfg, widest: int = 32) -> np.ndarray:
    """pJ per conversion indexed by ADC bits 0..``widest`` (0 unused)."""
    out = np.zeros(widest + 1)
    for b in range(1, widest + 1):
        out[b] = adc_cost(cfg.adc.model, b).energy_pj
    return out
