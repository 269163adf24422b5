"""Chained block pruning keeps the network connected: a kept block of the next layer reads
neurons the previous layer still computes, where its budget allows."""
import numpy as np
import torch
from torch import nn

from compressor import CrossbarGeometry, compress, parse_recipe
from compressor.connectivity import feeding_layers, live_outputs, project_layers
from compressor.constraints import Constraint, QuantSpec
from compressor.geometry import to_crossbar

GEOM = CrossbarGeometry(rows=16, cols=16, cell_bits=2, weight_bits=4)


def _chain():
    """16 -> 64 -> 64 -> 4 where per-layer block ranking disconnects: the first layer's
    largest column block is neurons 0..15, the second layer's largest row blocks read
    neurons 48..63."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 64),
                          nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        m[0].weight.mul_(0.01)[:16] += 1.0            # output neurons 0..15 dominate
        m[3].weight.mul_(0.01)[:, 48:] += 1.0         # inputs 48..63 dominate
    return m.eval()


BLOCKS = Constraint("blocks", 0.25, QuantSpec(bits=4))   # 1 of 4 blocks, 1 of 16


def _kept_rows(w):
    return (to_crossbar(w.detach().numpy()) != 0).any(axis=1)


def test_feeding_layers_follows_per_neuron_ops_only():
    m = _chain()
    assert feeding_layers(m, ["0", "3", "5"]) == {"3": "0", "5": "3"}
    assert feeding_layers(m, ["0", "5"]) == {}           # 3 is not constrained


def _alone_and_chained(m, layers, geom, producer):
    """``layers`` of ``m`` projected each on its own and with the producer -> consumer
    coupling, and the outputs the producer still computes when projected alone."""
    weights = {n: dict(m.named_modules())[n].weight.detach() for n in layers}
    alone = project_layers(layers, weights, geom, {})
    live = live_outputs(to_crossbar(alone[producer][0].numpy()), None)
    return alone, project_layers(layers, weights, geom, feeding_layers(m, layers)), live


def test_independent_projection_disconnects_and_chained_does_not():
    m = _chain()
    layers = {"0": BLOCKS, "3": Constraint("blocks", 1 / 16, QuantSpec(bits=4))}
    alone, chained, live = _alone_and_chained(m, layers, GEOM, "0")
    assert live[:16].all() and not live[16:].any()
    assert not (_kept_rows(alone["3"][0]) & live).any()      # reads dead neurons only
    np.testing.assert_array_equal(chained["0"][0], alone["0"][0])   # the producer is as before
    rows = _kept_rows(chained["3"][0])
    assert rows.any() and not (rows & ~live).any()            # the consumer reads live ones
    assert chained["3"][2].sum() == alone["3"][2].sum()        # the same budget


def test_connected_choice_changes_nothing_when_the_top_groups_are_live():
    m = _chain()
    with torch.no_grad():
        m[3].weight[:, 48:] -= 1.0
        m[3].weight[:, :16] += 1.0                              # now reads 0..15 anyway
    layers = {"0": BLOCKS, "3": Constraint("blocks", 1 / 16, QuantSpec(bits=4))}
    weights = {n: dict(m.named_modules())[n].weight.detach() for n in layers}
    a = project_layers(layers, weights, GEOM, {})
    b = project_layers(layers, weights, GEOM, feeding_layers(m, layers))
    for n in layers:
        np.testing.assert_array_equal(a[n][0], b[n][0])


def test_compress_keeps_the_chain_connected(digits):
    """End to end on 8x8 digits, both arms: with each layer ranked on its own, this model's
    hard projection keeps a block of layer 4 that reads only neurons layer 1 pruned (the
    logits would not depend on the image)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                              nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.mul_(0.01)[:16] += 0.2
        model[3].weight.mul_(0.01)[:, 48:] += 0.2
    recipe = parse_recipe({
        "name": "chain", "geometry": {"rows": 16, "cols": 16, "weight_bits": 4},
        "admm": {"rounds": 1, "lr": 1e-5}, "retrain": {"epochs": 1, "lr": 1e-4},
        "layers": [{"match": "1", "sparsity": {"structure": "blocks", "keep": 0.25},
                    "quant": {"bits": 4}},
                   {"match": "3", "sparsity": {"structure": "blocks", "keep": 0.0625},
                    "quant": {"bits": 4}}]})
    for method in ("admm", "magnitude"):
        res = compress(__import__("copy").deepcopy(model), recipe, *digits, method=method,
                       progress=False)
        live = live_outputs(to_crossbar(res.model[1].weight.detach().numpy()), None)
        rows = _kept_rows(res.model[3].weight)
        assert rows.any() and not (rows & ~live).any(), method
        with torch.no_grad():
            logits = res.model(torch.from_numpy(digits[1][0][:32])).numpy()
        assert np.ptp(logits, axis=0).max() > 0, method        # depends on the image


