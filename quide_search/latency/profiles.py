"""Device profiles of the analytic latency estimate, and the forms ``--latency`` takes.

Torch-free, so the configuration can check ``--latency`` before any heavy import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from quide_search.errors import ConfigError, did_you_mean

__all__ = ["PROFILES", "SOURCE_FORMS", "DeviceProfile", "parse_source", "profile"]

SOURCE_FORMS = "'auto', 'measured', 'table', 'table:PATH' or 'model:PROFILE'"


@dataclass(frozen=True)
class DeviceProfile:
    """What the analytic estimate needs to know about a device.

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


PROFILES: Mapping[str, DeviceProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            DeviceProfile(
                name="cpu-epyc-2c",
                bandwidth_gbps=49.1,
                peak_gflops=181.0,
                activation_bytes=4,
                layer_overhead_us=5.0,
                sources=(
                    "2 vCPUs of the shared AMD EPYC VM this project was first measured on, "
                    "float32 activations",
                    "bandwidth: 49.1 GB/s, median of torch.Tensor.copy_ of 256 MiB, 2 threads, "
                    "read + write bytes (benchmarks/device_profile.py, 2026-11-26)",
                    "peak: 181 GFLOP/s, median of a 2048x2048 float32 matmul, 2 threads (same "
                    "script and date)",
                    "overhead: 5 us per layer, the order of PyTorch's eager dispatch on a CPU",
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
)


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


def parse_source(spec: str) -> tuple[str, str | None]:
    """Split a ``--latency`` value into its kind and argument, checking both.

    Returns:
        ``("auto", None)``, ``("measured", None)``, ``("table", None | PATH)`` or
        ``("model", PROFILE)``.

    Raises:
        ConfigError: For any other form, or an unknown profile.

    Example:
        >>> parse_source("model:cpu-epyc-2c"), parse_source("table")
        (('model', 'cpu-epyc-2c'), ('table', None))
    """
    from quide_search.latency._base import SourceKind

    kind, _, arg = spec.partition(":")
    if kind in ("auto", SourceKind.MEASURED) and not arg and ":" not in spec:
        return kind, None
    if kind == SourceKind.TABLE and (arg or ":" not in spec):
        return kind, arg or None
    if kind == SourceKind.MODEL and arg:
        profile(arg)
        return kind, arg
    raise ConfigError(f"--latency must be {SOURCE_FORMS}, but got {spec!r}.")
