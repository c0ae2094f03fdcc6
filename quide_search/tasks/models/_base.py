"""The model registry and the specification each registered model provides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from quide_search.tasks.data import Splits
from quide_search.tasks.registry import Registry

__all__ = ["MODELS", "ModelSpec", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and which datasets it serves.

    Attributes:
        name: Registry name.
        build: Returns the untrained float model shaped for the given splits.
        datasets: Dataset names this model can be evaluated on; the first is the default.
        description: One line for ``quide-search models``.
        train_epochs: Epochs of the seeded training run made on first use (0: no training).
        arch_version: Bumped whenever ``build`` changes, so stale cached weights are not reused.
        dataset_epochs: Per-dataset overrides of ``train_epochs`` (large sets need fewer).
        pretrained: Named published weights (``--weights NAME``) and how to get their state dict.
        default_weights: Per dataset, the ``--weights`` used when none is given.
        loader: For a model that comes with its own data (the embedded pretrained models):
            builds the whole task from ``load_task``'s keyword arguments; ``build`` is unused.
    """

    name: str
    build: Callable[[Splits], nn.Module]
    datasets: tuple[str, ...]
    description: str
    train_epochs: int = 0
    arch_version: int = 1
    dataset_epochs: Mapping[str, int] = field(default_factory=dict)
    pretrained: Mapping[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    default_weights: Mapping[str, str] = field(default_factory=dict)
    loader: Callable[..., Any] | None = None

    def epochs(self, dataset: str) -> int:
        """Training epochs on ``dataset``."""
        return self.dataset_epochs.get(dataset, self.train_epochs)


MODELS: Registry[ModelSpec] = Registry("model", "--model")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` under its name and return it."""
    return MODELS.register(spec.name)(spec)
