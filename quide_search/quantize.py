"""Apply bit-plans with optimum-quanto and count what the result really stores.

This is the only module that imports ``optimum.quanto``: the rest of quide-search speaks in
plans and plain modules, so the backend can change without touching the search.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from optimum.quanto import freeze, quantize, requantize
from optimum.quanto import quantization_map as _quanto_map
from optimum.quanto.nn import quantize_module
from torch import nn

from quide_search.errors import PlanError, TrialEvaluationError
from quide_search.plan import BitPlan

__all__ = [
    "QUANTIZABLE_TYPES",
    "apply_plan",
    "model_bytes",
    "quantizable_layers",
    "kernel_paths",
    "quantization_map_of",
    "quantize_layer",
    "rebuild_quantized",
]

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
"""Layer types a plan may assign a qtype to (quanto has weight kernels or fallbacks for both)."""

# quanto names qfloat8 by its float8 format; plans use the short name.
_QUANTO_NAME = {"qint8": "qint8", "qint4": "qint4", "qint2": "qint2", "qfloat8": "qfloat8"}


def quantizable_layers(model: nn.Module) -> dict[str, int]:
    """Return module name -> weight element count for every Linear and Conv2d of ``model``.

    The order is the module order, which is also the order of the search space.
    """
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, QUANTIZABLE_TYPES):
            weight = module.weight
            assert isinstance(weight, torch.Tensor)  # Linear and Conv2d always have one
            counts[name] = int(weight.numel())
    return counts


def apply_plan(model: nn.Module, plan: BitPlan, *, inplace: bool = False) -> nn.Module:
    """Return a frozen copy of ``model`` with ``plan`` applied layer by layer.

    quanto quantizes in place, so by default the float model is deep-copied first: the cached
    float model stays untouched and every trial starts from the same weights.

    Args:
        model: The float model (left unchanged unless ``inplace``).
        plan: The per-layer qtypes; every named layer must be a quantizable layer of ``model``.
        inplace: Quantize ``model`` itself (for a model built only for this purpose).

    Raises:
        PlanError: If a plan layer is not a quantizable layer of ``model``.
        TrialEvaluationError: If quanto fails on a layer.
    """
    plan.validate_layers(quantizable_layers(model))
    target = model if inplace else copy.deepcopy(model)
    groups: dict[str, list[str]] = defaultdict(list)
    for name, qtype in plan.quantized_layers().items():
        groups[qtype].append(name)
    try:
        # no_grad, not inference_mode: quanto's qint4/qint2 packing sets version counters,
        # which inference tensors refuse.
        with torch.no_grad():
            for qtype, names in groups.items():
                quantize(target, weights=_QUANTO_NAME[qtype], include=names)
            freeze(target)
    except MemoryError as e:
        raise TrialEvaluationError(f"out of memory while quantizing: {e}") from e
    except Exception as e:  # any quanto failure on one plan fails that trial, not the run
        raise TrialEvaluationError(
            f"quanto could not apply the plan: {type(e).__name__}: {e}"
        ) from e
    return target


def quantize_layer(module: nn.Module, qtype: str) -> nn.Module:
    """Return a frozen quantized copy of one float layer (the layer itself is not changed).

    Quantizing one layer on its own gives the same module as quantizing it inside the whole
    model: quanto quantizes each layer's weights independently.

    Raises:
        TrialEvaluationError: If quanto fails on the layer.
    """
    try:
        with torch.no_grad():
            quantized = quantize_module(copy.deepcopy(module), weights=_QUANTO_NAME[qtype])
            if quantized is None:
                raise TypeError(f"{type(module).__name__} is not a layer quanto quantizes")
            quantized.freeze()
    except MemoryError as e:
        raise TrialEvaluationError(f"out of memory while quantizing: {e}") from e
    except Exception as e:  # any quanto failure on one layer fails that trial, not the run
        raise TrialEvaluationError(
            f"quanto could not quantize a {type(module).__name__} to {qtype}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return quantized


def kernel_paths(model: nn.Module) -> dict[str, str]:
    """Return, for each quantized layer of ``model``, how optimum-quanto will run it.

    ``kernel:NAME`` when quanto picked a low-bit kernel for the layer's weights (its optimized
    tensor types, or torch's int8 weight-pack matmul for int8 weights with bfloat16 activations
    on CPU); ``fallback`` when it dequantizes the weights and runs the float operation (every
    Conv2d, plain int2/int4 packing, int8 or float8 weights with float32 activations). The rules
    follow quanto 0.2.7's dispatch; a test checks them against the ops the profiler sees.
    """
    paths: dict[str, str] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        kind = type(weight).__name__
        if not kind.startswith(("Weight", "TinyGemm", "AWQ", "Marlin")):
            continue
        if kind.startswith(("TinyGemm", "AWQ", "Marlin")):
            short = kind.removesuffix("WeightQBitsTensor").removesuffix("QBytesTensor")
            paths[name] = "kernel:" + short.lower()
        elif _int8pack(module, weight):
            paths[name] = "kernel:int8pack"
        else:
            paths[name] = "fallback"
    return paths


def _int8pack(module: nn.Module, weight: Any) -> bool:
    scale = getattr(weight, "_scale", None)
    return (
        isinstance(module, nn.Linear)
        and type(weight).__name__ == "WeightQBytesTensor"
        and getattr(weight, "qtype", None) is not None
        and weight.qtype.name == "qint8"
        and weight.device.type == "cpu"
        and scale is not None
        and scale.dtype == torch.bfloat16
        and module.in_features % 4 == 0
    )


def quantization_map_of(model: nn.Module) -> dict[str, dict[str, str]]:
    """Return quanto's own quantization map of a quantized model (for export)."""
    return _quanto_map(model)


def save_transformers_quantized(model: nn.Module, folder: str) -> None:
    """Save a frozen quantized transformers causal LM the way optimum-quanto documents it.

    ``QuantizedModelForCausalLM.save_pretrained`` writes ``config.json``, ``model.safetensors``
    and ``quanto_qmap.json``; ``QuantizedModelForCausalLM.from_pretrained(folder)`` reloads it.
    """
    from optimum.quanto import QuantizedModelForCausalLM

    QuantizedModelForCausalLM(model).save_pretrained(folder)


def model_bytes(model: nn.Module) -> int:
    """Return the bytes the model stores: every tensor of its state dict, counted once.

    For a frozen quanto model the state dict holds the packed integer data, the scales and
    shifts, and every tensor left in float: exactly what a checkpoint of it contains. Tensors
    that share storage (tied weights) are counted once.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def rebuild_quantized(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    quantization_map: Mapping[str, Mapping[str, str]],
) -> nn.Module:
    """Quantize a float ``model`` skeleton in place and load quantized weights into it.

    A thin wrapper over ``optimum.quanto.requantize`` that checks the map first.

    Raises:
        PlanError: If the map names a layer the model does not have.
    """
    layers = quantizable_layers(model)
    for name in quantization_map:
        if name not in layers:
            raise PlanError(f"quantization_map names layer {name!r}, which the model lacks.")
    with torch.no_grad():
        requantize(
            model,
            dict(state_dict),
            {k: dict(v) for k, v in quantization_map.items()},
            device=torch.device("cpu"),
        )
    return model
