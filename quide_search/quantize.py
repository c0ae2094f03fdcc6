"""Apply bit-plans with optimum-quanto and count what the result really stores.

This is the only module that imports ``optimum.quanto``: the rest of quide-search speaks in
plans and plain modules, so the backend can change without touching the search.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
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
    "dequantized_twin",
    "model_bytes",
    "quantizable_layers",
    "kernel_hazard",
    "kernel_paths",
    "quantization_map_of",
    "quantize_layer",
    "rebuild_quantized",
    "storage_key",
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


class _DequantizedLinear(nn.Linear):
    """quanto's fallback for a Linear, with the weight dequantized once instead of per call.

    quanto's fallback runs ``matmul(x.reshape(-1, in), W.t())``, reshapes, then adds the bias
    (not ``F.linear``, whose fused add rounds differently); this does the same, so the output
    is bit for bit quanto's.
    """

    cast_input: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast_input:  # quanto's int8/float8 matmul casts activations to the scale dtype
            x = x.to(self.weight.dtype)
        if x.dim() == 2:
            out = torch.mm(x, self.weight.t())
        else:
            shape = (*x.shape[:-1], self.out_features)
            out = torch.mm(x.reshape(-1, self.in_features), self.weight.t()).reshape(shape)
        # In place: the same additions, without allocating a second output.
        return out if self.bias is None else out.add_(self.bias)


def dequantized_twin(quantized: nn.Module) -> nn.Module | None:
    """Return a float module that computes what quanto's fallback computes for ``quantized``.

    Where quanto has no kernel it dequantizes the weight on every call and runs the float
    operation; a module holding the dequantized weight skips that work. Evaluation uses it,
    latency measurement never does (the per-call dequantization is part of quanto's real cost
    there). The twin is returned only when it reproduces ``quantized`` bit for bit on a probe
    input; None when the layer runs a kernel, or quanto's arithmetic differs from the twin's.
    """
    if kernel_paths(quantized).get("") != "fallback":
        return None
    with torch.no_grad():
        qweight: Any = quantized.qweight  # a quanto tensor
        weight = nn.Parameter(qweight.dequantize().detach().clone(), False)
        twin: nn.Module
        if isinstance(quantized, nn.Linear):
            twin = _DequantizedLinear(quantized.in_features, quantized.out_features, False, "meta")
            twin.cast_input = type(qweight).__name__ == "WeightQBytesTensor"
        elif isinstance(quantized, nn.Conv2d):
            # quanto's Conv2d fallback is F.conv2d on the dequantized weight.
            conv: Any = quantized  # torch types these as tuples of any length
            twin = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding, conv.dilation, conv.groups, False, conv.padding_mode, device="meta",
            )  # fmt: skip
        else:
            return None
        twin.weight = weight
        twin.bias = quantized.bias
        probe = _probe(quantized, weight)
        return twin if torch.equal(twin(probe), quantized(probe)) else None


def _probe(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A small seeded input for ``layer`` (the global RNG is left alone)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        dh, dw = layer.dilation
        shape: tuple[int, ...] = (2, layer.in_channels, dh * (kh - 1) + 4, dw * (kw - 1) + 4)
    else:
        shape = (3, weight.shape[1])
    probe = torch.randn(shape, generator=generator, dtype=torch.float32)
    return probe.to(device=weight.device, dtype=weight.dtype)


def kernel_hazard(model: nn.Module, device: torch.device, qtypes: Sequence[str]) -> str | None:
    """Return why a qtype choice would crash optimum-quanto on this model and device, or None.

    quanto 0.2.7 runs int4 weights of a float16 model on CUDA through its AWQ kernels. Their
    GEMV path (fewer than 8 rows: batch-1 decoding, or a latency pass at batch 1) raised
    "CUDA error: an illegal memory access" on an H200 (benchmarks/RESULTS.md, GPU check).
    That error poisons the process's CUDA context, so it cannot be a failed trial: the whole
    run would end. bfloat16 takes quanto's tinygemm kernel instead, which ran.
    """
    if device.type != "cuda" or "qint4" not in qtypes:
        return None
    if not any(p.dtype == torch.float16 for p in model.parameters()):
        return None
    return (
        "--bits 4 on a float16 model on CUDA runs optimum-quanto 0.2.7's AWQ int4 kernels, "
        "whose batch-1 path crashed the process with 'CUDA error: an illegal memory access'. "
        "Load the model in bfloat16 (quanto then uses its tinygemm kernel), run on the CPU, or "
        "leave 4 out of --bits."
    )


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
        key = storage_key(tensor)
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's data starts: equal for tensors that share it (tied weights)."""
    return (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))


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
