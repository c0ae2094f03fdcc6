"""Measuring plans: assemble a plan's model, score P, take T, count stored bytes.

Owns the layer cache trials are assembled from (``assembly``), the evaluator and its chunk
schedule (``evaluator``, ``chunking``), the record of one measurement (``measurement``) and
the :class:`Scorer` that puts them together under a study's protocol (``scorer``). It knows
nothing of Optuna.

Layer: measure (imports tasks, backends, latency and the foundation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.measure.assembly import LayerCache
    from quide_search.measure.device import resolve_device
    from quide_search.measure.evaluator import Evaluator
    from quide_search.measure.measurement import GateUnreachable, Measurement
    from quide_search.measure.scorer import Scorer

__all__ = ["Evaluator", "GateUnreachable", "LayerCache", "Measurement", "Scorer",
           "resolve_device"]  # fmt: skip

__getattr__ = lazy_exports(
    __name__,
    {
        "LayerCache": "quide_search.measure.assembly",
        "resolve_device": "quide_search.measure.device",
        "Evaluator": "quide_search.measure.evaluator",
        "GateUnreachable": "quide_search.measure.measurement",
        "Measurement": "quide_search.measure.measurement",
        "Scorer": "quide_search.measure.scorer",
    },
)
