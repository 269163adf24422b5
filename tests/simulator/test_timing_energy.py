"""MVM latency against the design's pipeline formula; energy = sum of counts x table."""
import itertools
import json
import math

import numpy as np
import pytest

from simulator import load_config, simulate
from simulator import examples as ex
from simulator.isa import Op

# The design's numbers, restated here (not imported) so the test checks the tables too.
XBAR_NS, DAC_NS, SHADD_NS = 100.0, 1.0, 1.0
ADC_NS = {"puma": lambda b: 12.5 * b / 128, "isaac": lambda b: 1 / 1.28,
          "survey": lambda b: 1 / 1.28, "sar": lambda b: b + 1.0}
ADC_PJ = {"puma": lambda b: 0.225 * b, "isaac": lambda b: 2 / 1.28 * 2 ** (b - 8),
          "sar": lambda b: (0.538 * b + 4.375) * 1e-3 * (b + 1)}


def expected_mvm_cycles(input_bits, dac_bits, adcs, cols, slices, arrays, adc_ns, reads=1):
    """``reads``: reads per input step (partial parallel read)."""
    steps = 1 + math.ceil((input_bits - 1) / dac_bits)   # sign step + magnitude steps
    a = DAC_NS + XBAR_NS
    b = math.ceil(cols * slices * arrays / adcs) * adc_ns
    c = SHADD_NS
    return math.ceil(a + b + c + (steps * reads - 1) * max(a, b, c))


def mvm_event(rep):
    ev = [e for e in rep.trace_events.tolist() if e[3] == Op.MVM]
    assert len(ev) == 1
    return ev[0][2] - ev[0][1]


@pytest.mark.parametrize("input_bits,dac,adcs,cols,model", list(itertools.product(
    (8, 16), (1, 2, 4), (1, 4, 8), (16, 64, 128), ("puma", "sar"))))
def test_mvm_latency_matches_formula(input_bits, dac, adcs, cols, model):
    cfg = load_config("puma", [f"input_bits={input_bits}", f"dac.bits={dac}",
                               f"adc.per_mvmu={adcs}", f"adc.model={model}"])
    w = ex.random_weights(cfg, 128, cols)
    rep = simulate(ex.single_mvm(cfg, w), values=False, trace=True)
    want = expected_mvm_cycles(input_bits, dac, adcs, cols, cfg.slices, cfg.arrays,
                               ADC_NS[model](8))
    assert mvm_event(rep) == want


@pytest.mark.parametrize("model", ["puma", "isaac", "survey", "sar"])
def test_energy_is_counts_times_table(model):
    cfg = load_config("puma", [f"adc.model={model}", "xbar.mapping=differential"])
    w = ex.random_weights(cfg, 128, 100)
    rep = simulate(ex.single_mvm(cfg, w), values=False)
    steps, per_step = 16, cfg.slices * cfg.arrays                  # 8 slices x 2 arrays
    convs = 100 * per_step * steps
    assert rep.adc_conversions == convs
    assert rep.counters["crossbar_reads"] == per_step * steps
    assert rep.counters["dac_conversions"] == 128 * per_step * steps
    e = rep.energy_j
    adc_pj = {"survey": lambda b: 1.93}.get(model, ADC_PJ.get(model))(8)
    assert e["adc"] == pytest.approx(convs * adc_pj * 1e-12, rel=1e-12)
    assert e["crossbar"] == pytest.approx(per_step * steps * 170.0e-12, rel=1e-12)
    assert e["dac"] == pytest.approx(128 * per_step * steps * 0.0035e-12, rel=1e-12)
    assert e["shift_add"] == pytest.approx(convs * 0.045e-12, rel=1e-12)
    edram_accesses = rep.counters["edram_accesses"]
    assert edram_accesses == math.ceil(128 / 16) + math.ceil(100 / 16)
    assert e["edram"] == pytest.approx(edram_accesses * 17.2e-12)
    parts = sum(v for k, v in e.items() if k != "total")
    assert e["total"] == pytest.approx(parts)



@pytest.mark.parametrize("rows,active,reads", [(128, 32, 4), (100, 32, 4), (128, 48, 3),
                                               (20, 32, 1), (128, 128, 1)])
