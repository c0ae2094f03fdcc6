"""An analytic latency estimate for a target device (``--latency model:PROFILE``).

Measured T on a machine without fast low-bit kernels mostly measures dequantization overhead.
The estimate says instead what a device with real kernels would take: for each quantizable
layer, the larger of the time to move its bytes (its stored weights, exactly the bytes behind
C, plus its input and output activations) and the time to do its multiply-adds at the
device's peak rate for the activation dtype (weight-only quantization computes in the
activation dtype), plus a fixed per-layer overhead. The same plan always gets the same T.
Each profile cites where its numbers come from (:mod:`.profiles`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from quide_search.latency._base import LatencyContext, LatencyResult, LatencySource, TimingTarget
from quide_search.latency._probe import LayerShape
from quide_search.latency.profiles import DeviceProfile, profile

if TYPE_CHECKING:
    from quide_search.plan import BitPlan

__all__ = ["AnalyticLatency", "estimate_ms"]


class AnalyticLatency(LatencySource):
    """T estimated for the device profile named in ``context.source`` (``model:NAME``).

    Args:
        context: The estimate's conditions (its profile and batch size).
        target: The model being searched (its per-layer bytes and shapes).
    """

    def __init__(self, context: LatencyContext, target: TimingTarget) -> None:
        self.context = context
        self.device = profile(context.source.removeprefix("model:"))
        self.shapes = target.shapes()
        self._layer_bytes = target.layer_bytes

    def latency(self, plan: BitPlan) -> LatencyResult:
        estimate = estimate_ms(
            self._layer_bytes(plan), self.shapes, self.device, self.context.batch_size
        )
        return LatencyResult(median_ms=estimate)


def estimate_ms(
    weight_bytes: Mapping[str, int],
    shapes: list[LayerShape],
    device: DeviceProfile,
    batch_size: int,
) -> float:
    """Return the estimated milliseconds of one forward pass at ``batch_size``.

    Args:
        weight_bytes: Each layer's stored bytes under the plan (what its state dict holds).
        shapes: Each layer's per-sample multiply-adds and activation elements.
        device: The target device.
        batch_size: Samples per pass.
    """
    total_s = 0.0
    for shape in shapes:
        activations = (shape.input_elems + shape.output_elems) * batch_size
        moved = weight_bytes[shape.name] + activations * device.activation_bytes
        memory_s = moved / (device.bandwidth_gbps * 1e9)
        compute_s = 2 * shape.macs * batch_size / (device.peak_gflops * 1e9)
        total_s += max(memory_s, compute_s) + device.layer_overhead_us * 1e-6
    return total_s * 1e3
