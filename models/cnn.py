"""CIFAR-size convolutional networks: VGG-8, VGG-16 and ResNet-18.

All take ``in_channels`` / ``image_size`` so the same definitions run on 3x32x32 (CIFAR)
and 1x28x28 (Fashion-MNIST) inputs, and a ``width`` multiplier that scales every channel
count (``width=0.25`` gives a quick-to-simulate variant with the same topology).
"""
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

#: VGG-8 as NeuroSim's and MNSIM's CIFAR-10 benchmark uses it; "M" is a 2x2 max-pool.
VGG8_CFG = (128, 128, "M", 256, 256, "M", 512, 512, "M")
#: VGG-16 feature extractor (configuration "D" of Simonyan & Zisserman, CIFAR-style).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M")


def _scale(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _vgg_features(cfg: Sequence, in_channels: int, image_size: int, width: float,
                  batch_norm: bool) -> tuple[nn.Sequential, int, int]:
    """Conv3x3 stack from ``cfg``; returns (layers, channels out, side out).

    A max-pool that would shrink a 1x1 map is left out, so VGG-16 (five pools) still works
    on 28x28 inputs (28 -> 14 -> 7 -> 3 -> 1, fifth pool dropped).
    """
    layers: list[nn.Module] = []
    channels, side = in_channels, image_size
    for item in cfg:
        if item == "M":
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            continue
        out = _scale(item, width)
        layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    return nn.Sequential(*layers), channels, side


class VGG(nn.Module):
    """VGG-style network: ``features`` (conv3x3 stack) then a fully connected ``classifier``.

    ``fc`` lists the hidden fully connected sizes (VGG-8: ``(1024,)``; VGG-16 CIFAR: ``()``).
    """

    def __init__(self, cfg: Sequence, fc: Sequence[int], in_channels: int = 3,
                 image_size: int = 32, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True):
        super().__init__()
        self.features, channels, side = _vgg_features(cfg, in_channels, image_size, width,
                                                      batch_norm)
        sizes = [channels * side * side, *(_scale(n, width) for n in fc)]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3+BN, identity or 1x1-conv+BN shortcut, ReLU after add."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 in its CIFAR form (He et al. 2016): 3x3 stem without max-pool, four stages
    of two basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average
    pool, one fully connected layer. Any input side >= 8 works (28x28 ends at 4x4)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"ResNet-18 needs image_size >= 8, got {image_size}")
        widths = [_scale(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(out, 1))