def test_partial_reads_cost_time_and_conversions_not_array_energy(rows, active, reads):
    """``xbar.active_rows``: each input step reads the used rows ``active`` at a time, so
    the pipeline runs steps x reads items and every column is converted once per read;
    each row is still driven once per step (DAC, and the array read counted in whole-array
    reads)."""
    cfg = load_config("puma", ["xbar.mapping=differential", f"xbar.active_rows={active}"])
    w = ex.random_weights(cfg, rows, 100)
    rep = simulate(ex.single_mvm(cfg, w), values=False, trace=True)
    full = simulate(ex.single_mvm(load_config("puma", ["xbar.mapping=differential"]), w),
                    values=False)
    assert mvm_event(rep) == expected_mvm_cycles(16, 1, 8, 100, cfg.slices, cfg.arrays,
                                                 ADC_NS["puma"](8), reads)
    assert rep.adc_conversions == reads * full.adc_conversions
    for key in ("crossbar_reads", "dac_conversions"):
        assert rep.counters[key] == full.counters[key]
    e, ef = rep.energy_j, full.energy_j
    assert e["adc"] == pytest.approx(reads * ef["adc"], rel=1e-12)
    assert e["shift_add"] == pytest.approx(reads * ef["shift_add"], rel=1e-12)
    assert e["crossbar"] == pytest.approx(ef["crossbar"], rel=1e-12)

def test_puma_mvm_energy_close_to_published_53nJ():
    # One 128x128 16-bit MVM on PUMA's offset-mapped MVMU: the design quotes ~53 nJ.
    cfg = load_config("puma")
    rep = simulate(ex.single_mvm(cfg, ex.random_weights(cfg, 128, 128)), values=False)
    mvm_nj = sum(rep.energy_j[k] for k in ("crossbar", "dac", "adc", "shift_add")) * 1e9
    assert 50 <= mvm_nj <= 56


def test_adaptive_bits_change_adc_energy_only_by_the_table():
    cfg = load_config("puma", ["adc.model=puma"])
    w = ex.random_weights(cfg, 128, 128)
    r8 = simulate(ex.single_mvm(cfg, w, adc_bits=8), values=False)
    r4 = simulate(ex.single_mvm(cfg, w, adc_bits=4), values=False)
    assert r4.energy_j["adc"] == pytest.approx(r8.energy_j["adc"] / 2)
    assert r4.counters["adc_conversions_by_bits"] == {"4": r8.adc_conversions}



def test_adc_leakage_and_area_follow_each_mvmus_bits():
    # PUMA's table: leakage 0.025*b mW per ADC (0.2 at 8 bits), area flat 0.0012 mm^2.
    # An MVMU converting with 4 adaptive bits leaks half of an 8-bit one's, for the run.
    cfg = load_config("puma", ["adc.model=puma"])
    w = ex.random_weights(cfg, 128, 128)
    for bits in (8, 4):
        rep = simulate(ex.single_mvm(cfg, w, adc_bits=bits), values=False)
        ns = rep.latency_cycles * cfg.cycle_ns
        leak_mw = cfg.adc.per_mvmu * 0.025 * bits + rep.tiles * 0.46   # ADCs + tile eDRAM
        assert rep.energy_j["leakage"] == pytest.approx(leak_mw * ns * 1e-12, rel=1e-9)
        assert rep.area_mm2["adc"] == pytest.approx(cfg.adc.per_mvmu * 0.0012)
    isaac = load_config("puma", ["adc.model=isaac"])   # area scales as 2**(b-8) there
    a4 = simulate(ex.single_mvm(isaac, w, adc_bits=4), values=False).area_mm2["adc"]
    assert a4 == pytest.approx(isaac.adc.per_mvmu * 0.0012 / 16)

def test_register_areas_follow_their_sizes():
    """An MVMU's input register has an entry per row and its output register one per
    column (PUMA xbar_inMem/outMem: 0.00078 mm^2 at 128 entries each); a core's register
    file follows PUMA's dataMem table (0.00108 mm^2 at 512 words, 0.00392 at 2048)."""
    def area(overrides, rows=128, cols=128):
        cfg = load_config("puma", overrides)
        w = ex.random_weights(cfg, rows, cols)
        return simulate(ex.single_mvm(cfg, w), values=False).area_mm2

    base = area([])
    assert base["mvmu_registers"] == pytest.approx(2 * 0.00078)
    wide = area(["xbar.cols=256"], cols=256)
    tall = area(["xbar.rows=256"], rows=256)
    assert wide["mvmu_registers"] == pytest.approx(3 * 0.00078)
    assert tall["mvmu_registers"] == pytest.approx(3 * 0.00078)
    small = area(["core.registers=512"])
    assert base["core_other"] - small["core_other"] == pytest.approx(0.00392 - 0.00108)
    assert area(["core.registers=768"])["core_other"] - small["core_other"] == pytest.approx(
        (0.00192 - 0.00108) / 2)


