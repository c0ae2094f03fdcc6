"""Your own model: ``--model package.module:factory``.

The factory takes no arguments and returns a :class:`CustomTask`: the float model, its eval
data, and optionally calibration data, held-out test data (else half the eval data is held
out), a latency example and a score function. quide-search
quantizes every ``nn.Linear`` and ``nn.Conv2d`` of the model. Example::

    # mytask.py, in the folder quide-search runs from (or on PYTHONPATH)
    from quide_search import CustomTask

    def make() -> CustomTask:
        model = build_and_load_my_model()
        x, y = load_my_eval_arrays()  # tensors, numpy arrays or lists
        return CustomTask(model=model, eval_inputs=x, eval_labels=y)

    # quide-search run --model mytask:make
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quide_search.errors import ConfigError
from quide_search.tasks.catalog import is_factory_spec
from quide_search.tasks.data import Split, Splits

__all__ = ["CustomTask", "ScoreFn", "is_factory_spec", "load_factory"]

ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
"""``score(model, inputs, labels) -> P in [0, 1]``, called under ``torch.no_grad()``."""


@dataclass(frozen=True)
class CustomTask:
    """What a ``--model package.module:factory`` factory returns.

    The data fields take torch tensors, numpy arrays or (nested) lists; they are converted once,
    here: float inputs become float32 (float16 and bfloat16 tensors are kept), integer inputs
    (token ids) int64, and labels must be integer class indices unless a ``score`` function
    reads them.

    Attributes:
        model: The float model (left unchanged; quantized copies are made per trial).
        eval_inputs: Inputs of the eval split, batched along dimension 0.
        eval_labels: Their labels (class indices for the default top-1 score).
        calib_inputs: Calibration inputs (default: none).
        calib_labels: Their labels.
        test_inputs: Inputs of the held-out test split that scores the finalists at the end
            of a run, never the search (default: a seeded half of the eval data is held out,
            and the search scores the other half).
        test_labels: Their labels.
        example: The latency input (default: the first eval input, as a batch of one).
        score: P of a model on inputs and labels, in [0, 1] (default: top-1 accuracy).
        name: Dataset name in records (default: ``custom``).
    """

    model: nn.Module
    eval_inputs: torch.Tensor
    eval_labels: torch.Tensor
    calib_inputs: torch.Tensor | None = None
    calib_labels: torch.Tensor | None = None
    test_inputs: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    example: torch.Tensor | None = None
    score: ScoreFn | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        for field_name in ("eval_inputs", "calib_inputs", "test_inputs", "example"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, _tensor(value, field_name, labels=False))
        for field_name in ("eval_labels", "calib_labels", "test_labels"):
            value = getattr(self, field_name)
            if value is not None:
                converted = _tensor(value, field_name, labels=self.score is None)
                object.__setattr__(self, field_name, converted)

    def splits(self) -> Splits:
        """Return the task's data as quide-search splits (no train split).

        Raises:
            ConfigError: If only one of test_inputs and test_labels is given, or no test data
                is given and the eval data has fewer than 2 samples to hold half of out.
        """
        empty = Split(self.eval_inputs[:0], self.eval_labels[:0])
        calib = empty
        if self.calib_inputs is not None and self.calib_labels is not None:
            calib = Split(self.calib_inputs, self.calib_labels)
        eval_split = Split(self.eval_inputs, self.eval_labels)
        if (self.test_inputs is None) != (self.test_labels is None):
            given = "test_inputs" if self.test_inputs is not None else "test_labels"
            raise ConfigError(
                f"CustomTask needs test_inputs and test_labels together, but only {given} was "
                "given. Pass both, or neither to hold out half of the eval data."
            )
        if self.test_inputs is not None and self.test_labels is not None:
            test = Split(self.test_inputs, self.test_labels)
        else:
            eval_split, test = _hold_out_half(eval_split)
        return Splits(
            name=self.name,
            train=empty,
            calib=calib,
            eval=eval_split,
            test=test,
            input_shape=tuple(self.eval_inputs.shape[1:]),
            num_classes=int(self.eval_labels.max()) + 1 if self.eval_labels.numel() else 0,
            seed=0,
        )


def _hold_out_half(split: Split) -> tuple[Split, Split]:
    """Cut ``split`` by a seeded permutation (seed 0) into a search half and a test half."""
    n = len(split)
    if n < 2:
        raise ConfigError(
            "CustomTask.eval_inputs must hold at least 2 samples when no test_inputs are given "
            f"(half is held out as the test split), but holds {n}. Pass more eval data, or "
            "test_inputs and test_labels."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    keep, held = order[: n - n // 2], order[n - n // 2 :]
    return (
        Split(split.inputs[keep].contiguous(), split.labels[keep].contiguous()),
        Split(split.inputs[held].contiguous(), split.labels[held].contiguous()),
    )


def _tensor(value: object, field_name: str, *, labels: bool) -> torch.Tensor:
    """``value`` as a tensor of the dtype quide-search scores with.

    Raises:
        ConfigError: For data that is not numeric, or class labels that are not integers.
    """
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"CustomTask.{field_name} must be a tensor, a numpy array or a list of numbers, but "
            f"got {type(value).__name__} that torch cannot read ({e})."
        ) from e
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ConfigError(
            f"CustomTask.{field_name} must hold real numbers, but holds {tensor.dtype}."
        )
    if labels:
        if tensor.is_floating_point():
            raise ConfigError(
                f"CustomTask.{field_name} must hold integer class indices for top-1 accuracy, "
                f"but holds {tensor.dtype}. Convert them (labels.astype(int)), or pass "
                "score=... to read other labels."
            )
        return tensor.long()
    if tensor.dtype == torch.float64:
        return tensor.float()  # numpy's default float: the model's weights are float32
    return tensor if tensor.is_floating_point() else tensor.long()


def load_factory(spec: str) -> CustomTask:
    """Import and call the factory named by ``spec``; check what it returns.

    Raises:
        ConfigError: If the module or function cannot be found, the call fails, or it does
            not return a CustomTask with a module and matching eval tensors.
    """
    module_name, _, function = spec.partition(":")
    # The working folder is importable, as it is for `python -m` and servers like uvicorn.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"--model package.module:factory must name an importable function, but {spec!r} "
            f"cannot be found ({type(e).__name__}: {e}). Run from the folder that holds it, "
            "or put it on PYTHONPATH."
        ) from e
    try:
        task = factory()
    except ConfigError:
        raise  # CustomTask's own check of the data: it names the field
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
