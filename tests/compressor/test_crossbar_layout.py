"""TinyADC on a fully connected layer after Flatten of a C x H x W map (or a Conv1d's C x L)
is stated in the compiler's row order, (h, w, c): the crossbars the compressor constrains
are the ones the chip builds."""
import numpy as np
import pytest
import torch
from torch import nn

from compressor import compress, export_qdq, parse_recipe
from compressor.geometry import to_crossbar

GEOM = {"rows": 32, "cols": 16, "cell_bits": 2, "weight_bits": 3}
N = 16


def _convnet(kind):
    """A convolution's 8-channel map of 16 pixels, flattened into FC 128 -> 16 -> 10: conv2d
    on 8 x 8 digits pooled to 4 x 4, or conv1d on them as 64-pixel rows pooled to 16."""
    torch.manual_seed(0)
    conv = ([nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)] if kind == "conv2d"
            else [nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(4)])
    return nn.Sequential(*conv, nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module", params=["conv2d", "conv1d"])
def tinyadc_fc(request, digits, tmp_path_factory):
    shape = (1, 8, 8) if request.param == "conv2d" else (1, 64)
    data = [(x.reshape(len(x), *shape), y) for x, y in digits]
    rec = parse_recipe({"name": "flat", "geometry": GEOM, "pretrain": {"epochs": 2},
                        "admm": {"rounds": 1}, "retrain": {"epochs": 1},
                        "layers": [{"match": "4", "sparsity": {"structure": "tinyadc_packed",
                                                               "n": N},
                                    "quant": {"bits": 3}}]})
    res = compress(_convnet(request.param), rec, *data, progress=False)
    path = export_qdq(res, tmp_path_factory.mktemp("flat") / "m.onnx", input_shape=shape,
                      verify=data[1][0][:16], atol=1e-5)
    return res, path


def test_every_crossbar_the_compiler_builds_holds_at_most_n_per_bit_line(tinyadc_fc):
    """TinyADC's promise on the chip: each column of each crossbar of the layer holds at
    most ``n`` weights. (Compressed in torch's (c, h, w) order, a segment was spread over
    the compiler's 4 crossbars, and columns held up to 22.)"""
    from compiler import compile_model
    from simulator import load_config
    _, path = tinyadc_fc
    cfg = load_config("puma", ["xbar.rows=32", "xbar.cols=16", "weight_bits=3",
                               "xbar.mapping=differential", "adc.adaptive=true"])
    prog = compile_model(path, cfg)
    fc = [i for i, L in enumerate(prog.layers) if L["name"] == "/4/Gemm"]
    levels = prog.mvmu_levels[prog.mvmu_layer == fc[0]]      # (blocks, arrays, rows, cols)
    assert len(levels) == 4                                  # 128 rows of 32, one strip
    weights_per_column = (levels != 0).any(axis=1).sum(axis=1)   # either array holds it
    assert weights_per_column.max() <= N


def test_the_layer_is_read_in_the_chips_row_order(tinyadc_fc):
    """The promise is kept in (h, w, c) order, the export says so, and storage is counted on
    the same tiles."""
    import json

    import onnx

    from compressor.geometry import CrossbarGeometry, occupancy, to_crossbar
    from compressor.hardware import storage_bits
    res, path = tinyadc_fc
    layer = res.layers["4"]
    assert layer.view in ((16, 8, 4, 4), (16, 8, 16))
    q = layer.levels
    hwc = np.moveaxis(q.reshape(layer.view), 1, -1).reshape(16, -1).T   # rows (h, w, c)
    np.testing.assert_array_equal(to_crossbar(q, layer.view), hwc)
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}[
        "xbarsim.layer.4"])
    assert meta["crossbar_view"] == list(layer.view)
    geom = CrossbarGeometry(**GEOM)
    assert meta["max_nonzeros_per_segment"] == occupancy(hwc, geom)["max_nonzeros_per_segment"]
    stored = storage_bits(path, geom)["layers"][meta["initializer"]]["storage_bits"]
    tiles = geom.blocks(hwc != 0)
    real = tiles.shape[1] * tiles.shape[3]                      # 32 x 16 entries, no edge
    per_tile = np.minimum(real * 3, tiles.sum(axis=(1, 3)) * 3 + real)
    assert stored == tiles.shape[0] * tiles.shape[2] + 32 + int(per_tile.sum())


