"""Tile control units with several streams (``tile.control_streams``): each stream runs its
own sends and receives, each FIFO of a receive buffer is its own channel, so one layer's
transfers do not wait behind another's. Hand-built programs for the semantics; a compiled
multi-tile ResNet for what it buys."""
import numpy as np
import pytest

from simulator import examples as ex
from simulator import load_config, simulate
from simulator.errors import DeadlockError, ProgramError
from simulator.functional import run_values
from simulator.isa import Fn, Op, RegisterLayout, assemble, instr
from simulator.program import Program, TensorPort

LATE = 400   # cycles before tile 0's core stores the first message's words


def _two_messages(cfg, streams: int) -> Program:
    """Tile 0 sends two 4-word messages to tile 1: A (FIFO 0) from words its core stores
    after ``LATE`` cycles, B (FIFO 1) from preloaded words. ``streams`` = 2: each message
    has a stream of its own on both tiles; 1: both on one stream per tile, A first."""
    lay = RegisterLayout.of(cfg)
    core = assemble([instr(Op.SET, dst=lay.gp, imm=7, vec=4, layer=0)]
                    + [instr(Op.NOP)] * LATE
                    + [instr(Op.STORE, src1=lay.gp, imm=0, vec=4, count=1, layer=0),
                       instr(Op.HLT)])
    send = {f: instr(Op.SEND, dst=f, imm=4 * f, vec=4, peer=1, layer=f) for f in (0, 1)}
    recv = {f: instr(Op.RECV, dst=f, imm=4 * f, vec=4, peer=0, count=0, layer=f)
            for f in (0, 1)}
    if streams == 2:
        tile_code = [assemble([send[0], instr(Op.HLT)]), assemble([send[1], instr(Op.HLT)]),
                     assemble([recv[0], instr(Op.HLT)]), assemble([recv[1], instr(Op.HLT)])]
        control_tiles = [0, 0, 1, 1]
    else:
        tile_code = [assemble([send[0], send[1], instr(Op.HLT)]),
                     assemble([recv[0], recv[1], instr(Op.HLT)])]
        control_tiles = [0, 1]
    cores = [core] + [ex.EMPTY] * (2 * cfg.tile.cores - 1)
    return Program(config=cfg, n_tiles=2, core_code=cores, tile_code=tile_code,
                   control_tiles=control_tiles, mem_init=[(0, 4, np.arange(4) + 10, 0)],
                   layers=[{"name": "a", "op": "Copy"}, {"name": "b", "op": "Copy"}],
                   outputs=[TensorPort("a", 1, 0, (4,), 1.0), TensorPort("b", 1, 4, (4,), 1.0)])


def _recv_end(rep, fifo_layer: int) -> int:
    ends = [e for _, _, e, op, lay in rep.trace_events.tolist()
            if op == int(Op.RECV) and lay == fifo_layer]
    assert len(ends) == 1
    return ends[0]


def test_a_second_stream_does_not_wait_behind_the_first():
    cfg = load_config("small", ["tile.control_streams=2"])
    own = simulate(_two_messages(cfg, 2), None, trace=True)
    one = simulate(_two_messages(cfg, 1), None, trace=True)
    for rep in (own, one):      # both deliver both messages, value for value
        np.testing.assert_array_equal(rep.outputs["a:int"], [[7] * 4])
        np.testing.assert_array_equal(rep.outputs["b:int"], [[10, 11, 12, 13]])
    assert _recv_end(own, 1) < LATE < _recv_end(one, 1)   # B: at once vs after A
    assert _recv_end(own, 0) > LATE and _recv_end(one, 0) > LATE


def test_agents_are_named_by_tile_and_stream():
    cfg = load_config("small", ["tile.control_streams=2"])
    prog = _two_messages(cfg, 2)
    n = len(prog.core_code)
    assert [prog.agent_name(n + s) for s in range(4)] == [
        "tile 0 control 0", "tile 0 control 1", "tile 1 control 0", "tile 1 control 1"]
    assert prog.agent_tile(n + 3) == 1
    assert _two_messages(cfg, 1).agent_name(n) == "tile 0 control"    # FIFOs 0 and 1
    # by FIFO: one layer's streams carry one name on every tile; a tile's only stream on
    # FIFO 0 (or moving nothing) is its control unit; two on one FIFO go by place
    cfg8 = load_config("small", ["tile.control_streams=8"])

    def on(fifo, peer):
        return assemble([instr(Op.SEND, dst=fifo, imm=0, vec=1, peer=peer), instr(Op.HLT)])
    prog = Program(config=cfg8, n_tiles=3, core_code=[ex.EMPTY] * (3 * cfg8.tile.cores),
                   tile_code=[on(5, 1), on(6, 1), on(6, 0), on(0, 0), ex.EMPTY, on(2, 0),
                              on(2, 1)], control_tiles=[0, 0, 1, 1, 1, 2, 2])
    m = len(prog.core_code)
    assert [prog.agent_name(m + s) for s in range(7)] == [
        "tile 0 control 5", "tile 0 control 6", "tile 1 control 6", "tile 1 control 0",
        "tile 1 control #2", "tile 2 control #0", "tile 2 control #1"]


