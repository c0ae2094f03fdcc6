"""Tasks: the float model to quantize and the data it is scored on.

Owns models (``models/``: registered ones, ``hf:`` causal LMs, the embedded pretrained ones,
``package.module:factory``), datasets (``data/``: seeded, disjoint splits), the cache of
trained weights, and the one resolver (:func:`load_task`) from a ``--model`` to a
:class:`Task`.

Layer: tasks (imports the foundation modules only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.tasks.data import DATASETS, register_dataset
    from quide_search.tasks.models import MODELS, register_model
    from quide_search.tasks.models.custom import CustomTask
    from quide_search.tasks.resolver import load_task
    from quide_search.tasks.task import Task

__all__ = ["DATASETS", "MODELS", "CustomTask", "Task", "load_task", "register_dataset",
           "register_model"]  # fmt: skip

__getattr__ = lazy_exports(
    __name__,
    {
        "DATASETS": "quide_search.tasks.data",
        "register_dataset": "quide_search.tasks.data",
        "MODELS": "quide_search.tasks.models",
        "register_model": "quide_search.tasks.models",
        "CustomTask": "quide_search.tasks.models.custom",
        "load_task": "quide_search.tasks.resolver",
        "Task": "quide_search.tasks.task",
    },
)
