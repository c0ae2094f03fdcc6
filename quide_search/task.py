"""A task: a float model with the data it is scored on, ready for trials.

Built once per study: the float model is trained (or loaded from the cache), the splits are
materialised as tensors, and everything a trial needs is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quide_search.data import DATASETS, DataRequest, Splits
from quide_search.errors import ConfigError
from quide_search.models import MODELS
from quide_search.models._train import load_or_train
from quide_search.quantize import quantizable_layers

__all__ = ["Task", "load_task"]

DATA_SEED = 0
"""Seed of the data splits and of float-model training: fixed so that every search seed is
scored on the same data with the same float model."""


_RECIPE_VERSION = 2
"""Version of the training recipe in the cache key; 2 seeds the initial weights too, so weights
cached by version 1 (unseeded initialisation) are not reused."""


@dataclass(frozen=True)
class Task:
    """A float model, its splits, and where its weights came from."""

    model_name: str
    dataset_name: str
    model: nn.Module
    splits: Splits
    weights_path: Path | None

    @property
    def layers(self) -> dict[str, int]:
        """Quantizable layer name -> weight element count, in module order."""
        return quantizable_layers(self.model)

    def describe(self) -> dict[str, Any]:
        """Return what identifies the task in a study's protocol."""
        return {
            "model": self.model_name,
            **self.splits.describe(),
            "layers": list(self.layers),
            "weights": str(self.weights_path) if self.weights_path else None,
        }


def load_task(*, model: str = "simplecnn", dataset: str = "digits") -> Task:
    """Build the float model for ``model`` on ``dataset`` and its data splits.

    Raises:
        ConfigError: For an unknown model or dataset, or a dataset the model does not serve.
    """
    spec = MODELS.get(model)
    loader = DATASETS.get(dataset)
    if dataset.lower() not in spec.datasets:
        raise ConfigError(
            f"--dataset must be one of {', '.join(spec.datasets)} for model {spec.name!r}, "
            f"but got {dataset!r}."
        )
    splits = loader(DataRequest(seed=DATA_SEED))
    # The initial weights are part of the seeded training run: without this the cached model
    # depends on whatever the global RNG held when the process got here.
    torch.manual_seed(DATA_SEED)
    float_model = spec.build(splits)
    weights: Path | None = None
    if spec.train_epochs > 0:
        key = (
            f"{spec.name}-{splits.name}-v{spec.arch_version}-e{spec.train_epochs}"
            f"-s{DATA_SEED}-r{_RECIPE_VERSION}"
        )
        float_model, weights = load_or_train(
            float_model, splits.train, key=key, epochs=spec.train_epochs, seed=DATA_SEED
        )
    float_model.eval()
    for p in float_model.parameters():
        p.requires_grad_(False)
    return Task(
        model_name=spec.name,
        dataset_name=splits.name,
        model=float_model,
        splits=splits,
        weights_path=weights,
    )