def test_a_recv_takes_messages_of_its_own_fifo_only():
    cfg = load_config("small", ["tile.control_streams=2"])
    send = assemble([instr(Op.SEND, dst=0, imm=0, vec=4, peer=1), instr(Op.HLT)])
    recv = assemble([instr(Op.RECV, dst=1, imm=0, vec=4, peer=0, count=0), instr(Op.HLT)])
    prog = Program(config=cfg, n_tiles=2, core_code=[ex.EMPTY] * (2 * cfg.tile.cores),
                   tile_code=[send, recv], mem_init=[(0, 0, np.arange(4), 0)])
    with pytest.raises(DeadlockError, match=r"tile 1 control 1 pc 0 \(recv\) waits: recv "
                                            r"\(no message\), from tile 0 FIFO 1"):
        simulate(prog, None, values=False)
    with pytest.raises(DeadlockError, match="tile 1 control 1 pc 0 waits to recv"):
        run_values(prog, None)


def test_the_receive_buffer_holds_recv_buffer_messages_per_fifo():
    """recv_buffer = 1: a second message in FIFO 0 waits for the first's recv; one in FIFO 1
    does not."""
    cfg = load_config("small", ["tile.control_streams=2", "tile.recv_buffer=1"])
    lay = RegisterLayout.of(cfg)

    def run(fifos):
        send = assemble([instr(Op.SEND, dst=f, imm=0, vec=4, peer=1, layer=0) for f in fifos]
                        + [instr(Op.HLT)])
        # the receiver's stream starts late: it waits for a word its core stores
        core = assemble([instr(Op.NOP)] * LATE + [
            instr(Op.STORE, src1=lay.gp, imm=8, vec=1, count=1, layer=0), instr(Op.HLT)])
        recv = [assemble([instr(Op.SEND, dst=0, imm=8, vec=1, peer=0, layer=0)]
                         + [instr(Op.RECV, dst=f, imm=4 * k, vec=4, peer=0, count=0, layer=0)
                            for k, f in enumerate(fifos)] + [instr(Op.HLT)])]
        drain = assemble([instr(Op.RECV, dst=0, imm=8, vec=1, peer=1, count=0, layer=0),
                          instr(Op.HLT)])
        cores = [ex.EMPTY] * (2 * cfg.tile.cores)
        cores[cfg.tile.cores] = core
        prog = Program(config=cfg, n_tiles=2, core_code=cores,
                       tile_code=[send, drain] + recv, control_tiles=[0, 0, 1],
                       mem_init=[(0, 0, np.arange(4), 0)], layers=[{"name": "m", "op": "Copy"}])
        rep = simulate(prog, None, trace=True)
        n = len(prog.core_code)
        return [s for a, s, _, op, _ in rep.trace_events.tolist()
                if a == n and op == int(Op.SEND)]

    same, apart = run([0, 0]), run([0, 1])
    assert same[1] > LATE > apart[1]


def test_programs_that_misuse_streams_are_refused():
    cfg = load_config("small", ["tile.control_streams=2"])
    cores = [ex.EMPTY] * (2 * cfg.tile.cores)
    hlt = ex.EMPTY

    def prog(tile_code, control_tiles, c=cfg):
        return Program(config=c, n_tiles=2, core_code=cores, tile_code=tile_code,
                       control_tiles=control_tiles)

    with pytest.raises(ProgramError, match="names a tile for 1 control streams; the program "
                                           "has 2"):
        prog([hlt, hlt], [0])
    with pytest.raises(ProgramError, match="control stream's tile is outside 0..1"):
        prog([hlt], [2])
    with pytest.raises(ProgramError, match=r"tile 1 runs 3 control streams; its control unit "
                                           r"runs 2 \(tile.control_streams\)"):
        prog([hlt] * 3, [1, 1, 1])
    for fifo in (2, -1):
        bad = assemble([instr(Op.SEND, dst=fifo, imm=0, vec=1, peer=1), instr(Op.HLT)])
        with pytest.raises(ProgramError, match=rf"tile 0 control {fifo} pc 0 \(send\): FIFO "
                                               rf"{fifo} outside 0..1"):
            prog([bad, hlt], [0, 1])
    with pytest.raises(ProgramError, match="control_tiles must be a 1-D list of tile indices"):
        prog([hlt, hlt], [0.0, 1.0])
    with pytest.raises(ProgramError, match="control stream's tile is outside"):
        prog([hlt, hlt], [0, -1])
    with pytest.raises(ProgramError, match="3 control streams for 2 tiles; with other than one "
                                           "per tile, give control_tiles"):
        prog([hlt] * 3, None)


