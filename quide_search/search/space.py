"""The search space: one categorical parameter per layer, or per group of layers.

Optuna's parameters are named by the layer (``--granularity layer``), by the numbered block
that holds it (``block``: ``model.layers.3`` holds every layer under it) or by the layer's own
name (``type``: every ``q_proj`` shares one choice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from quide_search.records import TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["group_layers", "trial_plan", "uniform_params"]

_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")


def group_layers(layers: Sequence[str], granularity: str) -> dict[str, list[str]]:
    """Return search parameter -> the layers it sets, for ``--granularity``.

    Example:
        >>> group_layers(["m.layers.0.q", "m.layers.0.k", "m.head"], "block")
        {'m.layers.0': ['m.layers.0.q', 'm.layers.0.k'], 'm.head': ['m.head']}
    """
    groups: dict[str, list[str]] = {}
    for name in layers:
        if granularity == "block":
            match = _BLOCK.match(name)
            key = match.group(1) if match else name
        elif granularity == "type":
            key = name.rsplit(".", 1)[-1]
        else:
            key = name
        groups.setdefault(key, []).append(name)
    return groups


def uniform_params(groups: Sequence[str], precision: str) -> dict[str, str]:
    """Return the trial parameters of the plan that gives every group ``precision``."""
    return dict.fromkeys(groups, precision)


def trial_plan(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """Return a trial's per-layer plan (its parameters, expanded when layers were grouped)."""
    return dict(trial.user_attrs.get(TrialKey.LAYERS) or trial.params)
