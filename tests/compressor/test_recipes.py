"""Recipes: every shipped one resolves on its zoo model; bad ones fail before training with
one line naming the field, the value and what is allowed."""
import copy

import pytest

from compressor import CompressionError, load_recipe, parse_recipe, shipped_recipes
from compressor.recipes import COMPRESSIBLE, RECIPE_DIR

torch = pytest.importorskip("torch")
models = pytest.importorskip("models")

# Which zoo model each shipped recipe is written for.
TARGETS = {"lenet5_block": ["lenet5"], "lenet5_tinyadc": ["lenet5"],
           "vgg_block_quant": ["vgg8", "vgg16"], "mlp_aligned_pow2": ["mlp", "mlp784", "puma_mlp"],
           "resnet18_columns": ["resnet18"]}

GOOD = {
    "name": "t",
    "geometry": {"rows": 16, "cols": 8, "weight_bits": 8},
    "layers": [{"match": "0", "sparsity": {"structure": "blocks", "keep": 0.5},
                "quant": {"bits": 4}},
               {"match": "2", "sparsity": {"structure": "tinyadc", "n": 4}}],
}


def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))


def with_change(path, value):
    d = copy.deepcopy(GOOD)
    *head, last = path
    node = d
    for k in head:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


def test_every_shipped_recipe_is_listed_and_resolves_on_its_models():
    assert set(shipped_recipes()) == set(TARGETS)
    for name, zoo_names in TARGETS.items():
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description
        for zoo in zoo_names:
            model = models.build(zoo)
            layers = recipe.resolve(model)
            # every weight layer is constrained: none is left to the compiler's own 8 bits
            assert set(layers) == {n for n, m in model.named_modules()
                                   if type(m).__name__ in COMPRESSIBLE}, (name, zoo)


def test_good_recipe_round_trips_and_first_rule_wins():
    r = parse_recipe(GOOD)
    assert parse_recipe(r.to_dict()) == r
    fixed = parse_recipe(with_change(("layers", 0, "quant", "scale"), 0.25))
    assert parse_recipe(fixed.to_dict()) == fixed
    layers = r.resolve(tiny_model())
    assert layers["0"].structure == "blocks" and layers["0"].quant.bits == 4
    assert layers["2"].amount == 4
    r2 = parse_recipe({**GOOD, "layers": [{"match": "0"}, {"match": "*", "quant": {}}]})
    layers = r2.resolve(tiny_model())
    assert list(layers) == ["2"] and layers["2"].quant.bits == 8  # "0" left dense
    # a rule every layer of which an earlier rule took never applies: refused, not ignored
    dead = parse_recipe({**GOOD, "layers": [{"match": "*", "quant": {}},
                                            {"match": "0", "quant": {"bits": 4}}]})
    with pytest.raises(CompressionError, match=r"recipe.layers\[1\].match='0': every layer it "
                                               r"matches \(0\) is taken by recipe.layers\[0\]"):
        dead.resolve(tiny_model())
    assert r.with_epochs(3).admm.epochs_per_round == 3 and r.with_epochs(3).retrain.epochs == 3
    # --epochs shortens the stages that run; it does not start one the recipe switched off
    off = parse_recipe({**GOOD, "retrain": {"epochs": 0}})
    assert off.with_epochs(3).retrain.epochs == 0
    assert parse_recipe({**GOOD, "name": 2024}).name == "2024"


def test_ramp_rounds_round_trips_and_its_default_keeps_old_fingerprints():
    """Checkpoints store the fingerprint; one written before ``admm.ramp_rounds`` existed
    has no such key, and a recipe at the default must still match it."""
    plain = parse_recipe(GOOD)
    assert "ramp_rounds" not in plain.fingerprint()
    ramped = parse_recipe(with_change(("admm",), {"rounds": 3, "ramp_rounds": 2}))
    assert ramped.admm.ramp_rounds == 2 and '"ramp_rounds": 2' in ramped.fingerprint()
    for r in (plain, ramped):
        assert parse_recipe(r.to_dict()) == r


def test_distill_round_trips_and_off_keeps_old_fingerprints():
    plain = parse_recipe(GOOD)
    assert plain.distill.alpha == 0 and "distill" not in plain.fingerprint()
    kd = parse_recipe(with_change(("distill",), {"alpha": 0.5, "temperature": 2}))
    assert (kd.distill.alpha, kd.distill.temperature) == (0.5, 2)
    assert '"distill": {"alpha": 0.5, "temperature": 2}' in kd.fingerprint()
    for r in (plain, kd):
        assert parse_recipe(r.to_dict()) == r