def test_one_stream_at_each_end_of_a_channel():
    """Two streams taking one channel's messages would take them in an order that depends on
    timing (the timing and value engines could hand them out differently): refused."""
    cfg = load_config("small", ["tile.control_streams=2"])
    cores = [ex.EMPTY] * (2 * cfg.tile.cores)
    send = assemble([instr(Op.SEND, dst=0, imm=0, vec=4, peer=1)] * 2 + [instr(Op.HLT)])
    recv = assemble([instr(Op.RECV, dst=0, imm=0, vec=4, peer=0, count=0), instr(Op.HLT)])
    with pytest.raises(ProgramError, match=r"tile 1 control #1 pc 0 \(recv\): tile 1 control "
                                           r"#0 already receives tile 0 -> tile 1 FIFO 0"):
        Program(config=cfg, n_tiles=2, core_code=cores, tile_code=[send, recv, recv],
                control_tiles=[0, 1, 1], mem_init=[(0, 0, np.arange(4), 0)])
    one = assemble([instr(Op.SEND, dst=0, imm=0, vec=4, peer=1), instr(Op.HLT)])
    with pytest.raises(ProgramError, match="already sends tile 0 -> tile 1 FIFO 0"):
        Program(config=cfg, n_tiles=2, core_code=cores, tile_code=[one, one, recv],
                control_tiles=[0, 0, 1], mem_init=[(0, 0, np.arange(4), 0)])


def test_control_streams_survive_save_and_load(tmp_path):
    cfg = load_config("small", ["tile.control_streams=2"])
    prog = _two_messages(cfg, 2)
    back = Program.load(prog.save(tmp_path / "p"))
    assert back.control_tiles.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(simulate(back, None).outputs["b:int"], [[10, 11, 12, 13]])


def _rewrite(folder, version=None, **arrays):
    """Replace (None: drop) arrays of a saved program, and its format version."""
    import json
    with np.load(folder / "program.npz", allow_pickle=False) as z:
        old = {k: z[k] for k in z.files}
    for k, v in arrays.items():
        old.pop(k) if v is None else old.__setitem__(k, v)
    np.savez_compressed(folder / "program.npz", **old)
    if version is not None:
        m = json.loads((folder / "manifest.json").read_text())
        m["version"] = version
        (folder / "manifest.json").write_text(json.dumps(m))


def test_a_version_1_file_has_one_stream_per_tile(tmp_path):
    """Files written before control streams existed (format 1) load as one stream per
    tile; a malformed control_tiles array is refused by name."""
    prog = ex.two_tile_exchange(load_config("small"), ex.random_weights(
        load_config("small"), 16, 16))
    folder = prog.save(tmp_path / "p")
    _rewrite(folder, version=1, control_tiles=None)
    assert Program.load(folder).control_tiles.tolist() == [0, 1]
    _rewrite(folder, control_tiles=np.array([0.0, 1.0]))
    with pytest.raises(ProgramError, match="control_tiles must be a 1-D integer array"):
        Program.load(folder)
    _rewrite(folder, control_tiles=np.zeros((1, 2), np.int64))
    with pytest.raises(ProgramError, match="control_tiles must be a 1-D integer array"):
        Program.load(folder)
    _rewrite(folder, version=3, control_tiles=np.array([0, 1]))
    with pytest.raises(ProgramError, match="format version 3, this xbarsim reads versions 1, 2"):
        Program.load(folder)


def test_the_config_bounds_control_streams():
    from simulator.errors import ConfigError
    with pytest.raises(ConfigError, match="control_streams"):
        load_config("small", ["tile.control_streams=0"])