def test_two_cores_exchange_through_tile_memory():
    cfg = load_config("small")
    w = ex.random_weights(cfg, 16, 16, seed=2)
    x = np.random.default_rng(3).integers(-128, 128, (5, 16))
    rep = simulate(ex.two_core_exchange(cfg, w, shift=4), {"x": x})
    y = x @ w
    want = (np.maximum(y, 0) + 8) >> 4
    np.testing.assert_array_equal(rep.outputs["y:int"], want)


def test_two_tiles_send_receive_and_hops_show_in_latency():
    cfg = load_config("small")          # 4 tiles on a 2x2 mesh
    w = ex.random_weights(cfg, 16, 16, seed=4)
    x = np.random.default_rng(5).integers(-128, 128, (3, 16))
    want = (np.maximum(x @ w, 0) + 2) >> 2
    lat = {}
    for dst in (1, 3):                  # tile 1: one hop away; tile 3: two hops
        rep = simulate(ex.two_tile_exchange(cfg, w, dst_tile=dst, shift=2), {"x": x})
        np.testing.assert_array_equal(rep.outputs["y:int"], want)
        lat[dst] = rep.latency_cycles
        assert rep.counters["noc_flit_hops"] == (1 if dst == 1 else 2)
    per_hop = cfg.node.router_cycles + cfg.node.hop_cycles
    assert lat[3] - lat[1] == per_hop


def test_link_contention_serialises_flits():
    cfg = load_config("small", ["node.flit_words=1"])
    w = ex.random_weights(cfg, 16, 16)
    one = simulate(ex.two_tile_exchange(cfg, w, dst_tile=1), values=False).latency_cycles
    cfg2 = load_config("small", ["node.flit_words=16"])
    many = simulate(ex.two_tile_exchange(cfg2, w, dst_tile=1), values=False).latency_cycles
    assert one - many == 16 - 1     # 16 flits instead of one on the same link


@pytest.mark.parametrize("overrides, bits", [
    ([], 9),                                        # PUMA: 128 rows x level 3 x 1-bit DAC
    (["xbar.cell_bits=1"], 8),                      # 128 rows x level 1: 0..128
    (["xbar.rows=32", "xbar.cols=32"], 7),          # 32 x 3 = 96
    (["dac.bits=2"], 11),                           # 128 x 3 x 3 = 1152
    # a weight narrower than a cell never fills it: a 4-bit differential weight's magnitude
    # reaches level 7 of a 4-bit cell's 15 (128 x 7 = 896: 10 bits, not 11)
    (["weight_bits=4", "xbar.cell_bits=4", "xbar.mapping=differential"], 10),
    (["weight_bits=2", "xbar.cell_bits=2", "xbar.mapping=differential"], 8),   # 0..1
    (["weight_bits=4", "xbar.cell_bits=4"], 11),    # puma's offset mapping fills the cell
])
def test_worst_case_adc_bits_is_the_largest_possible_column_sum(overrides, bits):
    from simulator.costs import worst_case_adc_bits
    assert worst_case_adc_bits(load_config("puma", overrides)) == bits


def test_an_ideal_adc_wider_than_32_bits_is_charged_at_its_width():
    """An ideal ADC is costed at the worst-case lossless width, here 12 + 16 + 8 = 36 bits
    (log2 rows + the widest 16-bit input step, below the 17-bit inputs' sign + cell bits,
    which a 9-bit differential weight's 8-bit magnitude fills):
    its conversions are charged that width's energy (the per-width table grows to fit)."""
    cfg = load_config("small", ["xbar.rows=4096", "xbar.cols=4", "weight_bits=9",
                                "input_bits=17", "dac.bits=16", "xbar.cell_bits=8",
                                "adc.bits=none", "adc.model=sar"])
    from simulator.costs import adc_cost, worst_case_adc_bits
    assert worst_case_adc_bits(cfg) == 36
    w = ex.random_weights(cfg, 4096, 4)
    rep = simulate(ex.single_mvm(cfg, w), values=False)
    assert rep.adc_conversions > 0
    assert rep.energy_j["adc"] == pytest.approx(
        rep.adc_conversions * adc_cost("sar", 36).energy_pj * 1e-12, rel=1e-12)
    # the per-layer table says which width an ideal ADC was charged at
    assert rep.layers[0]["adc_bits"] is None and rep.layers[0]["adc_bits_charged"] == 36
    assert " id.36 " in rep.layers_table().splitlines()[1]


