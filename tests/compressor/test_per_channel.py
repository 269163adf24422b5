"""Per-channel scales (``quant: {per_channel: true}``): a scale per output channel (crossbar
column). Projections stay feasible, idempotent and exact for given scales; training,
learned scales, checkpoints, the QDQ export, storage and the chip all carry the vector."""
import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor import CompressionError, compress, export_qdq, parse_recipe
from compressor import projections as P
from compressor.export import max_difference
from compressor.geometry import CrossbarGeometry, level_range, to_crossbar
from compressor.masking import Frozen, _MaskedLevels, install, learned_scales, snap

from test_learned_scale import lsq_reference
from test_projections import JOINT, PER_SEG, dist, feasible, nearest_by_brute_force
from test_tiled_retraining import COLS, ROWS, block_mask


def column_levels_ok(w, scale, bits, mapping="differential"):
    """Every output channel of torch-layout ``w`` on its own scale's levels."""
    qmin, qmax = level_range(bits, mapping)
    q = to_crossbar(np.asarray(w, np.float64)) / np.asarray(scale)[None, :]
    return (np.allclose(q, np.rint(q), atol=1e-6) and q.min() >= qmin - 1e-6
            and q.max() <= qmax + 1e-6)


def spread(shape, seed):
    """Gaussian weights whose output channels differ in size by up to 30x."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)
    return w * np.exp(rng.uniform(-1.7, 1.7, size=(shape[0],) + (1,) * (len(shape) - 1)))


@pytest.mark.parametrize("shape,bits,mapping,pow2", list(itertools.product(
    [(9, 20), (6, 3, 3, 3)], (2, 3, 5), ("differential", "offset"), (False, True))))
def test_levels_per_channel_feasible_idempotent_and_nearer_than_one_scale(shape, bits, mapping,
                                                                         pow2):
    w = spread(shape, bits)
    p, scale, _ = P.project_matrix(to_crossbar(w), None, None, None,
                                   (bits, mapping, None, pow2, True))
    assert scale.shape == (shape[0],) and np.array_equal(scale.astype(np.float32), scale)
    if pow2:
        assert np.array_equal(2.0 ** np.round(np.log2(scale)), scale)
    pw = P.project_levels(w, bits, mapping, pow2=pow2, per_channel=True)
    assert column_levels_ok(pw, scale, bits, mapping)
    assert np.array_equal(P.project_levels(pw, bits, mapping, pow2=pow2, per_channel=True), pw)
    one = P.project_levels(w, bits, mapping, pow2=pow2)
    assert dist(pw, w) < dist(one, w)
    # each channel no farther than its own single-scale search (pow2: exactly as near)
    for c in range(shape[0]):
        alone = P.project_levels(w[c], bits, mapping, pow2=pow2)
        if pow2:
            assert dist(pw[c], w[c]) == pytest.approx(dist(alone, w[c]), rel=1e-12, abs=1e-15)
        else:
            assert dist(pw[c], w[c]) <= dist(alone, w[c]) * (1 + 2e-3) + 1e-15


@pytest.mark.parametrize("case,structure,bits",
                         list(itertools.product(JOINT, P.STRUCTURES, (2, 3))))
def test_joint_with_given_channel_scales_is_nearest_by_brute_force(case, structure, bits):
    shape, xbar = case
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = 1 if structure in PER_SEG else 0.5
    w = np.random.default_rng(bits).normal(size=shape)
    m = to_crossbar(w)
    scale = np.float32(np.linspace(0.3, 0.8, m.shape[1])).astype(np.float64)  # per column
    best = nearest_by_brute_force(m, g, structure, amount, bits, scale)
    p = P.project_sparse_quantized(w, g, structure, amount, bits,
                                   scale=scale, per_channel=True)
    assert feasible(to_crossbar(p), g, structure, amount)
    assert column_levels_ok(p, scale, bits)
    assert dist(p, w) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("shape,xbar,structure", list(itertools.product(
    [(7, 4), (6, 2, 3, 3)], [(2, 3), (4, 4), (5, 2)], P.STRUCTURES + P.PACKED)))
def test_joint_free_channel_scales_feasible_idempotent_and_no_worse_than_one(shape, xbar,
                                                                            structure):
    g = CrossbarGeometry(rows=xbar[0], cols=xbar[1])
    amount = 2 if structure in P.PER_SEGMENT else 0.4
    w = spread(shape, 1)
    for pow2 in (False, True):
        p, s, _ = P.project_matrix(to_crossbar(w), g, structure, amount,
                                   (4, "differential", None, pow2, True))
        assert s.shape == (shape[0],)
        p = P.project_sparse_quantized(w, g, structure, amount, 4, pow2=pow2, per_channel=True)
        if structure not in P.PACKED:
            assert feasible(to_crossbar(p), g, structure, amount)
        assert column_levels_ok(p, s, 4)
        again = P.project_sparse_quantized(p, g, structure, amount, 4, pow2=pow2,
                                           per_channel=True)
        assert np.array_equal(again, p)
        one = P.project_sparse_quantized(w, g, structure, amount, 4, pow2=pow2)
        # per segment or packed, the columns are independent: each gets its best
        # candidate, and one shared scale is a candidate of none, so compare loosely;
        # otherwise one shared scale is among the choices: never closer
        slack = 1.01 if structure in PER_SEG or structure in P.PACKED else 1 + 1e-12
        assert dist(p, w) <= dist(one, w) * slack


def test_given_scales_of_the_wrong_shape_or_sign_are_refused():
    w = np.ones((3, 4))
    with pytest.raises(CompressionError, match=r"per_channel needs one per output channel \(3\)"):
        P.project_levels(w, 4, scale=np.ones(4), per_channel=True)
    with pytest.raises(CompressionError, match="one number expected"):
        P.project_levels(w, 4, scale=np.ones(3))
    with pytest.raises(CompressionError, match="finite numbers > 0"):
        P.project_levels(w, 4, scale=np.array([1.0, -1.0, 1.0]), per_channel=True)
    with pytest.raises(CompressionError, match="power of two"):
        P.project_levels(w, 4, scale=np.array([1.0, 0.3, 1.0]), pow2=True, per_channel=True)
    # one number serves every channel
    a = P.project_levels(w * 0.3, 4, scale=0.25, per_channel=True)
    assert np.array_equal(a, P.project_levels(w * 0.3, 4, scale=0.25))


@pytest.mark.parametrize("dtype, size, pow2", [(torch.float32, 1e-43, False),
                                               (torch.float64, 1e-50, True),
                                               (torch.float64, 1e-50, False)])
def test_a_channel_of_weights_at_float32s_limit_gets_a_usable_scale(dtype, size, pow2):
    from compressor.constraints import Constraint, QuantSpec
    torch.manual_seed(0)
    lin = nn.Linear(16, 4).to(dtype)
    with torch.no_grad():
        lin.weight[3] = torch.tensor([size] * 4 + [0.0] * 12, dtype=dtype)
    c = Constraint(quant=QuantSpec(bits=8, pow2=pow2, per_channel=True))
    p, s, keep = c.project(lin.weight, CrossbarGeometry())
    assert np.all(s.astype(np.float32) > 0) and np.all(np.isfinite(s.astype(np.float32)))
    install(lin, {"": Frozen(keep, s, -127, 127)})
    assert torch.isfinite(lin(torch.ones(2, 16, dtype=dtype))).all()


def test_group_structures_are_never_farther_than_one_scale():
    g = CrossbarGeometry(rows=3, cols=2)
    for seed, structure in itertools.product(range(40), ("columns", "aligned_cols", "blocks")):
        w = spread((6, 7), seed)
        one = P.project_sparse_quantized(w, g, structure, 0.5, 3)
        many = P.project_sparse_quantized(w, g, structure, 0.5, 3, per_channel=True)
        assert dist(many, w) <= dist(one, w) * (1 + 1e-12), (seed, structure)


def test_the_fold_refuses_channel_scales_in_one_line(digits, mlp):
    from compressor import fold_pow2_scales
    res = compress(mlp(), mlp_recipe(), *digits, progress=False)
    with pytest.raises(CompressionError, match="'1' has a scale per output channel.*pow2: true"):
        fold_pow2_scales(res)


def test_an_all_zero_channel_keeps_scale_one_and_stays_zero():
    w = spread((4, 10), 0)
    w[2] = 0.0
    p, s, _ = P.project_matrix(to_crossbar(w), None, None, None, (3, "differential", None,
                                                                  False, True))
    assert s[2] == 1.0 and not p[:, 2].any()


# -- recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("quant, match", [
    ({"bits": 3, "per_channel": "yes"}, "per_channel='yes': must be true or false"),
    ({"bits": 3, "per_channel": True, "pow2": "fold"}, "per_channel with pow2: fold"),
    ({"bits": 3, "per_channel": True, "scale": 0.5}, "per_channel searches a scale"),
])
def test_a_bad_per_channel_quant_is_refused(quant, match):
    with pytest.raises(CompressionError, match=rf"recipe\.layers\[0\]\.quant.*{match}"):
        parse_recipe({"layers": [{"match": "1", "quant": quant}]})


def test_off_leaves_the_fingerprint_as_before():
    off = parse_recipe({"layers": [{"match": "1", "quant": {"bits": 3}}]})
    on = parse_recipe({"layers": [{"match": "1", "quant": {"bits": 3, "per_channel": True}}]})
    assert "per_channel" not in off.fingerprint() and "per_channel" in on.fingerprint()
    assert parse_recipe(on.to_dict()) == on


# -- masked retraining ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 30), (6, 3, 3, 3)], ids=["linear", "conv"])
@pytest.mark.parametrize("signed", [False, True])
def test_the_channel_scales_gradient_is_lsqs(shape, signed):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * 0.1
    mask = (torch.rand(shape, generator=g) < 0.7).float()
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0) if signed else None
    up = torch.randn(shape, generator=g)
    base = torch.linspace(0.02, 0.05, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    grads = []
    for f in (lambda s: _MaskedLevels.apply(w, mask, s, -3, 3, sign),
              lambda s: lsq_reference(w, mask, s, -3, 3, sign)):
        s = base.clone().requires_grad_(True)
        out = f(s)
        grads.append((out.detach(), torch.autograd.grad((out * up).sum(), s)[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert grads[0][1].shape == base.shape and (grads[0][1] != 0).sum() > shape[0] // 2


@pytest.mark.parametrize("learn", [False, True])
def test_tiled_and_dense_layers_agree_with_channel_scales(learn):
    torch.manual_seed(0)
    n_out = 3 * COLS + 1
    dense = nn.Linear(1040, n_out)
    tiled = nn.Linear(1040, n_out)
    tiled.load_state_dict(dense.state_dict())
    mask = block_mask(n_out, 1040, 0.2, 0)
    mask[-1, :ROWS] = True
    f = Frozen(mask, np.float32(np.linspace(0.01, 0.03, n_out)).astype(np.float64), -3, 3)
    names = frozenset({""}) if learn else frozenset()
    install(dense, {"": f}, learn_scale=names)
    install(tiled, {"": f}, (ROWS, COLS), names)
    assert "forward" in tiled.__dict__
    x = torch.randn(7, 1040, generator=torch.Generator().manual_seed(1))
    grads = []
    for m in (dense, tiled):
        q = m.parametrizations.weight[0]
        if learn:
            with torch.no_grad():
                q.log_gain.copy_(torch.linspace(-0.3, 0.3, n_out).reshape(-1, 1))
        y = m(x)
        params = [m.parametrizations.weight.original, m.bias] + ([q.log_gain] if learn else [])
        grads.append((y.detach(), torch.autograd.grad(
            (y * torch.linspace(-1, 1, n_out)).square().sum(), params)))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    if learn:   # snapped weights: the learned channel scales' levels, what the forward used
        with torch.no_grad():
            trained = tiled.weight.clone()
        frozen = learned_scales(tiled, {"": f})
        s = frozen[""].scale
        assert s.shape == (n_out,) and np.array_equal(s.astype(np.float32), s)
        q = snap(tiled, frozen)[""]
        assert torch.equal(tiled.weight, trained)
        assert np.array_equal(tiled.weight.detach().numpy(),
                              q.astype(np.float32) * s.astype(np.float32)[:, None])


SCHEDULE = {"pretrain": {"epochs": 3, "lr": 5e-3}, "admm": {"rounds": 2},
            "retrain": {"epochs": 3, "lr": 5e-3, "keep": "best"}}


def mlp_recipe(**quant):
    return parse_recipe({"name": "pc", "geometry": {"rows": 16, "cols": 8, "weight_bits": 4},
                         **SCHEDULE,
                         "layers": [{"match": ["1", "3"],
                                     "sparsity": {"structure": "tinyadc", "n": 6},
                                     "quant": {"bits": 4, "per_channel": True, **quant}}]})


def test_a_run_ends_on_channel_levels_and_resumes_bitwise(digits, mlp, tmp_path, resumed):
    ref = compress(mlp(), mlp_recipe(), *digits, progress=False)
    for n, layer in ref.layers.items():
        w = dict(ref.model.named_modules())[n].weight.detach().numpy()
        assert layer.scale.shape == (w.shape[0],)
        assert np.array_equal(w, layer.levels.astype(np.float32)
                              * layer.scale.astype(np.float32)[:, None])
        assert len(set(layer.scale.tolist())) > 1      # the channels' scales differ
    assert ref.accuracy["final"] > 0.5
    res = resumed(lambda: compress(mlp(), mlp_recipe(), *digits,
                                   checkpoint=tmp_path / "c.ckpt", progress=False), "retrain", 2)
    assert res.history == ref.history
    for n in ref.layers:
        assert np.array_equal(res.layers[n].scale, ref.layers[n].scale)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_pow2_channel_scales_stay_powers_of_two_through_a_run(digits, mlp):
    res = compress(mlp(), mlp_recipe(pow2=True), *digits, progress=False)
    for layer in res.layers.values():
        assert np.array_equal(2.0 ** np.round(np.log2(layer.scale)), layer.scale)


# -- export, storage and the chip ----------------------------------------------------------

GEOM = {"rows": 16, "cols": 16, "cell_bits": 2, "weight_bits": 8, "mapping": "differential"}
MACHINE = ("puma", ["xbar.rows=16", "xbar.cols=16", "weight_bits=8", "xbar.mapping=differential"])


@pytest.fixture(scope="module")
def lenet_tiny(tmp_path_factory):
    """LeNet-5 on digits, TinyADC n=2 with a scale per output channel on every layer."""
    from models import build
    from models.data import load_splits
    (xtr, ytr), (xte, yte) = load_splits("digits", limit=300)
    recipe = parse_recipe({
        "name": "tiny_pc", "geometry": GEOM,
        "admm": {"rounds": 1}, "retrain": {"epochs": 1}, "pretrain": {"epochs": 2},
        "layers": [{"match": ["features.3", "classifier.1", "classifier.3"],
                    "sparsity": {"structure": "tinyadc", "n": 2},
                    "quant": {"bits": 8, "per_channel": True}},
                   {"match": ["features.0", "classifier.5"],
                    "quant": {"bits": 8, "per_channel": True}}]})
    res = compress(build("lenet5", seed=0), recipe, (xtr, ytr), (xte, yte), progress=False)
    path = export_qdq(res, tmp_path_factory.mktemp("pc") / "tiny_pc.onnx", verify=xte[:16],
                      atol=1e-5)
    return res, path, (xtr, xte)


def test_export_writes_per_axis_dequantize_that_onnxruntime_runs(lenet_tiny):
    res, path, (_, xte) = lenet_tiny
    assert max_difference(path, res.model, xte[:64]) < 1e-5
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    props = {p.key: p.value for p in proto.metadata_props}
    dq = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    for name, layer in res.layers.items():
        node = dq[f"{name}.weight"]
        assert {a.name: a.i for a in node.attribute} == {"axis": 0}
        s = inits[f"{name}.weight_scale"]
        assert s.shape == layer.scale.shape and np.array_equal(s, layer.scale.astype(np.float32))
        assert inits[f"{name}.weight_zero_point"].shape == s.shape
        meta = json.loads(props[f"xbarsim.layer.{name}"])
        assert meta["per_channel"] is True and meta["scale"] == layer.scale.tolist()


def test_storage_counts_a_scale_per_channel(lenet_tiny):
    from compressor.hardware import storage_bits
    res, path, _ = lenet_tiny
    layers = storage_bits(path, CrossbarGeometry(**GEOM))["layers"]
    for name, layer in res.layers.items():
        m = to_crossbar(layer.levels)
        g = CrossbarGeometry(**GEOM)
        nz = g.blocks(m != 0).sum(axis=(1, 3))
        real = g.blocks(np.ones(m.shape, bool)).sum(axis=(1, 3))
        levels = int(np.minimum(real * 8, nz * 8 + real)[nz > 0].sum())
        assert layers[f"{name}.weight"]["storage_bits"] == nz.size + 32 * m.shape[1] + levels


def test_the_chip_maps_channel_scales_and_tinyadc_stays_lossless(lenet_tiny):
    from compiler.frontend import frontend, load_model
    from compressor.hardware import adc_lossless_check, evaluate_hardware
    from models.data import load_splits
    res, path, (xtr, xte) = lenet_tiny
    graph = frontend(load_model(path))
    for name, layer in res.layers.items():    # the compiler maps these integers and scales
        q, s, axis = graph.qweights[f"{name}.weight"]
        assert np.array_equal(q, layer.levels) and axis == 0
        assert np.array_equal(s, layer.scale.astype(np.float32))
    check = adc_lossless_check(path, MACHINE, xte[:16], calibration=xtr[:32])
    assert check["equal"] and check["max_abs_diff"] == 0
    assert min(check["adc_bits_hist"]) <= 3
    (_, _), (_, yte) = load_splits("digits", limit=300)
    r = evaluate_hardware(path, MACHINE, xte[:24], yte[:24], calibration=xtr[:32])
    assert r["agreement"] >= 0.9      # the chip agrees with onnxruntime
