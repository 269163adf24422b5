"""The model zoo: a registry from name to builder, plus the input shape each model expects.

>>> from models.zoo import build, input_shape
>>> net = build("lenet5")                 # 1x28x28 Fashion-MNIST LeNet-5
>>> input_shape("vgg8")                   # (1, 3, 32, 32)
>>> build("resnet18", in_channels=1, image_size=28, width=0.25)

Each built module carries ``sample_shape`` (its input shape without the batch dimension),
which ``models.export`` uses when it is handed a module instead of a name.
"""
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models import MODEL_NAMES
from models.cnn import VGG, VGG8_CFG, VGG16_CFG, ResNet18
from models.errors import ModelError
from models.nets import MLP, LeNet5, SequenceClassifier


def mlp(in_features: int = 784, hidden: Sequence[int] = (256, 128),
        num_classes: int = 10) -> nn.Module:
    """Multi-layer perceptron with configurable hidden sizes (ReLU between layers)."""
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise ModelError(f"model 'mlp' option hidden takes a tuple of layer sizes, e.g. "
                         f"hidden=(64,) (note the comma) or hidden=(64,32); got {hidden!r}")
    bad = [h for h in hidden if isinstance(h, bool) or not isinstance(h, numbers.Integral)
           or h < 1]
    if bad:
        raise ModelError(f"model 'mlp' option hidden takes layer sizes >= 1, got "
                         f"{tuple(hidden)!r}")
    return MLP(in_features, tuple(int(h) for h in hidden), num_classes)


def puma_mlp(in_features: int = 1024, num_classes: int = 10) -> nn.Module:
    """PUMA's MLP benchmark (Ankit et al. ASPLOS 2019): 1024-1024-2048-1024-10."""
    return MLP(in_features, (1024, 2048, 1024), num_classes)


