"""Factories for ``--model package.module:factory`` tests (importable: tests/ is on the path)."""

from __future__ import annotations

import torch
from torch import nn

from quide_search import CustomTask


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(16, 32)
        self.decode = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.tanh(self.encode(x)))


def make_task() -> CustomTask:
    torch.manual_seed(0)
    model = TwoLayer()
    x = torch.randn(200, 16)
    with torch.no_grad():
        y = model(x).argmax(-1)  # labels the float model gets right: P(fp32) = 1
    return CustomTask(model=model, eval_inputs=x, eval_labels=y, example=x[:1])


def agreement(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(inputs).argmax(-1) == labels).float().mean())


def make_scored_task() -> CustomTask:
    task = make_task()
    return CustomTask(
        model=task.model, eval_inputs=task.eval_inputs, eval_labels=task.eval_labels,
        score=agreement, name="agreement",
    )  # fmt: skip


def not_a_task() -> dict[str, int]:
    return {"model": 1}


class KeywordOnly(TwoLayer):
    """Called as Hugging Face vision models are: ``model(pixel_values=x)``."""

    def forward(self, *, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(pixel_values)


def keyword_only_task() -> CustomTask:
    task = make_task()
    model = KeywordOnly()
    model.load_state_dict(task.model.state_dict())
    return CustomTask(model=model, eval_inputs=task.eval_inputs, eval_labels=task.eval_labels)
