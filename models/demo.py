"""The weights and images shipped inside the package, so a demo needs no training or download.

- ``models/pretrained/lenet5_fmnist.{pt,onnx,json}``: LeNet-5 trained on Fashion-MNIST
  (state dict, ONNX opset 17 with static input 1x1x28x28 named ``input``, output ``logits``,
  and a JSON record of accuracy and recipe), made by ``python -m models.make_pretrained``.
- ``models/data/fmnist_test_subset.npz``: 300 Fashion-MNIST test images (see its README).

Only ``load_pretrained`` imports torch.
"""
import json
import os
from pathlib import Path

import numpy as np

from models.errors import ModelError

#: Folder of shipped pretrained models.
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
#: Folder of shipped demo data.
DATA_DIR = Path(__file__).resolve().parent / "data"
#: Shipped pretrained models: name -> (zoo model, builder options).
PRETRAINED = {"lenet5_fmnist": ("lenet5", {})}
#: The demo image file: uint8 images under ``x`` (N, 28, 28), labels under ``y``.
DEMO_IMAGES = DATA_DIR / "fmnist_test_subset.npz"
_KINDS = ("onnx", "pt", "json")


def pretrained_path(name: str = "lenet5_fmnist", kind: str = "onnx") -> Path:
    """Path of a shipped pretrained model file; ``kind`` is ``onnx``, ``pt`` or ``json``."""
    if name not in PRETRAINED:
        raise ModelError(f"no pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
    if kind not in _KINDS:
        raise ModelError(f"unknown pretrained file kind {kind!r}; use {', '.join(_KINDS)}")
    path = PRETRAINED_DIR / f"{name}.{kind}"
    if not path.is_file():
        raise ModelError(f"pretrained file {path} is missing; run python -m models.make_pretrained")
    return path


def pretrained_info(name: str = "lenet5_fmnist") -> dict:
    """The JSON record of a shipped model: test accuracy, epochs, seed, normalisation…"""
    return json.loads(pretrained_path(name, "json").read_text())


def load_demo_images(n: int | None = None,
                     path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped Fashion-MNIST test subset: float32 ``(N, 1, 28, 28)`` in [0, 1], int64 labels.

    ``n`` keeps the first n images (None: all). ``path``: another ``.npz`` of the same form
    (``x`` images, ``y`` labels) to read instead. Normalisation is
    ``models.data.NORMALISATION``.
    """
    from models.data import check_limit, load_npz

    check_limit(n, "n")     # here, so the error names this function's argument
    return load_npz(DEMO_IMAGES if path is None else path, limit=n)


def load_pretrained(name: str = "lenet5_fmnist"):
    """The shipped model as a torch module in eval mode, its state dict loaded."""
    import torch

    from models.zoo import build

    model_name, options = PRETRAINED.get(name, (None, None))
    path = pretrained_path(name, "pt")  # raises for an unknown name
    model = build(model_name, **options)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
