"""A fake machine clock for latency tests: each pass advances it by the model's cost."""

from __future__ import annotations

import torch
from torch import nn


class Machine:
    """A clock whose speed halves for ``spell`` passes at a time, as a shared CPU's does."""

    def __init__(self, spell: int = 0) -> None:
        self.now_ns = 0
        self.passes = 0
        self.spell = spell
        self.order: list[str] = []

    def __call__(self) -> int:
        return self.now_ns

    def run(self, name: str, cost_ms: float) -> None:
        slow = self.spell and (self.passes // self.spell) % 2 == 1
        self.now_ns += round(cost_ms * (2.0 if slow else 1.0) * 1e6)
        self.passes += 1
        self.order.append(name)


class Model(nn.Module):
    """A model whose pass costs ``cost_ms`` on the fake machine (or the next of ``costs``)."""

    def __init__(self, machine: Machine, name: str, cost_ms: float, costs: object = None) -> None:
        super().__init__()
        self.machine, self.name, self.cost, self.costs = machine, name, cost_ms, costs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cost = next(self.costs) if self.costs is not None else self.cost  # type: ignore[call-overload]
        self.machine.run(self.name, cost)
        return x
