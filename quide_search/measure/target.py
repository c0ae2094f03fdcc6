"""What a latency source may ask of the model being searched: a :class:`TimingTarget`."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from quide_search.latency import TimingTarget
from quide_search.latency._probe import layer_shapes
from quide_search.latency._profiler import layer_times
from quide_search.measure.builder import PlanBuilder
from quide_search.tasks.models.causal_lm import GreedyDecode

if TYPE_CHECKING:
    from collections.abc import Mapping

    from quide_search.measure.assembly import Assembler
    from quide_search.plan import BitPlan
    from quide_search.tasks.task import Task

__all__ = ["timing_target"]

_PROFILED_RUNS = 3
"""Calls of a whole model each profiled pass averages (its runtime profiles every node)."""


def timing_target(
    task: Task,
    cache: Assembler,
    batch_size: int,
    device: torch.device,
    *,
    excluded: Mapping[str, Mapping[str, str]] | None = None,
) -> TimingTarget:
    """What latency sources may ask of ``task``'s model, built from ``cache`` (``excluded``:
    layer -> the precisions it cannot run)."""
    example = _timed_input(task, batch_size, device)
    # One decoding step reads every weight for one new token: what the analytic estimate
    # counts for a causal LM.
    step = example[:, :1] if task.decode is not None else example
    layers = list(cache.layers)
    decode = task.decode
    per_call = decode["new_tokens"] if decode is not None else 1

    def call(model: torch.nn.Module) -> torch.nn.Module:
        if decode is None:
            return model
        return GreedyDecode(model, decode["new_tokens"], decode["pad_token_id"])

    def runnable(plan: BitPlan) -> torch.nn.Module:
        return call(cache.assemble(plan, exact=True))

    def layer_profile(plan: BitPlan) -> dict[str, float]:
        if isinstance(cache, PlanBuilder):  # a whole model: the runtime's own profiler
            per_call_ms = cache.layer_profile(plan, lambda m: call(m)(example), _PROFILED_RUNS)
            return {name: ms / per_call for name, ms in per_call_ms.items()}
        model = cache.assemble(plan, exact=True)
        # The assembled view holds the plan's own modules: the hooks go on those.
        modules = {name: model.get_submodule(name) for name in layers}
        return layer_times(call(model), modules, example, per_call=per_call,
                           cuda=device.type == "cuda")  # fmt: skip

    return TimingTarget(
        runnable=runnable,
        example=example,
        per_call=per_call,
        layers=layers,
        layer_profile=layer_profile,
        layer_bytes=cache.layer_bytes,
        shapes=partial(layer_shapes, cache.model, step, layers),
        excluded={name: tuple(refused) for name, refused in (excluded or {}).items()},
    )


def _timed_input(task: Task, batch_size: int, device: torch.device) -> torch.Tensor:
    """Real eval samples as the timed input, repeated if the split is smaller than the batch;
    a causal LM's prompt is the start of an eval window."""
    inputs = task.splits.eval.inputs
    if task.decode is not None:
        inputs = inputs[:, : task.decode["prompt_tokens"]]
    if task.example is not None:
        inputs = task.example
    reps = -(-batch_size // inputs.shape[0])
    return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:batch_size].to(device)
