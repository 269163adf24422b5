"""Knowledge distillation from the dense model (recipe ``distill``)."""
import numpy as np
import torch

from compressor import compress, parse_recipe, pipeline
from compressor.recipes import DistillSpec


def test_the_loss_is_cross_entropy_off_and_the_tempered_kl_mix_on():
    g = torch.Generator().manual_seed(0)
    out, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = torch.nn.functional.cross_entropy(out, y)
    assert torch.equal(pipeline._loss(None)(out, y, teacher), ce)
    assert torch.equal(pipeline._loss(DistillSpec(alpha=0.0))(out, y, teacher), ce)
    t = 3.0
    p = torch.softmax(teacher / t, 1)
    kl = (p * (p.log() - torch.log_softmax(out / t, 1))).sum(1).mean()
    got = pipeline._loss(DistillSpec(alpha=0.25, temperature=t))(out, y, teacher)
    assert torch.allclose(got, 0.75 * ce + 0.25 * t * t * kl, rtol=1e-5, atol=1e-6)
    # a student that already matches its teacher has nothing left to learn from it
    assert pipeline._loss(DistillSpec(alpha=1.0))(teacher, y, teacher).abs() < 1e-6


def run(mlp, data, alpha, labels=None):
    (x, y), val = data
    rec = parse_recipe({"name": "kd", "geometry": {"rows": 16, "cols": 8, "weight_bits": 8},
                        "admm": {"rounds": 2}, "retrain": {"epochs": 1},
                        "distill": {"alpha": alpha},
                        "layers": [{"match": "1", "sparsity": {"structure": "rows",
                                                               "keep": 0.5}}]})
    return compress(mlp(), rec, (x, y if labels is None else labels), val, progress=False)


def test_with_alpha_one_training_follows_the_teacher_alone(digits, mlp):
    """At ``alpha=1`` the labels are not in the loss: scrambled labels give the same run, bit
    for bit; at ``alpha=0.5`` they are, and the run differs."""
    (x, y), _ = digits
    scrambled = np.random.default_rng(1).permutation(y)
    for alpha, same in ((1.0, True), (0.5, False)):
        a, b = run(mlp, digits, alpha), run(mlp, digits, alpha, labels=scrambled)
        equal = all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(),
                                                      b.model.state_dict().values()))
        assert equal is same, alpha
