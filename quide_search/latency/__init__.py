"""Latency T: the sources a study takes it from, and the confirmation of its finalists.

Owns how T is obtained: :class:`LatencySource` and its implementations, one per file
(``measured``: timed on the device; ``table``: per-layer changes read in whole-model runs,
summed, checked before use by ``table_check``; ``analytic``: estimated for a device profile),
the timing of one model (``_timer``) and of each layer inside it (``_profiler``), and the
interleaved re-timing of the plans that decide a study (``confirm``). Sources see the model
only through a :class:`TimingTarget` that the scorer gives them.

Layer: latency (above the foundation modules; below backends and all the rest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.latency._base import (
        SAMPLE_MS,
        LatencyContext,
        LatencyResult,
        LatencySource,
        SourceKind,
        TimingTarget,
    )
    from quide_search.latency._timer import torch_threads
    from quide_search.latency.analytic import AnalyticLatency
    from quide_search.latency.confirm import confirm_latency
    from quide_search.latency.measured import MeasuredLatency
    from quide_search.latency.profiles import PROFILES, parse_source
    from quide_search.latency.settings import latency_context, make_source
    from quide_search.latency.table import LatencyTable, TableLatency, read_table
    from quide_search.latency.table_check import TableCheck

__all__ = [
    "PROFILES",
    "SAMPLE_MS",
    "AnalyticLatency",
    "LatencyContext",
    "LatencyResult",
    "LatencySource",
    "LatencyTable",
    "MeasuredLatency",
    "SourceKind",
    "TableCheck",
    "TableLatency",
    "TimingTarget",
    "confirm_latency",
    "latency_context",
    "make_source",
    "parse_source",
    "read_table",
    "torch_threads",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "SAMPLE_MS": "quide_search.latency._base",
        "LatencyContext": "quide_search.latency._base",
        "LatencyResult": "quide_search.latency._base",
        "LatencySource": "quide_search.latency._base",
        "SourceKind": "quide_search.latency._base",
        "TimingTarget": "quide_search.latency._base",
        "torch_threads": "quide_search.latency._timer",
        "AnalyticLatency": "quide_search.latency.analytic",
        "confirm_latency": "quide_search.latency.confirm",
        "MeasuredLatency": "quide_search.latency.measured",
        "PROFILES": "quide_search.latency.profiles",
        "parse_source": "quide_search.latency.profiles",
        "latency_context": "quide_search.latency.settings",
        "make_source": "quide_search.latency.settings",
        "LatencyTable": "quide_search.latency.table",
        "TableLatency": "quide_search.latency.table",
        "read_table": "quide_search.latency.table",
        "TableCheck": "quide_search.latency.table_check",
    },
)
