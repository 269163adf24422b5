"""The ImageNet-scale graphs of the ONNX model zoo shipped inside the onnx package
(``backend/test/data/light``: real topologies, weights made by ConstantOfShape) compile on
the puma preset and their programs run; the smaller ones also simulate bit-exactly against
the integer reference. VGG-19 needs a bigger node than the preset's 138 tiles: the compiler
names the smallest, and that one fits. ResNet-50's speed and memory goals are measured by
``benchmarks/zoo_compile.py``, not asserted here: wall-clock limits fail on a loaded machine."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import ModelTooBigError, compile_model
from compiler.codegen import generate
from compiler.frontend import frontend, load_model
from compiler.lower import lower
from compiler.partition import partition
from compiler.pipeline import mapping_summary
from compiler.place import place
from compiler.quantize import calibrate
from compiler.reference import run_integer_reference
from simulator import load_config, simulate

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CFG = load_config("puma", ["adc.bits=none"])

# model -> (ops its layers must include, simulate values bit-exactly too)
MODELS = {
    "bvlc_alexnet": ({"LRN", "MaxPool", "Gemm", "Softmax"}, True),
    "densenet121": ({"Concat", "AveragePool", "BatchNormalization"}, False),
    "inception_v1": ({"LRN", "Concat", "AveragePool"}, True),
    "inception_v2": ({"Concat", "AveragePool", "MaxPool"}, False),
    "resnet50": ({"Sum", "AveragePool", "Softmax"}, False),
    "shufflenet": ({"ChannelShuffle", "Concat", "AveragePool"}, True),
    "squeezenet": ({"Concat", "GlobalAveragePool", "Softmax"}, True),
    "zfnet512": ({"LRN", "Gemm"}, False),
}


def zoo_model(name):
    path = ZOO / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx package")
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    x_name = next(i.name for i in m.graph.input if i.name not in inits)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return path, {x_name: x}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_graph_compiles_and_runs(name):
    ops, check_values = MODELS[name]
    path, feeds = zoo_model(name)
    prog, lp, _ = compile_model(path, CFG, calibration=feeds, return_ir=True)
    assert ops <= {L.op for L in lp.layers}
    assert prog.mapping["mvmus"] > 0 and prog.n_tiles <= CFG.node.tiles
    rep = simulate(prog, values=False)
    assert rep.latency_cycles > 0 and rep.mvm_ops > 0
    if check_values:
        out = simulate(prog, feeds).outputs
        ref = run_integer_reference(lp, feeds)
        for o in lp.outputs:
            np.testing.assert_array_equal(out[o + ":int"], ref[o + ":int"])


@pytest.mark.slow
def test_shufflenet_channel_shuffles_move_no_data():
    """Every shuffle feeds a depthwise Conv, so all are aliases (weight rows permuted)."""
    path, feeds = zoo_model("shufflenet")
    _, lp, _ = compile_model(path, CFG, calibration=feeds, return_ir=True)
    shuffles = [L for L in lp.layers if L.op == "ChannelShuffle"]
    assert len(shuffles) == 16 and all(L.kind == "alias" for L in shuffles)


@pytest.mark.slow
def test_vgg19_names_the_smallest_node_it_fits():
    path, feeds = zoo_model("vgg19")
    g = frontend(load_model(path))
    absmax, _ = calibrate(g, feeds)
    lp = lower(g, absmax, CFG)
    strips = partition(lp, CFG)
    with pytest.raises(ModelTooBigError, match="node.tiles=") as e:
        place(lp, strips, CFG)
    n = e.value.tiles_needed
    assert n > CFG.node.tiles
    with pytest.raises(ModelTooBigError):
        place(lp, strips, load_config("puma", ["adc.bits=none", f"node.tiles={n - 1}"]))
    cfg = load_config("puma", ["adc.bits=none", f"node.tiles={n}"])
    pl = place(lp, strips, cfg)
    prog = generate(lp, pl, cfg, mapping_summary(lp, strips, pl, cfg))
    assert simulate(prog, values=False).latency_cycles > 0