def test_edram_and_noc_energy_follow_the_bits_an_access_carries():
    """17.2 pJ is PUMA's 256-bit eDRAM access (16 16-bit words, the default port): a
    port of 64 words cost the same per access as one of 16, so widening it cut eDRAM
    energy 4x for the same data; likewise a flit. Defaults are unchanged."""
    from simulator.costs import TABLE, energy_table
    base = energy_table(load_config("puma"))
    assert base["edram"] == TABLE["edram_pj_per_access"]
    assert base["noc"] == TABLE["router_pj_per_flit_hop"]
    wide = energy_table(load_config("puma", ["tile.port_words=64", "node.flit_words=4"]))
    assert wide["edram"] == 4 * base["edram"] and wide["noc"] == base["noc"] / 4
    narrow = energy_table(load_config("puma", ["input_bits=8"]))      # 8-bit words
    assert narrow["edram"] == base["edram"] / 2 and narrow["noc"] == base["noc"] / 2


def _program(cfg, core_code, w, **kw):
    """One tile; MVMU 0 of core 0 holds ``w``; the cores run ``core_code``."""
    from simulator.program import Program, TensorPort
    return Program(config=cfg, n_tiles=1,
                   core_code=core_code + [ex.EMPTY] * (cfg.tile.cores - len(core_code)),
                   tile_code=[ex.EMPTY], mvmu_loc=[(0, 0, 0)],
                   mvmu_levels=ex._levels(cfg, w)[None], mvmu_layer=[0],
                   inputs=[TensorPort("x", 0, 0, (16,), 1.0)],
                   outputs=[TensorPort("y", 0, 16, (16,), 1.0)],
                   layers=[{"name": "mvm", "op": "MatMul"}, {"name": "side", "op": "Load"}],
                   **kw)


def _mvm_then_store(lay):
    from simulator.isa import assemble, instr
    return assemble([instr(Op.LOAD, dst=lay.xin_of(0), imm=0, vec=16, layer=0),
                     instr(Op.MVM, mask=1, layer=0),
                     instr(Op.STORE, src1=lay.xout_of(0), imm=16, vec=16, count=0, layer=0),
                     instr(Op.HLT)])


def _events(rep, agent):
    return [(Op(e[3]).name, int(e[1]), int(e[2])) for e in rep.trace_events.tolist()
            if e[0] == agent]


def test_a_port_booked_for_a_later_store_leaves_its_earlier_gap_free():
    """Core 0's store waits ~215 cycles for its MVM and books the tile's only port then;
    core 1's five loads, processed after it but ready at cycle 4, used to queue behind that
    booking (latency 235). They take the gap before it."""
    from simulator.isa import RegisterLayout, assemble, instr
    cfg = load_config("small", ["tile.mem_ports=1"])
    lay = RegisterLayout.of(cfg)
    w = ex.random_weights(cfg, 16, 16)
    loads = assemble([instr(Op.NOP)] * 4 + [instr(Op.LOAD, dst=lay.gp, imm=100, vec=16,
                                                  layer=1)] * 5 + [instr(Op.HLT)])
    rep = simulate(_program(cfg, [_mvm_then_store(lay), loads], w,
                            mem_init=[(0, 100, np.arange(16), 0)]), None, trace=True)
    store = [e for e in _events(rep, 0) if e[0] == "STORE"][0]
    assert [e[1] for e in _events(rep, 1)] == [4, 7, 10, 13, 16]    # back to back
    assert store[1] >= 19 and rep.latency_cycles == store[2] + 1   # the store unchanged