def test_keep_best_round_trips_and_last_keeps_old_fingerprints():
    plain = parse_recipe(GOOD)
    assert plain.retrain.keep == "last"
    assert all("keep" not in plain.to_dict()[s] for s in ("pretrain", "retrain"))
    best = parse_recipe(with_change(("retrain",), {"epochs": 2, "keep": "best"}))
    assert best.retrain.keep == "best" and '"keep": "best"' in best.fingerprint()
    for r in (plain, best):
        assert parse_recipe(r.to_dict()) == r


@pytest.mark.parametrize("path,value,match", [
    # these became the text "None" / "['a']" in the fingerprint and the ONNX metadata
    (("name",), None, r"recipe.name=None: must be text"),
    (("description",), {"a": 1}, r"recipe.description=\{'a': 1\}: must be text"),
    (("layers", 0, "sparsity", "keep"), 0.0, r"recipe.layers\[0\].sparsity.keep=0.0: must be a fraction in \(0, 1\]"),
    (("layers", 0, "sparsity", "keep"), 1.2, r"sparsity.keep=1.2"),
    (("layers", 0, "sparsity", "keep"), "half", r"sparsity.keep='half'"),
    (("layers", 1, "sparsity", "n"), 17, r"recipe.layers\[1\].sparsity.n=17: .* 1..16"),
    (("layers", 1, "sparsity", "n"), 0, r"sparsity.n=0"),
    (("layers", 0, "quant", "bits"), 0, r"recipe.layers\[0\].quant.bits=0: must be an integer in 1..8"),
    (("layers", 0, "quant", "bits"), 9, r"quant.bits=9"),
    (("layers", 0, "quant", "mapping"), "mirror", r"quant.mapping='mirror'"),
    # offset 8 bits hold -128, a differential 8-bit crossbar does not: the compiler would
    # re-quantize the layer, discarding the levels
    (("layers", 0, "quant"), {"bits": 8, "mapping": "offset"},
     r"recipe.layers\[0\].quant: 8-bit offset levels -128..127 do not fit the crossbar's "
     r"-127..127 \(geometry: 8-bit differential\)"),
    (("layers", 0, "sparsity", "structure"), "diag", r"sparsity.structure='diag': must be one of"),
    (("layers", 0, "sparsity", "prune"), 0.5, r"recipe.layers\[0\].sparsity.prune: unknown field"),
    (("layers", 0, "match"), 5, r"recipe.layers\[0\].match=5"),
    (("layers",), [], r"recipe.layers=\[\]"),
    (("geometry", "rows"), 0, r"recipe.geometry.rows=0: must be an integer >= 1"),
    (("geometry", "cell_bits"), 9, r"geometry.cell_bits=9"),
    (("admm",), {"rho_growth": 0.5}, r"recipe.admm.rho_growth=0.5: must be a finite number >= 1"),
    (("admm",), {"rounds": 0}, r"recipe.admm.rounds=0: must be an integer >= 1"),
    (("admm",), {"rho": -1}, r"recipe.admm.rho=-1"),
    (("admm",), {"lr_decay": 1}, r"recipe.admm.lr_decay: unknown field; allowed:"),
    (("admm",), {"rounds": 3, "ramp_rounds": 3}, r"recipe.admm.ramp_rounds=3: must be below"),
    (("admm",), {"ramp_rounds": -1}, r"recipe.admm.ramp_rounds=-1: must be an integer >= 0"),
    (("retrain",), {"epochs": -1}, r"recipe.retrain.epochs=-1"),
    (("retrain",), {"lr_decay": 1.5}, r"recipe.retrain.lr_decay=1.5: must be in \(0, 1\]"),
    (("pretrain",), {"lr_decay": 0}, r"recipe.pretrain.lr_decay=0: must be a finite number > 0"),
    (("retrain",), {"keep": "worst"}, r"recipe.retrain.keep='worst': must be last, best or average$"),
    (("pretrain",), {"keep": "best"}, r"recipe.pretrain.keep='best': must be last \(only"),
    (("batch_size",), 0, r"recipe.batch_size=0"),
    # a batch of one is dropped as ragged: each epoch would train one example
    (("batch_size",), 1, r"recipe.batch_size=1: must be an integer >= 2"),
    # rho is capped at rho_max from round 0: a rho above it would silently not apply
    (("admm",), {"rho": 20}, r"recipe.admm.rho=20: must be <= recipe.admm.rho_max=10"),
    (("distill",), {"alpha": 1.5}, r"recipe.distill.alpha=1.5: must be a number in \[0, 1\]"),
    (("distill",), {"alpha": "all"}, r"recipe.distill.alpha='all'"),
    (("distill",), {"temperature": 0}, r"recipe.distill.temperature=0: must be a finite number > 0"),
    (("distill",), {"teacher": "x"}, r"recipe.distill.teacher: unknown field; allowed: alpha"),
    (("epochs",), 3, r"recipe.epochs: unknown field"),
    # non-finite or mistyped numbers are refused before training, not found after it
    (("admm",), {"lr": float("inf")}, r"recipe.admm.lr=inf: must be a finite number > 0"),
    (("retrain",), {"lr": float("nan")}, r"recipe.retrain.lr=nan: must be a finite number"),
    # quoted: a recipe file's unquoted 1e-3 is a number (test_recipe_yaml_reads_numbers_as_typed)
    (("retrain",), {"lr": "1e-3"}, r"recipe.retrain.lr='1e-3': .*\(a number, not text: drop"),
    (("distill",), {"temperature": "4"}, r"temperature='4': .*> 0 \(a number, not text: drop"),
    (("distill",), {"temperature": float("inf")}, r"recipe.distill.temperature=inf"),
    (("layers", 0, "sparsity"), {"keep": 0.1},
     r"recipe.layers\[0\].sparsity.structure=None: must be one of rows, "),
    (("layers", 0, "quant", "scale"), True, r"recipe.layers\[0\].quant.scale=True: must be > 0"),
    (("layers", 0, "quant"), {"bits": 4, "pow2": True, "scale": 0.3},
     r"recipe.layers\[0\].quant.scale=0.3: pow2: true needs a power of two \(e.g. 0.25\)"),
    (("geometry", "g_min_us"), "abc", r"recipe.geometry.g_min_us='abc': must be a finite number"),
    (("geometry", "g_max_us"), None, r"recipe.geometry.g_max_us=None: must be a finite number"),
    (("geometry", "rows"), 100_000_000, r"recipe.geometry.rows=100000000: must be at most 65536"),
])
def test_bad_fields_are_named_in_one_line(path, value, match):
    with pytest.raises(CompressionError, match=match) as e:
        parse_recipe(with_change(path, value))
    assert "\n" not in str(e.value)


