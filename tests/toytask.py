"""A toy task for fast tests: a tiny conv net on seeded random images, built in milliseconds.

No training: the labels are the float model's own predictions, so the float model scores
P = 1.0 and every quantized plan scores the share of predictions it keeps. Used in-process
through :func:`make` and, in subprocesses, as ``--model toytask:make`` (with ``tests`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from quide_search import CustomTask

__all__ = ["SLOW_CALL_S", "MixedNet", "SlowToyNet", "ToyNet", "make", "make_mixed", "make_slow",
           "make_unquantizable"]  # fmt: skip

SLOW_CALL_S = 0.025
"""Seconds each forward call of the slow toy model sleeps: long enough to stop a trial in."""


class ToyNet(nn.Module):
    """Conv2d(1, 4) -> Linear(256, 16) -> Linear(16, 4): three quantizable layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(4 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class SlowToyNet(ToyNet):
    """The toy model, with every forward call taking at least :data:`SLOW_CALL_S`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_CALL_S)
        return super().forward(x)


class MixedNet(nn.Module):
    """Conv1d -> ConvTranspose2d -> Linear head: quanto quantizes only the head."""

    def __init__(self, head: bool = True) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(8, 4, kernel_size=3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 16 * 16, 4) if head else nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1d(x.flatten(2))).view(-1, 4, 8, 8)
        x = self.norm(self.up(x)).flatten(1)
        return self.head(x) if isinstance(self.head, nn.Linear) else x[:, :4]


def make() -> CustomTask:
    """The toy task: 384 eval, 64 calibration and 128 test samples, labelled by the float
    model."""
    return _task(ToyNet)


def make_slow() -> CustomTask:
    """The toy task on :class:`SlowToyNet`: trials last long enough for processes to meet."""
    return _task(SlowToyNet)


def make_mixed() -> CustomTask:
    """:class:`MixedNet` on (8, 8, 8) inputs: one searched layer, two kept in float."""
    return _task(MixedNet, channels=8)


def make_unquantizable() -> CustomTask:
    """:class:`MixedNet` without its head: no layer quanto quantizes."""
    return _task(lambda: MixedNet(head=False), channels=8)


def _task(kind: Callable[[], nn.Module], channels: int = 1) -> CustomTask:
    torch.manual_seed(0)
    model = kind().eval()
    inputs = torch.randn(448, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    held_out = torch.randn(128, channels, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = model(inputs).argmax(dim=-1)
        test_labels = model(held_out).argmax(dim=-1)
    return CustomTask(
        model=model,
        eval_inputs=inputs[:384],
        eval_labels=labels[:384],
        calib_inputs=inputs[384:],
        calib_labels=labels[384:],
        test_inputs=held_out,
        test_labels=test_labels,
        name="toy",
    )
