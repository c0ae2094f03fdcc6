"""The check a latency table must pass before a search uses it.

A table is an estimate: each plan's T is the float model's measured T plus the change each
layer's precision makes, read in whole-model runs of the uniform plans. Before a study uses
it, the float model, every uniform plan and a few seeded mixed plans are timed whole, side
by side in interleaved rounds (:func:`~quide_search.latency.confirm.confirm_latency`), and
their T is compared with the table's. The float model's T among them becomes the table's
base; a table that misses any other by more than :data:`TABLE_ERROR_BOUND` is not used: the
study takes measured T instead, and says so. A table that passes predicts only inside the
range it was checked on (:data:`RANGE_FACTOR`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.plan import FLOAT

if TYPE_CHECKING:
    from quide_search.latency._base import LatencyContext, TimingTarget
    from quide_search.latency.table import LatencyTable

__all__ = [
    "MIXED_PLANS",
    "RANGE_FACTOR",
    "TABLE_ERROR_BOUND",
    "CheckRow",
    "TableCheck",
    "check_plans",
    "check_table",
]

TABLE_ERROR_BOUND = 0.25
"""The largest |predicted / measured - 1| on any checked plan for a table to be used."""
RANGE_FACTOR = 2.0
"""A prediction must lie within [fastest checked T * (1 - :data:`TABLE_ERROR_BOUND`), slowest
checked T * this]: an optimistic T inflates I', a pessimistic one only costs the plan."""
MIXED_PLANS = 4
"""Seeded random per-layer plans checked beside the float and uniform plans."""
_CHECK_SEED = 0  # the mixed plans are the same for every study of a model and choices


@dataclass(frozen=True)
class CheckRow:
    """One checked plan: the table's T beside its T timed whole.

    Attributes:
        plan: ``float``, a precision (the uniform plan) or ``mixed N``.
        predicted_ms: The table's T.
        measured_ms: The confirmed (interleaved, timed whole) T.
    """

    plan: str
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """predicted / measured - 1."""
        return self.predicted_ms / self.measured_ms - 1.0


@dataclass(frozen=True)
class TableCheck:
    """A table's predictions beside measured T on the checked plans, and its verdict.

    Stored in a study as a list of rows (``plan``, ``predicted_ms``, ``measured_ms``,
    ``error``), the form studies have always stored it in.
    """

    rows: tuple[CheckRow, ...]

    @property
    def worst(self) -> float:
        """The largest |error| over the checked plans (``inf`` if any is not a number)."""
        errors = [abs(row.error) for row in self.rows]
        return math.inf if any(math.isnan(e) for e in errors) else max(errors)

    @property
    def passed(self) -> bool:
        """Whether the table may be used (every |error| <= :data:`TABLE_ERROR_BOUND`)."""
        return self.worst <= TABLE_ERROR_BOUND

    @property
    def range_ms(self) -> tuple[float, float]:
        """The fastest and slowest measured T among the checked plans."""
        times = [row.measured_ms for row in self.rows]
        return min(times), max(times)

    def verdict(self, threads: int | None = None) -> str:
        """One line: the table is used, or why not and what T is instead (with advice for a
        busy machine unless T is already timed at one thread)."""
        if self.passed:
            return (
                f"latency table checked on {len(self.rows)} plans timed whole: worst error "
                f"{self.worst:.0%} (bound {TABLE_ERROR_BOUND:.0%}); the search uses it."
            )
        return (
            f"latency table not used: it missed the {len(self.rows)} plans timed whole by up "
            f"to {self.worst:.0%} (bound {TABLE_ERROR_BOUND:.0%}), so this study's T is "
            "measured per trial instead."
            + (
                ""
                if threads == 1
                else " If other processes keep the cores busy, T at several threads times "
                "them as much as the plan; --latency-threads 1 times it steadier."
            )
        )

    def guard(self, predicted_ms: float) -> None:
        """Fail a trial whose predicted T lies outside what the check timed.

        Raises:
            TrialEvaluationError: If ``predicted_ms`` <= 0 or outside
                [fastest * (1 - :data:`TABLE_ERROR_BOUND`), slowest * :data:`RANGE_FACTOR`].
        """
        low, high = self.range_ms
        floor, ceiling = low * (1 - TABLE_ERROR_BOUND), high * RANGE_FACTOR
        if predicted_ms > 0 and floor <= predicted_ms <= ceiling:
            return
        raise TrialEvaluationError(
            f"the latency table predicts T = {predicted_ms:.4g} ms for this plan, outside the "
            f"{floor:.4g}-{ceiling:.4g} ms it may predict (the plans its check timed took "
            f"{low:.4g}-{high:.4g} ms): an estimate that cannot be trusted, not a score. Use "
            "--latency measured if many trials fail so."
        )

    def to_list(self) -> list[dict[str, Any]]:
        """The rows as plain JSON types (the ``latency_table_check`` study attribute)."""
        return [
            {"plan": r.plan, "predicted_ms": r.predicted_ms, "measured_ms": r.measured_ms,
             "error": r.error}
            for r in self.rows
        ]  # fmt: skip

    @classmethod
    def from_list(cls, data: object) -> TableCheck:
        """Rebuild a check from :meth:`to_list` output.

        Raises:
            ConfigError: If ``data`` is not such a list, or has no row.
        """
        try:
            rows = tuple(
                CheckRow(str(r["plan"]), float(r["predicted_ms"]), float(r["measured_ms"]))
                for r in data  # type: ignore[attr-defined]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"a latency table check must be a list of rows (plan, predicted_ms, "
                f"measured_ms), but reading it failed: {type(e).__name__}: {e}."
            ) from e
        if not rows or any(not r.measured_ms > 0 for r in rows):
            raise ConfigError(
                "a latency table check must hold at least one row with measured_ms > 0, but "
                f"got {len(rows)} rows."
            )
        return cls(rows)