def _flatten_forms():
    """``(model, the Linear, its view)`` for the ways a map reaches a Linear, (1, 8, 8) in."""
    def conv():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.MaxPool2d(2))

    class Net(nn.Module):
        def __init__(self, route, heads=1):
            super().__init__()
            self.features, self.fc, self.route = conv(), nn.Linear(64, 10), route
            self.g = nn.Linear(64, 10) if heads == 2 else None

        def forward(self, x):
            y = self.route(self.features(x))
            return self.fc(y) if self.g is None else self.fc(y) + self.g(y)

    view = (10, 4, 4, 4)
    return [
        (Net(lambda x: nn.functional.relu(x.view(x.size(0), -1))), "fc", view),
        (Net(lambda x: torch.flatten(x, 1)), "fc", view),
        (Net(lambda x: torch.reshape(x, (x.shape[0], -1))), "fc", view),
        (Net(lambda x: x.flatten(1) * 2.0), "fc", view),
        (Net(lambda x: x.view(-1, 64)), "fc", view),              # LeNet's classic form
        (Net(lambda x: torch.flatten(x, 1, 3)), "fc", view),
        # an elementwise op read twice: the order is the data's, both heads take it
        (Net(lambda x: nn.functional.dropout(x.flatten(1), 0.1, False), heads=2), "fc", view),
        # after a permute the compiler stores the words as they are: torch's order holds
        (Net(lambda x: x.permute(0, 2, 3, 1).flatten(1)), "fc", None),
        (nn.Sequential(*conv(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)), "6", view),
        # ops outside any list that keep shape and order: the compiler lowers them in place,
        # so the map stays a map (found by review: no view, and TinyADC's bound broke)
        (Net(nn.Sequential(nn.PReLU(), nn.Flatten())), "fc", view),
        (Net(lambda x: torch.flatten(x * 0.5, 1)), "fc", view),
        (Net(lambda x: x.sigmoid().flatten(1)), "fc", view),
        (Net(lambda x: torch.flatten(nn.functional.hardtanh(x), 1)), "fc", view),
    ]


def _compiled_rows(model, monkeypatch, sample=None):
    """``{Gemm node: its weight's rows in the compiler's order}`` (logical input indices)."""
    import io
    import warnings

    import onnx

    import compiler.ops.gemm as gemm
    from compiler import compile_model
    seen, fc = {}, gemm._fc

    def spy(node, ctx, t_in, w_kn, *args, **kw):
        seen[node.name] = np.arange(len(w_kn)) if t_in.perm is None else np.asarray(t_in.perm)
        return fc(node, ctx, t_in, w_kn, *args, **kw)
    monkeypatch.setattr(gemm, "_fc", spy)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8) if sample is None
                                         else sample,), buf, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    compile_model(onnx.load_from_string(buf.getvalue()), "puma")
    return seen


@pytest.mark.parametrize("i", range(len(_flatten_forms())))
def test_the_view_gives_the_compilers_row_order(i, monkeypatch):
    """For each form, the crossbar rows the compressor constrains are the Gemm rows the
    compiler lays out; the shape pass moves no batch-norm statistics."""
    from compressor.layout import crossbar_views
    model, fc, view = _flatten_forms()[i]
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    views = crossbar_views(model, [fc], torch.randn(1, 1, 8, 8))
    assert views.get(fc) == view
    assert torch.equal(bn.running_mean, before) and model.training and bn.training
    rows = to_crossbar(np.arange(64)[None, :], None if view is None else (1, *view[1:]))[:, 0]
    chip = _compiled_rows(model, monkeypatch)
    assert chip and all(np.array_equal(r, rows) for r in chip.values())


def test_a_transposed_map_is_said_to_be_read_in_neither_order():
    """A transpose of a square map's H and W keeps its shape, not its order: the compiler
    keeps the words and records the permutation, so the chip's rows are neither torch's
    nor the channel-last view's. Said, not silently constrained in a wrong order."""
    from compressor.layout import crossbar_views

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(x).transpose(2, 3), 1))
    with pytest.warns(UserWarning, match=r"fc: its inputs pass a transpose \[0, 1, 3, 2\]"):
        assert crossbar_views(Net(), ["fc"], torch.zeros(1, 1, 4, 4)) == {}


def test_a_sequence_input_is_read_in_the_compilers_order(monkeypatch):
    """Flatten -> Linear on a (N, 4, 16) input: the compiler stores it channel-last."""
    from compressor.layout import crossbar_views
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    view = crossbar_views(model, ["1"], torch.zeros(1, 4, 16))["1"]
    rows = to_crossbar(np.arange(64)[None, :], (1, *view[1:]))[:, 0]
    chip = _compiled_rows(model, monkeypatch, torch.zeros(1, 4, 16))
    assert chip and all(np.array_equal(r, rows) for r in chip.values())


def test_no_view_where_both_orders_agree_or_nothing_is_known():
    from compressor.layout import crossbar_views
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    assert crossbar_views(pooled, ["3", "5"], torch.zeros(1, 1, 8, 8)) == {}   # 1 x 1 map
    assert crossbar_views(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ["1"],
                          torch.zeros(1, 1, 8, 8)) == {}     # an image of 1 channel
    # a 3-D input is a map to the compiler, stored channel-last ((L, C) words), so it
    # takes the view; it was read in torch's order and TinyADC's bound broke on the chip
    assert crossbar_views(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ["1"],
                          torch.zeros(1, 4, 16)) == {"1": (10, 4, 16)}
    model, fc, _ = _flatten_forms()[8]
    assert crossbar_views(model, [fc], None) == {}           # no sample: no shapes

    class Untraceable(nn.Module):
        def __init__(self, conv=True):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1) if conv else nn.Identity()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            if x.sum() > 0:      # control flow on data: torch.fx cannot trace it
                x = x * 2
            return self.fc(self.conv(x).flatten(1))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # no map to flatten: nothing to warn about
        assert crossbar_views(Untraceable(conv=False), ["fc"], torch.zeros(1, 4, 4, 4)) == {}
    with pytest.warns(UserWarning, match=r"torch.fx cannot trace Untraceable .*: fc "
                                         r"constrained in torch's input order"):
        assert crossbar_views(Untraceable(), ["fc"], torch.zeros(1, 4, 4, 4)) == {}


