"""Shared small cases for the compressor's training tests: 8x8 digits and a 64-32-10 MLP."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def digits():
    """400 training images and the last 297 as the evaluation set."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return (x[:400], d.target[:400].astype(np.int64)), (x[1500:], d.target[1500:].astype(np.int64))


def _mlp():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 10))


@pytest.fixture
def mlp():
    """Builds the same freshly initialised MLP on every call."""
    return _mlp


@pytest.fixture
def resumed(monkeypatch):
    """``resumed(run, stage, step)``: calls ``run`` (a ``compress`` with a checkpoint) and
    interrupts it right after ``stage``'s epoch or round ``step`` is checkpointed, then calls
    it again, which resumes; returns what the second call returns."""
    from compressor import pipeline
    original = pipeline._Run._record

    order = ("pretrain", "admm", "retrain")

    def go(run, stage, step):
        def interrupted(self, st, opt, **info):
            original(self, st, opt, **info)
            if st == stage and self.step == step:
                raise KeyboardInterrupt
        monkeypatch.setattr(pipeline._Run, "_record", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run()
        redone = []

        def watched(self, st, opt, **info):
            original(self, st, opt, **info)
            redone.append((st, self.step))
        monkeypatch.setattr(pipeline._Run, "_record", watched)
        out = run()
        monkeypatch.setattr(pipeline._Run, "_record", original)
        # it went on from the checkpoint: a run that started over trains the same weights
        # (everything is seeded), so equal results alone would not show a resume
        assert not any(order.index(st) < order.index(stage)
                       or st == stage and s <= step for st, s in redone), redone[:3]
        return out
    return go
