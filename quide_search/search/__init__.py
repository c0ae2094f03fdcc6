"""Searching plans: what Optuna optimises and how it is steered.

Owns the search space and its layer groups (``space``), the objective that measures a
suggested plan and records it as a trial (``objective``), the samplers (``samplers``), the
per-layer sensitivity (``sensitivity``) and the warm-start plans built from it
(``warmstart``), and the stop switch the objective checks (``stop``; the study layer's loop
sets it from signals). It measures through :mod:`quide_search.measure` and knows nothing of
storage or processes.

Layer: search (imports settings, measure and below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.search.objective import PlanObjective, SearchSettings
    from quide_search.search.samplers import SAMPLERS, make_sampler
    from quide_search.search.space import group_layers, trial_plan

__all__ = ["SAMPLERS", "PlanObjective", "SearchSettings", "group_layers", "make_sampler",
           "trial_plan"]  # fmt: skip

__getattr__ = lazy_exports(
    __name__,
    {
        "PlanObjective": "quide_search.search.objective",
        "SearchSettings": "quide_search.search.objective",
        "SAMPLERS": "quide_search.search.samplers",
        "make_sampler": "quide_search.search.samplers",
        "group_layers": "quide_search.search.space",
        "trial_plan": "quide_search.search.space",
    },
)