def test_a_full_receive_buffer_frees_when_its_recv_runs_not_when_it_is_issued():
    """recv_buffer = 1, and tile 1's recv of A is issued at once but runs only at cycle
    ~220 (its destination word is freed by a load after an MVM). A stays in the buffer until
    then, so the sender's B (and C after it, to tile 2) waits; the engine let B in as soon as
    the recv was processed, two messages in a one-message buffer (found by review)."""
    cfg = load_config("small", ["tile.recv_buffer=1"])
    lay = RegisterLayout.of(cfg)
    w = ex.random_weights(cfg, 16, 16)
    core1 = assemble([instr(Op.LOAD, dst=lay.xin_of(0), imm=100, vec=16, layer=0),
                      instr(Op.MVM, mask=1, layer=0),
                      # frees word 50 once the MVMU is done with its input register
                      instr(Op.LOAD, dst=lay.xin_of(0), imm=50, vec=1, layer=0),
                      instr(Op.HLT)])
    send = assemble([instr(Op.SEND, dst=0, imm=k, vec=1, peer=peer, layer=0)
                     for k, peer in enumerate((1, 1, 2))] + [instr(Op.HLT)])
    recv1 = assemble([instr(Op.RECV, dst=0, imm=50 + k, vec=1, peer=0, count=0, layer=0)
                      for k in range(2)] + [instr(Op.HLT)])
    recv2 = assemble([instr(Op.RECV, dst=0, imm=0, vec=1, peer=0, count=0, layer=0),
                      instr(Op.HLT)])
    cores = [ex.EMPTY] * (3 * cfg.tile.cores)
    cores[cfg.tile.cores] = core1
    prog = Program(config=cfg, n_tiles=3, core_code=cores, tile_code=[send, recv1, recv2],
                   mvmu_loc=[(1, 0, 0)], mvmu_levels=ex._levels(cfg, w)[None],
                   mem_init=[(0, 0, np.array([1, 2, 3]), 0), (1, 100, np.arange(16), 0),
                             (1, 50, np.array([9]), 1)],
                   layers=[{"name": "l", "op": "Copy"}])
    rep = simulate(prog, None, trace=True)
    n = len(prog.core_code)
    sends = [(s, e) for a, s, e, op, _ in rep.trace_events.tolist()
             if a == n and op == int(Op.SEND)]
    recv_a = min((s, e) for a, s, e, op, _ in rep.trace_events.tolist()
                 if a == n + 1 and op == int(Op.RECV))
    assert recv_a[0] > 200                      # it waited for the word it writes
    assert sends[1][0] >= recv_a[1] and sends[2][0] > sends[1][0]


def _stream_to_a_slow_reader(cfg, n):
    """Tile 0's control stream sends ``n`` one-word messages to tile 1 in a loop, as compiled
    transfers do; tile 1's core consumes each slowly, so they queue in the receive buffer."""
    lay = RegisterLayout.of(cfg)

    def loop(body):
        return assemble([instr(Op.ISET, dst=0, imm=0), instr(Op.ISET, dst=1, imm=n)] + body
                        + [instr(Op.IADD, dst=0, src1=0, imm=1),
                           instr(Op.BNE, src1=0, src2=1, imm=2), instr(Op.HLT)])
    cores = [ex.EMPTY] * (2 * cfg.tile.cores)
    cores[cfg.tile.cores] = loop([
        instr(Op.LOAD, dst=lay.gp, imm=0, vec=1, layer=0),
        instr(Op.ALU, fn=Fn.ADD, dst=lay.gp + 1, src1=lay.gp + 1, src2=lay.gp + 1, vec=7,
              layer=0)])
    send = loop([instr(Op.SEND, dst=0, imm=0, vec=1, peer=1, layer=0)])
    recv = loop([instr(Op.RECV, dst=0, imm=0, vec=1, peer=0, count=1, layer=0)])
    return Program(config=cfg, n_tiles=2, core_code=cores, tile_code=[send, recv],
                   mem_init=[(0, 0, np.arange(1), 0)], layers=[{"name": "l", "op": "Copy"}])


def test_a_huge_receive_buffer_allocates_only_as_many_slots_as_the_busiest_channel_sends(
        monkeypatch):
    """recv_buffer at its 2**20 maximum (read as unbounded) allocated 2**20 slots per
    channel up front: GBs for a model with hundreds of channels. Every channel gets slots
    up to the most messages any one channel sends in the run (a power-of-two multiple of
    RING_SLOTS), at most tile.recv_buffer, with times identical to a buffer just large
    enough."""
    import sys

    from simulator.timing import run_timing
    slots = []

    def spy(*args):
        status, end, info, tlen = run_timing(*args)
        slots.append(int(info[0]))
        return status, end, info, tlen
    monkeypatch.setattr(sys.modules["simulator.simulate"], "run_timing", spy)
    n = 40

    def run(recv_buffer):
        cfg = load_config("small", [f"tile.recv_buffer={recv_buffer}"])
        rep = simulate(_stream_to_a_slow_reader(cfg, n), values=False, trace=True)
        return rep.latency_cycles, rep.trace_events.tolist()

    huge, enough, small = run(1 << 20), run(n), run(4)
    assert huge == enough and small[0] > enough[0]   # a buffer that fills does cost time
    assert slots == [64, n, 4]       # n = 40 messages on the busiest channel: 16 doubled to 64
