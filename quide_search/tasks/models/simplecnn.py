"""SimpleCNN: the small convolutional classifier of the QuIDE protocol (4 quantizable layers)."""

from __future__ import annotations

import torch
from torch import nn

from quide_search.tasks.data import Splits
from quide_search.tasks.models._base import ModelSpec, register_model

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    """Two conv blocks (conv, ReLU, 2x2 max-pool) and a two-layer classifier head.

    Args:
        in_channels: Input channels (1 for greyscale digits).
        image_size: Height and width of the (square) input, divisible by 4.
        num_classes: Output classes.
    """

    def __init__(self, *, in_channels: int = 1, image_size: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.fc1 = nn.Linear(32 * side * side, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _build(splits: Splits) -> nn.Module:
    channels, height, _ = splits.input_shape
    return SimpleCNN(in_channels=channels, image_size=height, num_classes=splits.num_classes)


register_model(
    ModelSpec(
        name="simplecnn",
        build=_build,
        datasets=("digits", "mnist-5k", "mnist", "cifar10"),
        description="SimpleCNN (2 conv + 2 linear), trained on first use and cached",
        train_epochs=40,
        dataset_epochs={"mnist-5k": 15, "mnist": 3, "cifar10": 10},
    )
)
