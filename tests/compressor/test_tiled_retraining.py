"""Masked retraining of a sparse Linear tile by tile (compressor.masking._TiledLinear): the
same function and gradients as the dense masked GEMM, only the kept crossbars computed."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from compressor.masking import Frozen, install, kept_tiles, snap

ROWS, COLS = 64, 32     # crossbar: 64 inputs x 32 outputs; tiles are 32 x 64 in torch layout


def block_mask(n_out, n_in, keep, seed):
    """A mask keeping a random ``keep`` share of the tiles, with holes inside kept tiles."""
    rng = np.random.default_rng(seed)
    tiles = [(o, i) for o in range(0, n_out, COLS) for i in range(0, n_in, ROWS)]
    kept = rng.choice(len(tiles), max(1, int(keep * len(tiles))), replace=False)
    mask = np.zeros((n_out, n_in), bool)
    for k in kept:
        o, i = tiles[k]
        mask[o:o + COLS, i:i + ROWS] = rng.random(mask[o:o + COLS, i:i + ROWS].shape) < 0.8
    return mask


def twins(frozen_kwargs, n_out=300, n_in=520, keep=0.2, seed=0, bias=True):
    """The same Linear installed dense and tiled (edge tiles partial: 300 = 9*32 + 12)."""
    torch.manual_seed(seed)
    dense = nn.Linear(n_in, n_out, bias=bias)
    tiled = copy.deepcopy(dense)
    f = Frozen(block_mask(n_out, n_in, keep, seed), **frozen_kwargs)
    install(dense, {"": f})
    install(tiled, {"": f}, (ROWS, COLS))
    return dense, tiled, f


@pytest.mark.parametrize("kwargs", [dict(scale=0.02, qmin=-3, qmax=3), dict(scale=None)],
                         ids=["quantized", "mask-only"])
@pytest.mark.parametrize("bias", [True, False])
def test_tiled_linear_equals_the_dense_masked_linear_with_its_gradients(kwargs, bias):
    dense, tiled, f = twins(kwargs, bias=bias)
    assert "forward" in tiled.__dict__ and "forward" not in dense.__dict__
    x = torch.randn(7, 4, 520, generator=torch.Generator().manual_seed(1))   # 3-D input too
    outs, grads = [], []
    for m in (dense, tiled):
        xi = x.clone().requires_grad_()
        y = m(xi)
        w = m.parametrizations.weight.original
        params = [xi, w] + ([m.bias] if bias else [])
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, 300)).square().sum(), params))
        outs.append(y.detach())
    assert outs[1].shape == (7, 4, 300)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    gw = grads[1][1]
    assert (gw[~torch.as_tensor(f.mask)] == 0).all()    # straight through, masked
    with torch.no_grad():                               # evaluation mode takes the same path
        torch.testing.assert_close(tiled(x), outs[0], rtol=1e-5, atol=1e-5)


def test_snap_leaves_the_class_forward_and_the_same_weights():
    dense, tiled, _ = twins(dict(scale=0.02, qmin=-3, qmax=3))
    copied = copy.deepcopy(tiled)       # a deep copy keeps its own tiled forward
    assert copied.forward.__self__ is copied
    q_dense, q_tiled = snap(dense, {"": dense_f(dense)}), snap(tiled, {"": dense_f(tiled)})
    assert "forward" not in tiled.__dict__ and not hasattr(tiled, "parametrizations")
    assert np.array_equal(q_dense[""], q_tiled[""])
    assert torch.equal(dense.weight, tiled.weight)


def dense_f(m):
    q = m.parametrizations.weight[0]
    return Frozen(q.mask.numpy().astype(bool), q.scale, q.qmin, q.qmax)


@pytest.mark.parametrize("keep, n_out, n_in, tiled", [
    (0.2, 300, 520, True),
    (0.9, 300, 520, False),     # most tiles kept: one dense GEMM
    (0.2, 64, 128, False),      # too small to gain
])
def test_only_sparse_large_linear_layers_are_tiled(keep, n_out, n_in, tiled):
    _, m, _ = twins(dict(scale=0.02, qmin=-3, qmax=3), n_out, n_in, keep)
    assert ("forward" in m.__dict__) == tiled


def test_a_linear_subclass_keeps_its_own_forward():
    class Squashed(nn.Linear):
        def forward(self, x):
            return torch.tanh(super().forward(x))
    m = Squashed(520, 300)
    install(m, {"": Frozen(block_mask(300, 520, 0.2, 0), 0.02, -3, 3)}, (ROWS, COLS))
    assert "forward" not in m.__dict__


def test_the_tiled_layer_moves_with_the_module_and_refuses_a_second_derivative():
    dense, tiled, _ = twins(dict(scale=None))
    dense, tiled = dense.double(), tiled.double()       # the tile masks follow the buffers
    x = torch.randn(5, 520, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(tiled(x), dense(x))
    (gx,) = torch.autograd.grad(tiled(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward"):
        gx.sum().backward()


def test_kept_tiles_are_the_crossbars_holding_a_weight():
    mask = np.zeros((70, 130), bool)
    mask[0, 0] = mask[69, 129] = mask[40, 70] = True
    assert kept_tiles(mask, ROWS, COLS) == [(slice(0, 32), slice(0, 64)),
                                            (slice(32, 64), slice(64, 128)),
                                            (slice(64, 70), slice(128, 130))]


def test_a_block_pruned_run_retrains_tiled_and_ends_masked(monkeypatch):
    """Through compress(): a wide Linear pruned to whole blocks retrains tile by tile and
    ends exactly on its mask and levels."""
    from compressor import compress, parse_recipe
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    y = (x[:, :10].argmax(1)).astype(np.int64)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    rec = parse_recipe({"name": "wide", "geometry": {"rows": 128, "cols": 128, "weight_bits": 3},
                        "seed": 0, "batch_size": 64,
                        "admm": {"rounds": 1, "epochs_per_round": 1},
                        "retrain": {"epochs": 2},
                        "layers": [{"match": "0", "sparsity": {"structure": "blocks",
                                                               "keep": 0.25},
                                    "quant": {"bits": 3}}]})
    from compressor import masking
    seen, real = [], masking._TiledLinear.forward

    def spy(ctx, x, w, bias, mask, tiles, *rest):
        seen.append(len(tiles))
        return real(ctx, x, w, bias, mask, tiles, *rest)
    monkeypatch.setattr(masking._TiledLinear, "forward", staticmethod(spy))
    res = compress(model, rec, (x, y), (x, y), progress=False)
    assert seen and set(seen) == {4}        # 4 of the 16 blocks, every retraining step
    w = model[0].weight.detach().numpy()
    layer = res.layers["0"]
    assert np.array_equal(w != 0, layer.levels != 0) and not w[~layer.mask].any()
    assert np.array_equal(w, layer.levels.astype(np.float32) * np.float32(layer.scale))


def test_a_tiled_run_resumed_mid_retraining_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    from compressor import compress, parse_recipe, pipeline
    rng = np.random.default_rng(1)
    x = rng.standard_normal((192, 512)).astype(np.float32)
    y = (x[:, :10].argmax(1)).astype(np.int64)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    rec = parse_recipe({"name": "wide", "geometry": {"rows": 128, "cols": 128, "weight_bits": 3},
                        "batch_size": 64, "admm": {"rounds": 1}, "retrain": {"epochs": 3},
                        "layers": [{"match": "0", "sparsity": {"structure": "blocks",
                                                               "keep": 0.25},
                                    "quant": {"bits": 3}}]})
    ref = compress(model(), rec, (x, y), (x, y), progress=False)
    original = pipeline._Run._record

    def crashing(self, stage, opt, **info):
        original(self, stage, opt, **info)
        if stage == "retrain" and self.step == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(pipeline._Run, "_record", crashing)
    with pytest.raises(KeyboardInterrupt):
        compress(model(), rec, (x, y), (x, y), checkpoint=tmp_path / "c.ckpt", progress=False)
    monkeypatch.setattr(pipeline._Run, "_record", original)
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    older = dict(ckpt, retrain_numerics=1)  # as written before retraining was tiled
    torch.save(older, tmp_path / "older.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the same numerics resume silently
        res = compress(model(), rec, (x, y), (x, y), checkpoint=tmp_path / "c.ckpt",
                       progress=False)
    assert res.history == ref.history
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    with pytest.warns(UserWarning, match="older.ckpt: retraining began with numerics 1"):
        compress(model(), rec, (x, y), (x, y), checkpoint=tmp_path / "older.ckpt",
                 progress=False)
