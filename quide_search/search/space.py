"""The search space: one categorical parameter per layer, or per group of layers.

Optuna's parameters are named by the layer (``--granularity layer``), by the numbered block
that holds it (``block``: ``model.layers.3`` holds every layer under it) or by the layer's own
name (``type``: every ``q_proj`` shares one choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from quide_search.plan import group_layers
from quide_search.records import TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["group_layers", "trial_plan", "uniform_params"]


def uniform_params(groups: Sequence[str], precision: str) -> dict[str, str]:
    """Return the trial parameters of the plan that gives every group ``precision``."""
    return dict.fromkeys(groups, precision)


def trial_plan(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """Return a trial's per-layer plan (its parameters, expanded when layers were grouped)."""
    return dict(trial.user_attrs.get(TrialKey.LAYERS) or trial.params)