def test_a_blocked_load_is_not_delayed_by_an_unrelated_store_that_wakes_it():
    """Core 1 waits for address 200, which core 2 stores at cycle n. Core 0's unrelated store
    (issued early, starting at ~218 after its MVM) woke core 1 and moved its clock to 218, so
    its load ran at 218 however early its data came."""
    from simulator.isa import RegisterLayout, assemble, instr
    cfg = load_config("small", ["tile.cores=3", "tile.mem_ports=4"])
    lay = RegisterLayout.of(cfg)
    w = ex.random_weights(cfg, 16, 16)
    consumer = assemble([instr(Op.LOAD, dst=lay.gp, imm=200, vec=4, layer=1),
                         instr(Op.HLT)])
    for n in (3, 10):
        producer = assemble([instr(Op.NOP)] * n + [
            instr(Op.STORE, src1=lay.gp, imm=200, vec=4, count=1, layer=1), instr(Op.HLT)])
        rep = simulate(_program(cfg, [_mvm_then_store(lay), consumer, producer], w), None,
                       trace=True)
        (_, s, f), = _events(rep, 2)
        assert _events(rep, 1) == [("LOAD", f, f + f - s)]   # right after the store


@pytest.mark.parametrize("flit_words, spacing", [(1, 16), (16, 3)])
def test_two_messages_on_one_link_take_turns(flit_words, spacing):
    """Two 16-word sends 3 cycles apart over one link: at one word a flit the second's 16
    flits follow the first's (arrivals 16 apart); as one flit each, 3 apart, as sent."""
    from simulator.isa import assemble, instr
    from simulator.program import Program, TensorPort
    cfg = load_config("small", [f"node.flit_words={flit_words}"])
    send = assemble([instr(Op.SEND, imm=a, vec=16, peer=1, layer=0) for a in (0, 16)]
                    + [instr(Op.HLT)])
    recv = assemble([instr(Op.RECV, imm=a, vec=16, peer=0, count=0, layer=0) for a in (0, 16)]
                    + [instr(Op.HLT)])
    prog = Program(config=cfg, n_tiles=2, core_code=[ex.EMPTY] * (2 * cfg.tile.cores),
                   tile_code=[send, recv], mem_init=[(0, 0, np.arange(32), 0)],
                   layers=[{"name": "x", "op": "Copy"}],
                   outputs=[TensorPort("y", 1, 0, (32,), 1.0)])
    rep = simulate(prog, None, trace=True)
    sends = [s for op, s, _ in _events(rep, rep.agent_names.index("tile 0 control"))]
    recvs = [s for op, s, _ in _events(rep, rep.agent_names.index("tile 1 control"))]
    assert sends[1] - sends[0] == 3 and recvs[1] - recvs[0] == spacing


def _mlp_20_40_10(cfg):
    """Two Gemms, compiled for ``cfg``."""
    from onnx import TensorProto, helper, numpy_helper

    from compiler import compile_model
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(((20, 40), (40, 10))):
        inits += [numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32)
                                          * 0.1, f"w{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"h{i}"], transB=1))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 20])], [helper.make_tensor_value_info(
            prev, TensorProto.FLOAT, [1, 10])], inits)
    return compile_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]),
                         cfg)


def test_a_layers_span_starts_with_its_data_not_its_loop_setup():
    """The second Gemm's core sets up its loops and loads its resident bias at cycle 0; its
    span began there, so a layer that waits 300 cycles for its input read as busy all along
    (the demo's last Gemm: 1471 us of a 1473 us run for 2 us of work)."""
    rep = simulate(_mlp_20_40_10(load_config("small")), values=False, trace=True)
    first, second = [L for L in rep.layers if L["crossbars"]]
    assert first["start_cycle"] < second["start_cycle"]
    assert second["start_cycle"] + second["latency_cycles"] <= rep.latency_cycles
    assert second["latency_cycles"] < rep.latency_cycles / 2


def test_tiles_placement_skips_are_not_charged():
    """On a 2 x 2 mesh placement fills tiles 0, 1, 3 (snake order), leaving tile 2 empty
    below the highest index; its eDRAM, router and eDRAM leakage were charged."""
    from simulator import costs
    cfg = load_config("small")
    prog = _mlp_20_40_10(cfg)
    used = prog.tiles_used()
    assert prog.n_tiles == 4 and used == {0, 1, 3} and prog.tiles_used(routes=True) == used
    rep = simulate(prog, values=False)
    T = costs.TABLE
    assert rep.tiles == 3 == prog.mapping["tiles"]
    assert rep.area_mm2["edram"] == pytest.approx(3 * T["edram_area_mm2"]
                                                  * cfg.tile.edram_kb / 64)
    assert rep.area_mm2["router"] == pytest.approx(3 * T["router_area_mm2"])