def test_producers_are_projected_first_whatever_the_rule_order():
    m = _chain()
    layers = {"3": Constraint("blocks", 1 / 16, QuantSpec(bits=4)), "0": BLOCKS}  # consumer first
    weights = {n: dict(m.named_modules())[n].weight.detach() for n in layers}
    out = project_layers(layers, weights, GEOM, feeding_layers(m, layers))
    assert list(out) == ["3", "0"]
    live = live_outputs(to_crossbar(out["0"][0].numpy()), None)
    rows = _kept_rows(out["3"][0])
    assert rows.any() and not (rows & ~live).any()


class _Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(self.b(h.flip(1)) + h)    # a reaches b through a permutation, c via add


def test_only_per_neuron_paths_couple_layers():
    assert feeding_layers(_Reshaped(), ["a", "b", "c"]) == {}


def _convnet():
    """conv a 1->16 (two column blocks of 8 channels) -> conv b 16->8 (1 x 1) -> flatten its
    8 x 4 x 4 map -> FC 4, on crossbars of 16 rows and 8 columns: a's channels 0..7
    dominate, b reads channels 8..15."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 4))
    with torch.no_grad():
        m[0].weight.mul_(0.01)[:8] += 1.0              # output channels 0..7 dominate
        m[2].weight.mul_(0.01)[:, 8:] += 1.0           # reads channels 8..15
    return m.eval()


CONV_GEOM = CrossbarGeometry(rows=16, cols=8, cell_bits=2, weight_bits=4)


def test_convolutions_couple_through_channelwise_ops():
    m = _convnet()
    assert feeding_layers(m, ["0", "2", "8"]) == {"2": "0", "8": "2"}


def test_a_convolution_keeps_reading_live_channels():
    """Conv a keeps one of its two column blocks (channels 0..7); alone, conv b's one kept
    row block is the one its weights favour, channels 8..15, which a no longer computes."""
    m = _convnet()
    layers = {"0": Constraint("blocks", 0.5, QuantSpec(bits=4)),
              "2": Constraint("rows", 0.5, QuantSpec(bits=4))}
    alone, chained, live = _alone_and_chained(m, layers, CONV_GEOM, "0")
    assert live[:8].all() and not live[8:].any()
    assert not (_kept_rows(alone["2"][0]) & live).any()          # reads dead channels only
    rows = _kept_rows(chained["2"][0])
    assert rows.any() and not (rows & ~live).any()
    assert chained["2"][2].sum() == alone["2"][2].sum()          # the same budget


def test_rows_of_channels_follow_the_consumers_row_order():
    from compressor.connectivity import rows_of_channels
    live = np.array([False, True, False])
    np.testing.assert_array_equal(rows_of_channels(live, (4, 3 * 2)),
                                  [False, False, True, True, False, False])      # (c, s)
    np.testing.assert_array_equal(rows_of_channels(live, (4, 6), view=(4, 3, 1, 2)),
                                  [False, True, False, False, True, False])      # (s, c)
    np.testing.assert_array_equal(rows_of_channels(live, (5, 3, 1, 2)),
                                  [False, True, False, False, True, False])      # (kx, c)
    np.testing.assert_array_equal(rows_of_channels(live, (5, 3)), live)          # Linear
    assert rows_of_channels(live, (6, 1, 3, 3)) is None      # grouped: rows are not channels
    assert rows_of_channels(live, (4, 7)) is None


def test_a_linear_after_a_flattened_map_reads_live_channels():
    """Conv b computes only channels 0 and 1; the FC's rows of the other channels are dead on
    every pixel. Its one kept row block (16 rows: one channel's pixels) is then a live one,
    though its weights favour channels 2..7."""
    m = _convnet()
    layers = {"2": Constraint(quant=QuantSpec(bits=4)),
              "8": Constraint("blocks", 1 / 8, QuantSpec(bits=4))}
    with torch.no_grad():
        m[2].weight.zero_()[:2] += 1.0
        m[8].weight.mul_(0.01)[:, 32:] += 1.0
    weights = {n: dict(m.named_modules())[n].weight.detach() for n in layers}
    alone = project_layers(layers, weights, CONV_GEOM, {})
    chained = project_layers(layers, weights, CONV_GEOM, feeding_layers(m, layers))
    fc_live = np.repeat(live_outputs(to_crossbar(chained["2"][0].numpy()), None), 16)
    assert fc_live[:32].all() and not fc_live[32:].any()
    assert not (_kept_rows(alone["8"][0]) & fc_live).any()
    rows = _kept_rows(chained["8"][0])
    assert rows.any() and not (rows & ~fc_live).any()


def test_all_live_producers_change_nothing():
    """Where a producer computes every output, its consumer's projection is bitwise the one
    without coupling (so the benchmark's cached runs, all of whose convolutions keep every
    channel, stay valid)."""
    m = _convnet()
    with torch.no_grad():
        m[0].weight.normal_()
    layers = {"0": Constraint("blocks", 1.0, QuantSpec(bits=4)),
              "2": Constraint("rows", 0.5, QuantSpec(bits=4)),
              "8": Constraint("blocks", 0.25, QuantSpec(bits=3))}
    weights = {n: dict(m.named_modules())[n].weight.detach() for n in layers}
    a = project_layers(layers, weights, CONV_GEOM, {})
    b = project_layers(layers, weights, CONV_GEOM, feeding_layers(m, layers))
    assert live_outputs(to_crossbar(b["0"][0].numpy()), None).all()
    for n in layers:
        np.testing.assert_array_equal(a[n][0], b[n][0])
        np.testing.assert_array_equal(a[n][2], b[n][2])


def test_a_convolution_feeds_a_linear_only_through_a_flatten_from_dimension_1():
    """Rows of a Linear are a convolution's channels only once its map is flattened; a
    Linear over the last dimension of a map (or after flatten(2)) reads pixels."""
    conv, fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(16, 3)

    class Net(nn.Module):
        def __init__(self, route):
            super().__init__()
            self.conv, self.fc, self.route = conv, fc, route

        def forward(self, x):
            return self.fc(self.route(torch.relu(self.conv(x))))
    for route, coupled in [(lambda x: x.flatten(1), True),
                           (lambda x: x.view(x.size(0), -1), True),
                           (lambda x: torch.reshape(x, (x.size(0), -1)), True),
                           (lambda x: x.view(-1, 16), False),    # no shapes: unknown
                           (lambda x: nn.functional.max_pool2d(x, 1).flatten(1), True),
                           (lambda x: x.flatten(2), False),        # (N, C, H*W): pixels
                           (lambda x: x, False)]:                  # over the last dimension
        assert feeding_layers(Net(route), ["conv", "fc"]) == (
            {"fc": "conv"} if coupled else {}), route


def test_no_coupling_where_rows_are_not_the_producers_outputs():
    """Padding a vector, pooling a 1-D map with a 2-D pool (across channels), a module called
    twice: none couples."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.relu(self.b(torch.relu(self.a(x)))))
    padded = nn.Sequential(nn.Linear(4, 4), nn.ConstantPad1d((0, 4), 0.0), nn.Linear(8, 2))
    pooled = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.MaxPool2d(3, 1, 1),
                           nn.Conv1d(4, 2, 1))
    assert feeding_layers(padded, ["0", "2"]) == {}
    assert feeding_layers(pooled, ["0", "2"]) == {}
    assert feeding_layers(Twice(), ["a", "b"]) == {}
    same = nn.Sequential(nn.Conv1d(1, 4, 3), nn.MaxPool1d(2), nn.Conv1d(4, 2, 1))
    assert feeding_layers(same, ["0", "2"]) == {"2": "0"}


