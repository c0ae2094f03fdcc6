"""Measured T (``--latency measured``): each plan's model timed on the device, plain median.

Every trial's model is timed on its own: warm-up, then samples until their middle half
agrees within ``target_spread`` or ``max_repeats`` is reached (:func:`time_model`). The spread
is recorded with T. On a shared CPU two medians of one plan taken at different moments can
differ by tens of percent, so a study does not decide its outcome on these values alone: the
plans that decide it are timed again side by side at the end of a run (:mod:`.confirm`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from quide_search.latency._base import LatencyContext, LatencyResult, LatencySource, TimingTarget
from quide_search.latency._timer import time_model

if TYPE_CHECKING:
    from quide_search.plan import BitPlan

__all__ = ["MeasuredLatency"]


class MeasuredLatency(LatencySource):
    """T of each plan, timed now on the target's device.

    Args:
        context: How to time (``source`` must be ``measured``, or ``table`` when a table's
            own measurements use it).
        target: The model being searched.
    """

    def __init__(self, context: LatencyContext, target: TimingTarget) -> None:
        self.context = context
        self.target = target

    def latency(self, plan: BitPlan) -> LatencyResult:
        result = time_model(self.target.runnable(plan), self.target.example, self.context)
        return per_call(result, self.target.per_call)


def per_call(result: LatencyResult, calls: int) -> LatencyResult:
    """Return ``result`` divided by ``calls`` (T per generated token of a decode)."""
    if calls == 1:
        return result
    return dataclasses.replace(
        result,
        median_ms=result.median_ms / calls,
        samples=tuple(s / calls for s in result.samples),
    )