def test_a_router_a_message_passes_through_is_charged_and_its_edram_is_not():
    """Tile 0 sends to tile 3 on a 2 x 2 mesh: XY routing passes tile 1's router."""
    from simulator.isa import assemble, instr
    from simulator.program import Program, TensorPort
    cfg = load_config("small")
    send = assemble([instr(Op.SEND, imm=0, vec=16, peer=3, layer=0), instr(Op.HLT)])
    recv = assemble([instr(Op.RECV, imm=0, vec=16, peer=0, count=0, layer=0), instr(Op.HLT)])
    prog = Program(config=cfg, n_tiles=4, core_code=[ex.EMPTY] * (4 * cfg.tile.cores),
                   tile_code=[send, ex.EMPTY, ex.EMPTY, recv],
                   mem_init=[(0, 0, np.arange(16), 0)], layers=[{"name": "x", "op": "Copy"}],
                   outputs=[TensorPort("y", 3, 0, (16,), 1.0)])
    assert prog.tiles_used() == {0, 3} and prog.tiles_used(routes=True) == {0, 1, 3}
    from simulator import costs
    rep = simulate(prog, None)
    T = costs.TABLE
    assert rep.area_mm2["router"] == pytest.approx(3 * T["router_area_mm2"])
    assert rep.area_mm2["edram"] == pytest.approx(2 * T["edram_area_mm2"]
                                                  * cfg.tile.edram_kb / 64)
    assert rep.tiles == 2 and rep.outputs["y:int"][0].tolist() == list(range(16))


def test_cores_that_only_halt_are_not_charged():
    """The compiler ends every core's stream with hlt, idle cores' too; those counted as
    used, charging their VFU and control area (3 of LeNet-5's 8 cores on puma)."""
    cfg = load_config("small")
    w = ex.random_weights(cfg, 16, 16)
    rep = simulate(ex.single_mvm(cfg, w), values=False)
    assert rep.cores == 1
    one_core = rep.area_mm2["vfu"]
    two = simulate(ex.two_core_exchange(cfg, w), values=False)
    assert two.cores == 2 and two.area_mm2["vfu"] == pytest.approx(2 * one_core)


def test_a_program_that_takes_no_time_reports_valid_json():
    from simulator.program import Program
    cfg = load_config("small")
    prog = Program(config=cfg, n_tiles=1, core_code=[ex.EMPTY.copy()[:0]] * cfg.tile.cores,
                   tile_code=[ex.EMPTY.copy()[:0]])
    rep = simulate(prog, None)
    assert rep.latency_cycles == 0 and rep.throughput_per_s is None
    assert json.loads(rep.to_json())["throughput_per_s"] is None
    assert "n/a" in rep.summary()


def test_a_word_is_overwritten_only_after_its_last_reader_in_time():
    """A word read twice: core 0's read waits for its MVMU (cycle ~218), core 1's, processed
    later, takes an earlier port gap and was the last count decrement, so the word counted
    as free from cycle ~7 and core 2's store overwrote it before core 0 read it."""
    from simulator.isa import RegisterLayout, assemble, instr
    cfg = load_config("small", ["tile.mem_ports=1", "tile.cores=3"])
    lay = RegisterLayout.of(cfg)
    w = ex.random_weights(cfg, 16, 16)
    reader0 = assemble([instr(Op.LOAD, dst=lay.xin_of(0), imm=0, vec=16, layer=0),
                        instr(Op.MVM, mask=1, layer=0),
                        instr(Op.LOAD, dst=lay.xin_of(0), imm=100, vec=16, layer=1),
                        instr(Op.HLT)])
    reader1 = assemble([instr(Op.NOP)] * 4 + [instr(Op.LOAD, dst=lay.gp, imm=100, vec=16,
                                                    layer=1), instr(Op.HLT)])
    writer = assemble([instr(Op.NOP)] * 6 + [instr(Op.STORE, src1=lay.gp, imm=100, vec=16,
                                                   count=0, layer=1), instr(Op.HLT)])
    rep = simulate(_program(cfg, [reader0, reader1, writer], w,
                            mem_init=[(0, 100, np.arange(16), 2)]), None, trace=True)
    last_read = [e for e in _events(rep, 0) if e[0] == "LOAD"][-1]
    first_read = [e for e in _events(rep, 1) if e[0] == "LOAD"][0]
    (_, store, _), = [e for e in _events(rep, 2) if e[0] == "STORE"]
    assert first_read[1] < 20 < last_read[1]          # core 1 did take the early gap
    assert store >= last_read[1] + 1                    # after the last read's port access