def test_unknown_layer_names_the_pattern_and_lists_layers():
    r = parse_recipe(with_change(("layers", 0, "match"), "conv9"))
    with pytest.raises(CompressionError, match=r"recipe.layers\[0\].match='conv9': matches no "
                                               r"layer; compressible layers: 0, 2"):
        r.resolve(tiny_model())
    r = parse_recipe(with_change(("layers", 0, "match"), "1"))
    with pytest.raises(CompressionError, match="'1': is a ReLU"):
        r.resolve(tiny_model())


def test_load_recipe_errors(tmp_path):
    with pytest.raises(CompressionError, match="no such file or shipped recipe; shipped: lenet5_block"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [\n")
    with pytest.raises(CompressionError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- 1\n")
    with pytest.raises(CompressionError, match=r"recipe .*bad.yaml: not a mapping; a recipe maps"):
        load_recipe(bad)
    bad.write_text("# nothing yet\n")          # was "recipe=None: must be a mapping"
    with pytest.raises(CompressionError, match=r"recipe .*bad.yaml: empty; a recipe maps"):
        load_recipe(bad)
    assert (RECIPE_DIR / "lenet5_block.yaml").is_file()


def test_lr_decay_sets_each_epochs_learning_rate(monkeypatch):
    import numpy as np

    from compressor import compress, pipeline
    from models import build
    seen = []

    def record(self, opt, stage_id, rnd, epoch, desc, penalty_grad=None):
        seen.append((stage_id, epoch, opt.param_groups[0]["lr"]))
        return 0.0
    monkeypatch.setattr(pipeline._Run, "_epoch", record)
    r = parse_recipe({"name": "d", "pretrain": {"epochs": 2, "lr": 1e-2, "lr_decay": 0.5},
                      "admm": {"rounds": 1, "lr": 3e-3},
                      "retrain": {"epochs": 3, "lr": 1e-3, "lr_decay": 0.1},
                      "layers": [{"match": "layers.1", "quant": {"bits": 8}}]})
    x = np.zeros((4, 1, 28, 28), np.float32)
    y = np.zeros(4, np.int64)
    compress(build("mlp", seed=0), r, (x, y), (x, y), progress=False)
    lrs = [(s, e, round(lr, 9)) for s, e, lr in seen]
    assert lrs == [(0, 0, 1e-2), (0, 1, 5e-3), (1, 0, 3e-3),
                   (2, 0, 1e-3), (2, 1, 1e-4), (2, 2, 1e-5)]


def test_a_recipe_moved_onto_a_machine_takes_its_defaults_not_the_files():
    """``--preset``/``--set``: a rule that left bits or mapping to the geometry gets the
    machine's; one that gave them keeps them."""
    from compressor.cli import _with_machine
    r = parse_recipe({"geometry": {"weight_bits": 8, "mapping": "differential"},
                      "layers": [{"match": "fc", "quant": {}},
                                 {"match": "conv", "quant": {"bits": 3}}]})
    assert r.layers[0].constraint.quant.bits == 8
    moved = _with_machine(r, "puma", ["weight_bits=4"], "--preset puma")   # offset
    q0, q1 = (rule.constraint.quant for rule in moved.layers)
    assert (q0.bits, q0.mapping) == (4, "offset")
    assert (q1.bits, q1.mapping) == (3, "offset")
    assert parse_recipe(r.to_dict()) == r                      # fingerprints unchanged


def test_structured_rule_on_a_grouped_conv_is_refused_quantization_is_not():
    """A grouped conv's weight is (C_out, C_in/groups, k, k), the compiler's crossbars are
    block-diagonal over all input channels: blocks and TinyADC segments stated on the
    former broke their promises on the latter (16 of 300 random cases for TinyADC)."""
    import torch
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.ReLU())
    blocks = parse_recipe({**GOOD, "layers": [{"match": "0", "sparsity": {
        "structure": "blocks", "keep": 0.5}}]})
    with pytest.raises(CompressionError, match=r"'0' is a grouped convolution \(groups=2\)"):
        blocks.resolve(model)
    quant = parse_recipe({**GOOD, "layers": [{"match": "0", "quant": {"bits": 4}}]})
    assert list(quant.resolve(model)) == ["0"]


def test_a_recipe_key_given_twice_is_refused(tmp_path):
    """PyYAML lets the last of two equal keys win: a recipe's second 'retrain' (or layer
    rule key) silently replaced the first."""
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nretrain: {epochs: 2}\nretrain: {epochs: 5}\nlayers: []\n")
    with pytest.raises(CompressionError, match="key 'retrain' given twice"):
        load_recipe(p)


def test_a_layer_without_weights_is_refused_by_name():
    """``nn.Linear(12, 0)`` crashed the projections with numpy's reshape error."""
    model = torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.ReLU(),
                                torch.nn.Linear(12, 0))
    with pytest.raises(CompressionError, match=r"'2' has no weights \(shape \(0, 12\)\)"):
        parse_recipe(GOOD).resolve(model)


def test_an_empty_weight_reads_as_an_empty_crossbar():
    import numpy as np

    from compressor.geometry import to_crossbar
    assert to_crossbar(np.zeros((0, 3, 2, 2))).shape == (12, 0)


@pytest.mark.parametrize("text,needle", [
    # a list as key raised TypeError ("unhashable type") past the YAML error handling
    ("name: r\n? [a, b]\n: 1\n", "line 2, column 3: not valid YAML (found unhashable key)"),
    # PyYAML's first line is its context ("while parsing a block mapping"): what and where
    # came after it
    ("retrain:\n  epochs: 2\n bad\n",
     "line 3, column 2: not valid YAML (expected <block end>, but found '<scalar>')"),
    ("name: r\nname: s\n", "line 2, column 1: not valid YAML (key 'name' given twice)"),
])
def test_recipe_yaml_errors_name_the_line_and_the_problem(tmp_path, text, needle):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(CompressionError) as e:
        load_recipe(p)
    assert str(e.value) == f"recipe {p} {needle}"


def test_recipe_yaml_reads_numbers_as_typed(tmp_path):
    """YAML 1.1 read ``lr: 1e-3`` (no dot) as text, refused, and ``1:30.5`` as 90.5."""
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nretrain: {lr: 1e-3}\nlayers: [{match: x, quant: {bits: 4}}]\n")
    assert load_recipe(p).retrain.lr == 1e-3
    p.write_text("name: r\nretrain: {lr: 1:30.5}\nlayers: [{match: x, quant: {bits: 4}}]\n")
    with pytest.raises(CompressionError, match=r"recipe.retrain.lr='1:30.5': must be a finite"):
        load_recipe(p)


@pytest.mark.parametrize("arg", [5, None, ["lenet5_block"]])
def test_load_recipe_of_something_not_a_path_is_one_line(arg):
    """load_recipe(5) was a TypeError from pathlib."""
    with pytest.raises(CompressionError, match=r"recipe: a file path or shipped recipe name, "
                                               rf"not {type(arg).__name__}"):
        load_recipe(arg)
