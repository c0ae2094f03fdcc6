"""Per-layer time inside one whole-model pass, read by forward hooks on the layers.

The per-layer latency table is built from these: each layer's time is read while the whole
model runs, with its real neighbours, caches and dispatch around it, instead of timing the
layer alone (which missed random plans by 6-56 % on our 2-core machines: most layers change
a model's T by 0-5 %, inside the noise of a lone timing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import perf_counter_ns
from typing import Any

import torch
from torch import nn

__all__ = ["layer_times"]


def layer_times(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    example: torch.Tensor,
    *,
    per_call: int = 1,
    cuda: bool = False,
) -> dict[str, float]:
    """Run ``model(example)`` once untimed, then once with each layer's time recorded.

    Args:
        model: The whole model as one timed call runs it.
        layers: Layer name -> the module that runs it inside ``model`` (hooks go on these).
        example: The timed call's input.
        per_call: Divide each time by this (the tokens a decode generates), as T is.
        cuda: Synchronise the device at each hook, so the clock reads finished kernels.

    Returns:
        Layer name -> ms spent inside that layer during the hooked pass (summed over its
        calls, divided by ``per_call``); 0.0 for a layer the pass never reaches.

    Raises:
        Whatever the forward raises (the caller turns it into a failed measurement).
    """
    spent = dict.fromkeys(layers, 0)
    started: dict[str, int] = {}
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else _nothing
    handles = []
    with torch.no_grad():
        model(example)  # untimed: the plan's layers were just swapped in
        try:
            for name, module in layers.items():
                handles.append(module.register_forward_pre_hook(_start(name, started, sync)))
                handles.append(module.register_forward_hook(_stop(name, started, spent, sync)))
            model(example)
        finally:
            for handle in handles:
                handle.remove()
    return {name: ns / 1e6 / per_call for name, ns in spent.items()}


def _nothing() -> None:
    return None


def _start(name: str, started: dict[str, int], sync: Callable[[], None]) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        sync()
        started[name] = perf_counter_ns()

    return hook


def _stop(
    name: str, started: dict[str, int], spent: dict[str, int], sync: Callable[[], None]
) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        sync()
        spent[name] += perf_counter_ns() - started[name]

    return hook