def test_a_full_booking_list_merges_without_losing_a_booking():
    """When 32 bookings were live, the two earliest merged to the second's end, which a
    booking placed inside a merged span could shorten: a real booking was then dropped and
    its cycles double-booked."""
    from simulator.timing import BOOKINGS, _book, _earliest_gap
    gap, book = _earliest_gap.py_func, _book.py_func
    start = np.zeros((1, BOOKINGS), np.int64)
    end = np.zeros((1, BOOKINGS), np.int64)
    n = np.zeros(1, np.int64)
    for i in range(BOOKINGS):                  # [100, 110), [200, 210), ...
        book(start, end, n, 0, 100 * i + 100, 10)
    for ready in (120, 10_000):                # into a gap, then far ahead: two merges
        book(start, end, n, 0, gap(start, end, n, 0, ready, 5, 0), 5)
    assert gap(start, end, n, 0, 200, 5, 0) >= 210     # [200, 210) is still booked
    live = sorted(zip(start[0, :n[0]].tolist(), end[0, :n[0]].tolist()))
    assert all(s < e for s, e in live) and n[0] <= BOOKINGS


def test_a_full_booking_list_gives_up_its_smallest_gap():
    """Merging the two earliest bookings gave up the near gaps the next requests need: an
    unrelated store was pushed past them (a review measured +60 cycles on puma's NoC)."""
    from simulator.timing import BOOKINGS, _book, _earliest_gap
    gap, book = _earliest_gap.py_func, _book.py_func
    start = np.zeros((1, BOOKINGS), np.int64)
    end = np.zeros((1, BOOKINGS), np.int64)
    n = np.zeros(1, np.int64)
    for i in range(BOOKINGS - 1):                       # [100, 110), [200, 210), ...
        book(start, end, n, 0, 100 * i + 100, 10)
    last = 100 * (BOOKINGS - 1) + 12                    # 2 cycles after the last one
    book(start, end, n, 0, last, 8)
    book(start, end, n, 0, gap(start, end, n, 0, 10_000, 5, 0), 5)   # full: one merge
    assert gap(start, end, n, 0, 110, 50, 0) == 110     # the early gap is still free
    assert gap(start, end, n, 0, last - 2, 1, 0) >= last + 8   # the 2 cycles went


def test_simulated_time_past_the_engines_limit_is_an_error_not_a_deadlock():
    """A heap key is time << 20 | agent: past 2**43 cycles it wrapped negative, was taken
    for a stale entry, and the run ended as a deadlock waiting on nothing ("waits: ?").
    Here 2**17 VFU ops of 2**26 cycles each pass it."""
    from simulator import Program, SimulationError
    from simulator.isa import Fn, RegisterLayout, assemble, instr
    cfg = load_config("small", [f"core.registers={1 << 26}", "core.vfu_lanes=1"])
    gp = RegisterLayout.of(cfg).gp
    code = assemble([instr(Op.ISET, dst=0, imm=0), instr(Op.ISET, dst=1, imm=1 << 17),
                     instr(Op.ALU, fn=Fn.ADD, dst=gp, src1=gp, src2=gp, vec=1 << 26, layer=0),
                     instr(Op.LOAD, dst=gp, imm=0, vec=1, layer=0),
                     instr(Op.IADD, dst=0, src1=0, imm=1), instr(Op.BNE, src1=0, src2=1, imm=2),
                     instr(Op.HLT)])
    prog = Program(config=cfg, n_tiles=1, core_code=[code] * cfg.tile.cores,
                   tile_code=[ex.EMPTY], layers=[{"name": "l", "op": "Add"}],
                   mem_init=[(0, 0, np.zeros(1, np.int64), 0)])
    with pytest.raises(SimulationError, match=r"^tile 0 core \d pc 3: simulated time passed "
                                              r"2\*\*43 cycles \(the timing engine's limit\)$"):
        simulate(prog, values=False)