def check_plans(
    layers: Sequence[str],
    precisions: Sequence[str],
    excluded: Mapping[str, Collection[str]] | None = None,
) -> dict[str, dict[str, str]]:
    """The plans a table is checked on: float, each uniform plan, :data:`MIXED_PLANS` mixed.

    The mixed plans draw each layer's precision from ``float`` and ``precisions`` with a fixed
    seed, so a model and its choices are always checked on the same plans. A layer that
    cannot run a precision (``excluded``: layer -> those precisions) is never put at it: it
    takes the nearest it can in a uniform plan, and draws from the rest in a mixed one.
    """
    from quide_search.plan import uniform_layers

    excluded = excluded or {}
    choices = (FLOAT, *(q for q in precisions if q != FLOAT))
    plans = {q: uniform_layers(layers, q, excluded, precisions) for q in choices}
    rng = random.Random(_CHECK_SEED)
    allowed = {n: [q for q in choices if q not in excluded.get(n, ())] for n in layers}
    for i in range(1, MIXED_PLANS + 1):
        plans[f"mixed {i}"] = {name: rng.choice(allowed[name]) for name in layers}
    return plans


SCALE_RANGE = (0.5, 2.0)
"""The scale factors :func:`uniform_scale` may fit; outside them the table is left unscaled
(and its check says how far it is)."""


def uniform_scale(
    table: LatencyTable, layers: Mapping[str, Mapping[str, str]], measured: Mapping[str, float]
) -> float:
    """The factor that brings the table's change from float onto the measured one, as the
    median over the uniform plans timed (``measured``: precision -> ms; ``layers``: each
    one's plan). A plan whose predicted change is under 5 % of the float T says too little
    and is skipped; with none left, or a factor outside :data:`SCALE_RANGE`, 1.0.
    """
    ratios = []
    for q, ms in measured.items():
        predicted = table.predict(layers[q]) - table.base_ms
        if abs(predicted) >= 0.05 * table.base_ms:
            ratios.append((ms - table.base_ms) / predicted)
    if not ratios:
        return 1.0
    factor = statistics.median(ratios)
    return factor if SCALE_RANGE[0] <= factor <= SCALE_RANGE[1] else 1.0


def check_table(
    table: LatencyTable,
    target: TimingTarget,
    context: LatencyContext,
    precisions: Sequence[str],
    *,
    rebase: bool = False,
) -> tuple[LatencyTable, TableCheck]:
    """Time the check's plans whole, interleaved, and set them beside the table's T.

    With ``rebase`` (a table measured now), the float model's T timed among them becomes the
    table's base (``base_ms``): a base timed alone, moments earlier, carried whatever the
    machine did at that moment into every prediction. Its per-layer changes are then scaled
    by one factor, fitted on the uniform plans (:func:`uniform_scale`): read with hooks,
    layer by layer, they miss what the whole model does around them (a 4-block Llama's sum
    fell 15 % short of every timed plan alike). The float row agrees by construction, the
    uniform rows nearly so; the mixed plans check the scaled table out of sample. A table read
    from a file keeps its base and scale, so that studies sharing the file predict the same T.

    Returns:
        The table on the re-timed base, and its check.

    Raises:
        TrialEvaluationError: If none of the plans can be timed, or the table has no base
            (NaN, from :func:`profile_table` without ``time_base``) and the check could not
            time the float model to give it one.
    """
    import dataclasses

    from quide_search.latency.confirm import confirm_latency
    from quide_search.plan import BitPlan

    layers: Mapping[str, dict[str, str]] = check_plans(target.layers, precisions, target.excluded)
    plans = {label: BitPlan(model="check", dataset="-", layers=plan)
             for label, plan in layers.items()}  # fmt: skip
    desc = f"latency table check: {len(plans)} plans timed whole side by side, rounds"
    measured, failed = confirm_latency(plans, target, context, desc=desc)
    if rebase and FLOAT in measured:
        table = dataclasses.replace(table, base_ms=measured[FLOAT].median_ms)
        uniform = {q: measured[q].median_ms for q in precisions if q != FLOAT and q in measured}
        table = table.scaled(uniform_scale(table, layers, uniform))
    elif math.isnan(table.base_ms):
        raise TrialEvaluationError(
            f"the latency table has no float T: the float model failed to run in its check "
            f"({failed.get(FLOAT, 'not timed')})"
        )
    rows = tuple(
        CheckRow(label, table.predict(layers[label]), measured[label].median_ms)
        for label in plans
        if label in measured
    )
    if not rows:
        reasons = "; ".join(f"{k}: {why}" for k, why in failed.items())
        raise TrialEvaluationError(
            f"no plan of the latency table's check could be timed: {reasons}"
        )
    return table, TableCheck(rows)