def test_a_checkpoint_projected_in_another_order_is_refused(digits, tmp_path):
    """A run with a view refuses a checkpoint projected without it (written before views),
    instead of resuming masks that hold the promise in torch's order."""
    from compressor import CompressionError
    rec = parse_recipe({"name": "flat", "geometry": GEOM, "pretrain": {"epochs": 1},
                        "admm": {"rounds": 1}, "retrain": {"epochs": 1},
                        "layers": [{"match": "4", "sparsity": {"structure": "tinyadc",
                                                               "n": N}}]})
    ck = tmp_path / "run.ckpt"
    compress(_convnet("conv2d"), rec, *digits, checkpoint=ck, progress=False)
    state = torch.load(ck, weights_only=True)
    assert state["views"] == {"4": [16, 8, 4, 4]} and state["feeds"] == {}
    del state["views"]
    torch.save(state, ck)
    with pytest.raises(CompressionError, match=r"projected with layer views none, this run "
                                               r"has \{'4': \(16, 8, 4, 4\)\}.*delete it"):
        compress(_convnet("conv2d"), rec, *digits, checkpoint=ck, progress=False)
    # coupled otherwise (say by another rule of compressor.connectivity): refused too
    state["views"], state["feeds"] = {"4": [16, 8, 4, 4]}, {"4": "0"}
    torch.save(state, ck)
    with pytest.raises(CompressionError, match=r"coupled as \{'4': '0'\}.*couples none"):
        compress(_convnet("conv2d"), rec, *digits, checkpoint=ck, progress=False)


def test_only_ordered_structures_take_the_view():
    """TinyADC's bound and crossbar-aligned row strips depend on which inputs share a
    crossbar on the chip; the other group structures cost the same crossbars in either order
    (the compiler packs the kept rows) and keep torch's channel grouping; quantization alone
    has no rows to order."""
    from compressor.constraints import Constraint, QuantSpec
    from compressor.layout import layer_views
    model, fc, _ = _flatten_forms()[8]
    x = torch.zeros(1, 1, 8, 8)
    for structure, amount, view in [("tinyadc", 4, (10, 4, 4, 4)),
                                    ("tinyadc_packed_signed", 4, (10, 4, 4, 4)),
                                    ("aligned_rows", 0.5, (10, 4, 4, 4)),
                                    ("blocks", 0.5, None), ("rows", 0.5, None),
                                    (None, None, None)]:
        c = Constraint(structure, amount, QuantSpec(bits=3))
        assert layer_views(model, {fc: c}, x).get(fc) == view, structure


@pytest.mark.parametrize("route,n", [
    (lambda x: nn.functional.adaptive_max_pool2d(x, (4, 4)), 64),
    (lambda x: nn.functional.pad(nn.functional.max_pool2d(x, 2), (1, 1, 1, 1)), 144),
    (nn.Sequential(nn.MaxPool2d(2), nn.ReflectionPad2d(1)), 144),
    (nn.Sequential(nn.MaxPool2d(2), nn.ReplicationPad2d(1)), 144),
], ids=["adaptive_max_pool2d", "F.pad", "ReflectionPad2d", "ReplicationPad2d"])
def test_paddings_and_adaptive_max_pool_keep_the_chips_order(route, n, monkeypatch):
    """These ops were on no list: the Linear after them got no view, was constrained in
    torch's order, and TinyADC's bound broke on the compiled crossbars (5 per column for
    n = 2), with no warning."""
    from compressor.layout import crossbar_views

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.route, self.fc = nn.Conv2d(1, 4, 3, padding=1), route, \
                nn.Linear(n, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.route(torch.relu(self.conv(x))), 1))
    model = Net()
    view = crossbar_views(model, ["fc"], torch.randn(1, 1, 8, 8)).get("fc")
    side = int((n // 4) ** 0.5)
    assert view == (10, 4, side, side)
    rows = to_crossbar(np.arange(n)[None, :], (1, *view[1:]))[:, 0]
    chip = _compiled_rows(model, monkeypatch)
    assert chip and all(np.array_equal(r, rows) for r in chip.values())


def test_an_unknown_map_op_before_the_flatten_is_said():
    from compressor.layout import crossbar_views

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 10)

        def forward(self, x):          # a strided slice: a shape change the walk cannot read
            return self.fc(torch.flatten(self.conv(x)[:, :, ::2, ::2], 1))
    with pytest.warns(UserWarning, match=r"fc: its inputs pass a getitem, an op whose output "
                                         r"order is not known here"):
        assert crossbar_views(Net(), ["fc"], torch.zeros(1, 1, 8, 8)) == {}
