"""An analytic latency estimate for a target device (``--latency model:NAME``).

Measured T on a machine without fast low-bit kernels mostly measures dequantization overhead,
and its noise makes searches hard to repeat. The model instead estimates what a device with
real kernels would take: for each quantizable layer, the larger of the time to move its bytes
(its stored weights, exactly the bytes behind C, plus its input and output activations) and the
time to do its multiply-adds at the device's peak rate for the activation dtype (weight-only
quantization computes in the activation dtype), plus a fixed per-layer overhead. It is
deterministic: the same plan always gets the same T.

Each profile cites where its numbers come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quide_search.errors import ConfigError, did_you_mean
from quide_search.quantize import model_bytes, quantizable_layers

__all__ = [
    "PROFILES",
    "DeviceProfile",
    "LayerShape",
    "estimate_ms",
    "layer_weight_bytes",
    "latency_source",
    "layer_shapes",
    "profile",
    "run_hooked",
]


@dataclass(frozen=True)
class DeviceProfile:
    """What the estimate needs to know about a device.

    Attributes:
        name: Name used in ``--latency model:NAME``.
        bandwidth_gbps: Sustained memory bandwidth, GB/s.
        peak_gflops: Peak multiply-add rate of the activation dtype, GFLOP/s (2 per MAC).
        activation_bytes: Bytes per activation element (4 for float32, 2 for float16).
        layer_overhead_us: Fixed cost per layer (dispatch, kernel launch), microseconds.
        sources: Where each number comes from.
    """

    name: str
    bandwidth_gbps: float
    peak_gflops: float
    activation_bytes: int
    layer_overhead_us: float
    sources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain JSON types (recorded in the study's protocol)."""
        return {
            "name": self.name,
            "bandwidth_gbps": self.bandwidth_gbps,
            "peak_gflops": self.peak_gflops,
            "activation_bytes": self.activation_bytes,
            "layer_overhead_us": self.layer_overhead_us,
            "sources": list(self.sources),
        }


PROFILES: Mapping[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="cpu-epyc-2c",
            bandwidth_gbps=49.1,
            peak_gflops=181.0,
            activation_bytes=4,
            layer_overhead_us=5.0,
            sources=(
                "2 vCPUs of an AMD EPYC with AVX-512 and AVX512-VNNI (this project's CI "
                "machine), float32 activations",
                "bandwidth: 49.1 GB/s, median of torch.Tensor.copy_ of 256 MiB, 2 threads, read "
                "+ write bytes (benchmarks/device_profile.py, RESULTS.md, 2026-11-26)",
                "peak: 181 GFLOP/s, median of a 2048x2048 float32 matmul, 2 threads (same "
                "script and date); AMD documents 2 x 256-bit FMA pipes per Zen 4 core, i.e. 32 "
                "float32 FLOP per cycle per core (Software Optimization Guide for AMD Family "
                "19h Processors)",
                "overhead: 5 us per layer, the order of PyTorch's eager dispatch cost on CPU",
            ),
        ),
        DeviceProfile(
            name="gpu-h100-sxm",
            bandwidth_gbps=3350.0,
            peak_gflops=989_000.0,
            activation_bytes=2,
            layer_overhead_us=5.0,
            sources=(
                "NVIDIA H100 SXM5, float16/bfloat16 activations",
                "bandwidth: 3.35 TB/s HBM3 (NVIDIA H100 Tensor Core GPU datasheet)",
                "peak: 989 TFLOP/s dense FP16/BF16 tensor core (same datasheet)",
                "overhead: 5 us per layer, the order of a CUDA kernel launch in eager mode",
            ),
        ),
    )
}


def profile(name: str) -> DeviceProfile:
    """Return the profile ``name``.

    Raises:
        ConfigError: For an unknown name, with close matches and the list.
    """
    if name not in PROFILES:
        raise ConfigError(
            f"--latency model:NAME must name a device profile, but got {name!r}."
            + did_you_mean(name, list(PROFILES))
            + f" Profiles: {', '.join(PROFILES)}."
        )
    return PROFILES[name]


def latency_source(source: str) -> DeviceProfile | None:
    """Check a ``--latency`` value: the profile for ``model:NAME``, else None (measured).

    ``table`` and ``table:PATH`` are measured too, layer by layer (see ``latency_table``).

    Raises:
        ConfigError: For any other value, or an unknown profile.
    """
    if source in ("measured", "table") or (source.startswith("table:") and len(source) > 6):
        return None
    if not source.startswith("model:"):
        raise ConfigError(
            "--latency must be 'measured', 'table', 'table:PATH' or 'model:NAME', but got "
            f"{source!r}."
        )
    return profile(source.removeprefix("model:"))


@dataclass(frozen=True)
class LayerShape:
    """Per-sample work of one quantizable layer, read off one forward pass."""

    name: str
    macs: int
    input_elems: int
    output_elems: int


def layer_shapes(model: nn.Module, example: torch.Tensor) -> list[LayerShape]:
    """Run ``example`` through ``model`` once and record each quantizable layer's work."""
    batch = int(example.shape[0])
    modules = dict(model.named_modules())
    found: dict[str, LayerShape] = {}
    hooks = []
    for name in quantizable_layers(model):

        def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            out = output if isinstance(output, torch.Tensor) else output[0]
            found[name] = LayerShape(
                name=name,
                macs=_macs(module, out) // batch,
                input_elems=int(args[0].numel()) // batch,
                output_elems=int(out.numel()) // batch,
            )

        hooks.append(modules[name].register_forward_hook(hook))
    run_hooked(model, example, hooks)
    return [found[n] for n in quantizable_layers(model) if n in found]


def run_hooked(model: nn.Module, example: torch.Tensor, hooks: list[Any]) -> None:
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
    return int(output.numel()) * (int(weight[0].numel()) if weight is not None else 1)


def estimate_ms(
    weight_bytes: Mapping[str, int],
    shapes: list[LayerShape],
    device: DeviceProfile,
    batch_size: int,
) -> float:
    """Return the estimated milliseconds of one forward pass at ``batch_size``.

    ``weight_bytes`` maps each layer to the bytes its state dict really stores under the plan
    (see :func:`layer_weight_bytes`); the scorer keeps them per (layer, qtype), so a trial's
    estimate reads no tensors.
    """
    total_s = 0.0
    for shape in shapes:
        activations = (shape.input_elems + shape.output_elems) * batch_size
        moved = weight_bytes[shape.name] + activations * device.activation_bytes
        memory_s = moved / (device.bandwidth_gbps * 1e9)
        compute_s = 2 * shape.macs * batch_size / (device.peak_gflops * 1e9)
        total_s += max(memory_s, compute_s) + device.layer_overhead_us * 1e-6
    return total_s * 1e3


def layer_weight_bytes(model: nn.Module, shapes: list[LayerShape]) -> dict[str, int]:
    """Return the bytes each of ``shapes``' layers stores in ``model`` (quantized or not)."""
    modules = dict(model.named_modules())
    return {shape.name: model_bytes(modules[shape.name]) for shape in shapes}
