"""Model zoo, data sets and small pretrained weights for xbarsim.

Importing this package does not import torch: the torch-using names (``ZOO``, ``build``,
``input_shape``, ``export``) are resolved lazily on first access, so
the compiler and simulator (which must not need torch) can use ``pretrained_path`` and
``load_demo_images``.

Submodules: ``models.zoo`` (definitions), ``models.onnx_export``, ``models.data``
(Fashion-MNIST / digits / NPZ loaders), ``models.train`` (training loop), ``models.cli``
(``xbarsim train`` / ``xbarsim export``), ``models.demo`` (shipped weights and images).
"""
from importlib import import_module

from models.demo import load_demo_images, load_pretrained, pretrained_path
from models.errors import DataError, ModelError

#: Names in the zoo, available without importing torch (``models.zoo.ZOO`` has the builders).
MODEL_NAMES = ("mlp", "puma_mlp", "mlp784", "lenet5", "vgg8", "vgg16", "resnet18", "lstm",
               "gru", "rnn")

_LAZY = {
    "ZOO": "models.zoo",
    "build": "models.zoo",
    "input_shape": "models.zoo",
    "export": "models.onnx_export",
}

__all__ = [
    "MODEL_NAMES",
    "ZOO",
    "DataError",
    "ModelError",
    "build",
    "export",
    "input_shape",
    "load_demo_images",
    "load_pretrained",
    "pretrained_path",
]


def __getattr__(name):
    # PEP 562: import torch-dependent modules only when one of their names is used.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