def test_view_minus_one_couples_only_where_the_shapes_say_it_flattens_the_map():
    # LeNet's classic x.view(-1, C*H*W) is a flatten; x.view(-1, W) on a map makes rows of
    # one channel's pixels (a Linear over positions), which must not couple. fx has no
    # shapes, so feeding_layers takes them from one sample
    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv, self.fc, self.width = nn.Conv2d(1, 4, 3, padding=1), \
                nn.Linear(width, 3), width

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(-1, self.width))
    assert feeding_layers(Net(64), ["conv", "fc"], torch.zeros(1, 1, 4, 4)) == {"fc": "conv"}
    assert feeding_layers(Net(4), ["conv", "fc"], torch.zeros(1, 1, 4, 4)) == {}
    assert feeding_layers(Net(64), ["conv", "fc"]) == {}
    bn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                       nn.Flatten(), nn.Linear(64, 3))
    assert feeding_layers(bn, ["0", "4"], torch.zeros(1, 1, 4, 4)) == {"4": "0"}
    assert bn.training        # shapes taken in eval mode, the mode restored


def test_finding_the_chain_moves_no_statistics_and_draws_no_random_numbers():
    # traced in train mode, a functional batch_norm/dropout ran as in training during the
    # shapes pass: running statistics moved and the caller's generator advanced
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(64, 3)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        def forward(self, x):
            h = nn.functional.batch_norm(self.conv(x), self.mean, self.var,
                                         training=self.training)
            h = nn.functional.dropout(h, 0.5, training=self.training)
            return self.fc(h.view(-1, 64))
    net = Net()
    sample = torch.rand(1, 1, 4, 4)
    state = torch.get_rng_state()
    feeding_layers(net, ["conv", "fc"], sample)     # its shapes taken from one sample
    assert torch.equal(net.mean, torch.zeros(4)) and torch.equal(net.var, torch.ones(4))
    assert torch.equal(torch.get_rng_state(), state) and net.training
