"""Your own model: ``--model package.module:factory``.

The factory takes no arguments and returns a :class:`CustomTask`: the float model, its eval
data, and optionally calibration data, a latency example and a score function. quide-search
quantizes every ``nn.Linear`` and ``nn.Conv2d`` of the model. Example::

    # mypkg/task.py
    from quide_search import CustomTask

    def make() -> CustomTask:
        model = build_and_load_my_model()
        x, y = load_my_eval_tensors()
        return CustomTask(model=model, eval_inputs=x, eval_labels=y)

    # quide-search run --model mypkg.task:make
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quide_search.errors import ConfigError
from quide_search.tasks.data import Split, Splits

__all__ = ["CustomTask", "ScoreFn", "is_factory_spec", "load_factory"]

ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
"""``score(model, inputs, labels) -> P in [0, 1]``, called under ``torch.no_grad()``."""


@dataclass(frozen=True)
class CustomTask:
    """What a ``--model package.module:factory`` factory returns.

    Attributes:
        model: The float model (left unchanged; quantized copies are made per trial).
        eval_inputs: Inputs of the eval split, batched along dimension 0.
        eval_labels: Their labels (class indices for the default top-1 score).
        calib_inputs: Calibration inputs (default: none).
        calib_labels: Their labels.
        example: The latency input (default: the first eval input, as a batch of one).
        score: P of a model on inputs and labels, in [0, 1] (default: top-1 accuracy).
        name: Dataset name in records (default: ``custom``).
    """

    model: nn.Module
    eval_inputs: torch.Tensor
    eval_labels: torch.Tensor
    calib_inputs: torch.Tensor | None = None
    calib_labels: torch.Tensor | None = None
    example: torch.Tensor | None = None
    score: ScoreFn | None = None
    name: str = "custom"

    def splits(self) -> Splits:
        """Return the task's data as quide-search splits (no train split)."""
        empty = Split(self.eval_inputs[:0], self.eval_labels[:0])
        calib = empty
        if self.calib_inputs is not None and self.calib_labels is not None:
            calib = Split(self.calib_inputs, self.calib_labels)
        return Splits(
            name=self.name,
            train=empty,
            calib=calib,
            eval=Split(self.eval_inputs, self.eval_labels),
            input_shape=tuple(self.eval_inputs.shape[1:]),
            num_classes=int(self.eval_labels.max()) + 1 if self.eval_labels.numel() else 0,
            seed=0,
        )


def is_factory_spec(model: str) -> bool:
    """Whether ``--model`` names a factory (``package.module:function``)."""
    return ":" in model and not model.startswith("hf:")


def load_factory(spec: str) -> CustomTask:
    """Import and call the factory named by ``spec``; check what it returns.

    Raises:
        ConfigError: If the module or function cannot be found, the call fails, or it does
            not return a CustomTask with a module and matching eval tensors.
    """
    module_name, _, function = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"--model package.module:factory must name an importable function, but {spec!r} "
            f"cannot be found ({type(e).__name__}: {e}). Check the module is on PYTHONPATH."
        ) from e
    try:
        task = factory()
    except Exception as e:  # user code may raise anything
        raise ConfigError(
            f"the factory {spec!r} raised {type(e).__name__}: {e}. Fix the factory."
        ) from e
    if not isinstance(task, CustomTask) or not isinstance(task.model, nn.Module):
        raise ConfigError(
            f"the factory {spec!r} must return quide_search.CustomTask(model=nn.Module, "
            f"eval_inputs=..., eval_labels=...), but returned {type(task).__name__}."
        )
    if task.eval_inputs.shape[0] != task.eval_labels.shape[0] or task.eval_labels.shape[0] == 0:
        raise ConfigError(
            f"the factory {spec!r} must return eval_inputs and eval_labels of the same, "
            f"non-zero length, but got {task.eval_inputs.shape[0]} and "
            f"{task.eval_labels.shape[0]}."
        )
    return task
