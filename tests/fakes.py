"""A deterministic fake latency source: T from the plan's bits, no clock."""

from __future__ import annotations

from quide_search.latency import LatencyContext, LatencyResult, LatencySource
from quide_search.plan import BitPlan, weight_bits

__all__ = ["FakeLatency"]


class FakeLatency(LatencySource):
    """T = 1 ms + 0.01 ms per weight bit of each quantized layer (float layers: 0.5 ms).

    Deterministic and instant, so tests of search and study logic take no timing noise.
    ``calls`` counts the plans it was asked for.
    """

    def __init__(self) -> None:
        self.context = LatencyContext(
            source="model:fake", device="fake", method="analytic", batch_size=1, threads=1,
            torch_version="-", sample_ms=None,
        )  # fmt: skip
        self.calls = 0

    def latency(self, plan: BitPlan) -> LatencyResult:
        self.calls += 1
        total = 1.0
        for precision in plan.layers.values():
            total += 0.5 if precision == "float" else 0.01 * weight_bits(precision)
        return LatencyResult(median_ms=total)
