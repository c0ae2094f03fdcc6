"""One hooked forward pass of the float model: what each layer receives and how much it does.

The per-layer table times each layer on the inputs it receives here; the analytic estimate
counts each layer's multiply-adds and activations from the shapes seen here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LayerShape", "layer_inputs", "layer_shapes"]


@dataclass(frozen=True)
class LayerShape:
    """Per-sample work of one quantizable layer, read off one forward pass."""

    name: str
    macs: int
    input_elems: int
    output_elems: int


def layer_inputs(
    model: nn.Module, example: torch.Tensor, names: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """Run ``example`` once and return the positional inputs each named layer received."""
    modules = dict(model.named_modules())
    found: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name in names:

        def hook(module: nn.Module, args: Any, name: str = name) -> None:
            found.setdefault(name, tuple(a.detach().clone() for a in args))

        hooks.append(modules[name].register_forward_pre_hook(hook))
    _run_hooked(model, example, hooks)
    return found


def layer_shapes(
    model: nn.Module, example: torch.Tensor, names: Sequence[str]
) -> list[LayerShape]:
    """Run ``example`` through ``model`` once and record each named layer's work per sample."""
    batch = int(example.shape[0])
    modules = dict(model.named_modules())
    found: dict[str, LayerShape] = {}
    hooks = []
    for name in names:

        def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            out = output if isinstance(output, torch.Tensor) else output[0]
            found[name] = LayerShape(
                name=name,
                macs=_macs(module, out) // batch,
                input_elems=int(args[0].numel()) // batch,
                output_elems=int(out.numel()) // batch,
            )

        hooks.append(modules[name].register_forward_hook(hook))
    _run_hooked(model, example, hooks)
    return [found[n] for n in names if n in found]


def _run_hooked(model: nn.Module, example: torch.Tensor, hooks: list[Any]) -> None:
    """Run one forward pass without autograd, then remove ``hooks`` (also when it fails)."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return int(output.numel()) * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(output.numel()) * (module.in_channels // module.groups) * kh * kw
    weight = getattr(module, "weight", None)
    if weight is None:
        return int(output.numel())
    if weight.dim() == 2:  # a matrix either way round (transformers' Conv1D holds (in, out))
        return int(output.numel()) * (int(weight.numel()) // int(output.shape[-1]))
    return int(output.numel()) * int(weight[0].numel())
