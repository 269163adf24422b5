"""Small networks: multi-layer perceptrons, LeNet-5 and an LSTM, GRU or RNN sequence
classifier.

Every network returns raw logits (no softmax) so the exported ONNX graph ends in the last
matrix multiply, which is what the crossbar compiler maps.
"""
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network: ``in_features -> hidden... -> num_classes``.

    The input is flattened first, so both ``(N, in_features)`` vectors and
    ``(N, C, H, W)`` images with ``C*H*W == in_features`` are accepted.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def lenet_feature_size(image_size: int) -> int:
    """Side of LeNet-5's last feature map for a square input of ``image_size`` pixels."""
    # conv5x5 pad 2 keeps the size; pool halves; conv5x5 without pad takes 4; pool halves.
    return (image_size // 2 - 4) // 2


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as commonly used on MNIST.

    conv5x5(6, pad 2) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2 ->
    fc120 -> ReLU -> fc84 -> ReLU -> fc(num_classes). The padding on the first convolution
    makes a 28x28 input behave like the original 32x32 one (16x5x5 features).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        side = lenet_feature_size(image_size)
        if side < 1:
            raise ValueError(f"LeNet-5 needs image_size >= 12, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SequenceClassifier(nn.Module):
    """A recurrent layer (``cell``: "lstm", "gru" or "rnn") that reads a sequence and
    classifies its last hidden state.

    Input ``(N, seq_len, input_size)`` (batch first). An image batch ``(N, C, H, W)`` is
    read row by row: ``seq_len = H`` steps of ``input_size = C*W`` features, so a 28x28
    image is 28 steps of 28 pixels. ``bidirectional`` adds a second recurrence that runs
    from the last step to the first; the classifier then reads each direction's final
    state: the forward one at the last step, the backward one at the first.
    """

    CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # nn.RNN: tanh

    def __init__(self, cell: str = "lstm", input_size: int = 28, hidden_size: int = 64,
                 num_layers: int = 1, num_classes: int = 10, bidirectional: bool = False):
        super().__init__()
        self.cell = cell
        # attribute named after the cell: state-dict keys "lstm.*" / "gru.*"
        setattr(self, cell, self.CELLS[cell](input_size, hidden_size, num_layers=num_layers,
                                             batch_first=True, bidirectional=bidirectional))
        # bidirectional: both directions' final states (2 * hidden_size)
        self.hidden_size, self.bidirectional = hidden_size, bool(bidirectional)
        self.register_buffer("forward_half", (torch.arange(2 * hidden_size) < hidden_size)
                             .float(), persistent=False)   # not in the state dict
        self.fc = nn.Linear(hidden_size * (1 + bidirectional), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (N, C, H, W) -> (N, H, C*W): one step per image row
            x = x.permute(0, 2, 1, 3).flatten(2)
        out, _ = getattr(self, self.cell)(x)
        if not self.bidirectional:
            return self.fc(out[:, -1])
        # the backward recurrence has read the whole sequence at step 0, not at the last:
        # the forward half of the last step's output and the backward half of the first's
        # (a 0/1 mask, not a slice, so the ONNX graph stays in ops the compiler maps)
        return self.fc(out[:, -1] * self.forward_half + out[:, 0] * (1 - self.forward_half))


class LSTMClassifier(SequenceClassifier):
    """:class:`SequenceClassifier` with an LSTM (the name earlier versions exported)."""

    def __init__(self, input_size: int = 28, hidden_size: int = 64, num_layers: int = 1,
                 num_classes: int = 10):
        super().__init__("lstm", input_size, hidden_size, num_layers, num_classes)
