"""Datasets: registered loaders that return seeded, disjoint splits as tensors."""

from __future__ import annotations

from quide_search.tasks.data import digits as _digits  # noqa: F401  (registers "digits")
from quide_search.tasks.data import imagenet as _imagenet  # noqa: F401  (registers "imagenet")
from quide_search.tasks.data import mnist5k as _mnist5k  # noqa: F401  (registers "mnist-5k")
from quide_search.tasks.data import vision as _vision  # noqa: F401  (registers "mnist", "cifar10")
from quide_search.tasks.data._base import (
    DATASET_NEEDS,
    DATASETS,
    DataRequest,
    Split,
    Splits,
    register_dataset,
    seeded_splits,
)

__all__ = [
    "DATASETS",
    "DATASET_NEEDS",
    "DataRequest",
    "Split",
    "Splits",
    "register_dataset",
    "seeded_splits",
]