def mlp784(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """The classic MNIST MLP 784-300-100-10 (LeCun et al. 1998)."""
    return MLP(in_features, (300, 100), num_classes)


def lenet5(in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling for 1x28x28 inputs (see ``models.nets.LeNet5``)."""
    return LeNet5(in_channels, image_size, num_classes)


def vgg8(in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
         width: float = 1.0, batch_norm: bool = True) -> nn.Module:
    """VGG-8 as in NeuroSim/MNSIM: conv 128-128-M-256-256-M-512-512-M, FC 1024-10."""
    return VGG(VGG8_CFG, (1024,), in_channels, image_size, num_classes, width, batch_norm)


def vgg16(in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
          width: float = 1.0, batch_norm: bool = True) -> nn.Module:
    """VGG-16 for CIFAR: 13 conv3x3 layers in five pooled stages, one FC layer (512-10)."""
    return VGG(VGG16_CFG, (), in_channels, image_size, num_classes, width, batch_norm)


def resnet18(in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
             width: float = 1.0) -> nn.Module:
    """ResNet-18, CIFAR form (BasicBlock, 3x3 stem, no stem max-pool)."""
    return ResNet18(in_channels, image_size, num_classes, width)


def _sequence_model(cell: str, doc: str) -> Callable[..., nn.Module]:
    """The zoo builder of a :class:`SequenceClassifier` with ``cell``; all three recurrent
    models take the same options."""
    def builder(input_size: int = 28, seq_len: int = 28, hidden_size: int = 64,
                num_layers: int = 1, num_classes: int = 10,
                bidirectional: bool = False) -> nn.Module:
        del seq_len  # fixes the exported input shape only; the recurrence runs any length
        return SequenceClassifier(cell, input_size, hidden_size, num_layers, num_classes,
                                  bidirectional)
    builder.__name__ = builder.__qualname__ = cell
    builder.__doc__ = doc
    return builder


lstm = _sequence_model("lstm", """LSTM classifier: ``seq_len`` steps of ``input_size`` features
    (a 28x28 image read row by row), ``hidden_size`` units (in each direction if
    ``bidirectional``), FC to ``num_classes``; batch first.""")
gru = _sequence_model("gru", "GRU classifier, the LSTM's twin (same options and head).")
rnn = _sequence_model("rnn", "Elman RNN classifier (tanh), the LSTM's twin (same options).")


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its builder and the kind of input it takes."""

    builder: Callable[..., nn.Module]
    kind: str
    """"vector" (N, in_features), "image" (N, C, S, S) or "sequence" (N, seq_len, input_size)."""


#: Registry: model name -> entry. ``build`` and ``input_shape`` look names up here.
ZOO: dict[str, ZooEntry] = {
    "mlp": ZooEntry(mlp, "vector"),
    "puma_mlp": ZooEntry(puma_mlp, "vector"),
    "mlp784": ZooEntry(mlp784, "vector"),
    "lenet5": ZooEntry(lenet5, "image"),
    "vgg8": ZooEntry(vgg8, "image"),
    "vgg16": ZooEntry(vgg16, "image"),
    "resnet18": ZooEntry(resnet18, "image"),
    "lstm": ZooEntry(lstm, "sequence"),
    "gru": ZooEntry(gru, "sequence"),
    "rnn": ZooEntry(rnn, "sequence"),
}
if tuple(ZOO) != MODEL_NAMES:  # the torch-free list in models/__init__.py must agree
    raise ImportError(f"models.MODEL_NAMES {MODEL_NAMES} out of sync with ZOO {tuple(ZOO)}")


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ModelError(f"unknown model {name!r}; choose from: {', '.join(ZOO)}")
    return ZOO[name]


def _options(name: str, kw: dict) -> dict:
    """All builder options of ``name`` with ``kw`` applied; unknown options are an error."""
    params = inspect.signature(_entry(name).builder).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise ModelError(f"model {name!r} has no option {', '.join(unknown)}; "
                         f"it takes: {', '.join(params)}")
    opts = {k: kw.get(k, p.default) for k, p in params.items()}
    for k, p in params.items():          # a flag: True/False, 1/0, or their text (CLI)
        v = opts[k]
        if isinstance(p.default, bool) and not isinstance(v, bool):
            if str(v).lower() not in ("true", "false", "1", "0"):
                raise ModelError(f"model {name!r} option {k} takes True or False, got {v!r}")
            opts[k] = str(v).lower() in ("true", "1")
        elif (isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
              and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                   or not isinstance(v, numbers.Integral) and not math.isfinite(v)
                   or isinstance(p.default, int) and v != int(v))):
            kind = "an integer" if isinstance(p.default, int) else "a number"
            raise ModelError(f"model {name!r} option {k} takes {kind}, got {v!r}")
        elif isinstance(p.default, (int, float)) and not isinstance(p.default, bool) \
                and not v > 0:
            # sizes, widths and counts: 0 channels, features or steps build no model
            raise ModelError(f"model {name!r} option {k} must be > 0, got {v!r}")
        elif isinstance(p.default, int) and not isinstance(p.default, bool):
            opts[k] = int(v)
    return opts


def input_shape(name: str, batch: int = 1, **kw) -> tuple[int, ...]:
    """Input shape of model ``name`` built with options ``kw``, batch dimension first."""
    opt = _options(name, kw)
    kind = ZOO[name].kind
    if kind == "vector":
        return (batch, int(opt["in_features"]))
    if kind == "image":
        side = int(opt["image_size"])
        return (batch, int(opt["in_channels"]), side, side)
    return (batch, int(opt["seq_len"]), int(opt["input_size"]))


def options_for_data(name: str, sample_shape: Sequence[int]) -> dict:
    """Builder options that fit model ``name`` to data samples shaped ``(C, H, W)``."""
    kind = _entry(name).kind
    c, h, w = (int(n) for n in sample_shape)
    if kind == "vector":
        return {"in_features": c * h * w}
    if kind == "sequence":
        return {"input_size": c * w, "seq_len": h}
    if h != w:
        raise ModelError(f"model {name!r} takes square images, data are {h}x{w}")
    return {"in_channels": c, "image_size": h}


def build(name: str, *, seed: int | None = None, **kw) -> nn.Module:
    """Build zoo model ``name`` with builder options ``kw`` (see each builder's signature).

    ``seed`` makes the initial weights reproducible without touching torch's global random
    state. The module is returned in eval mode with ``sample_shape`` set.
    """
    opt = _options(name, kw)
    try:
        if seed is None:
            model = ZOO[name].builder(**opt)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = ZOO[name].builder(**opt)
    except (ValueError, TypeError, RuntimeError) as e:  # a wrong type or size of an option
        text = [k for k, v in kw.items() if isinstance(v, str)]
        hint = (f" ({', '.join(text)}: read as text; --opt values are Python literals, "
                f"e.g. hidden=(32, 32))" if text else "")
        raise ModelError(f"cannot build {name!r} with {kw}: {e}{hint}") from e
    model.sample_shape = input_shape(name, **kw)[1:]
    model.zoo_name = name
    return model.eval()
