"""The confirmation step: the plans that decide a study, timed again side by side.

At the end of every run, the finalists (the float baseline, the best uniform plan, the top-k
plans by I' and the Pareto front up to a bound) are timed by measurement in interleaved,
order-rotated rounds in one process (:func:`quide_search.latency.confirm_latency`). Their
confirmed T, and the I and I' it gives with their stored C and P, are stored beside the
search's values in the study attribute ``confirmation``; nothing the search stored changes.
The recommended plan is then the best feasible by confirmed I' (:mod:`.summary`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quide_search.metric import Gate, gated_index, intelligence_index, knee
from quide_search.plan import BitPlan
from quide_search.records import StudyKey, TrialKey, TrialRow
from quide_search.results import Confirmation, ConfirmedEntry
from quide_search.study.summary import completed_rows, rank, stored_confirmation, study_front

if TYPE_CHECKING:
    import optuna

    from quide_search.search.objective import PlanObjective

__all__ = ["FRONT_BOUND", "confirm_study", "finalist_plans", "finalists"]

FRONT_BOUND = 8
"""Pareto-front points confirmed at most (those with the highest I')."""


def finalists(rows: list[TrialRow], *, top: int, front: int = FRONT_BOUND) -> list[int]:
    """Return the trial numbers to confirm, one per distinct plan.

    The best uniform plan (highest I'), the ``top`` plans by I' (feasible ones, or by I when
    none is), and the ``front`` Pareto points with the highest I'.
    """
    chosen: dict[str, int] = {}

    def take(row: TrialRow) -> None:
        chosen.setdefault(row.plan_key, row.trial)

    uniform = [r for r in rows if r.uniform]
    if uniform:
        take(knee(uniform))
    feasible = [r for r in rows if r.feasible]
    ranked = sorted(feasible or rows, key=rank, reverse=True)
    distinct = len(chosen)
    for row in ranked:
        if len(chosen) >= distinct + top:
            break
        take(row)
    for point in sorted(study_front(rows), key=lambda r: (-r.I_prime, r.trial))[:front]:
        take(point)
    return list(chosen.values())


def confirm_study(
    study: optuna.Study,
    objective: PlanObjective,
    *,
    top: int,
) -> Confirmation | None:
    """Confirm the study's finalists by measurement and store the result; return it.

    Nothing is confirmed (None) when ``top`` is 0, no trial completed, or T is an analytic
    estimate for another device, which this machine cannot measure. A study whose stored
    confirmation already covers the same finalists keeps it: running the same command again
    changes nothing.
    """
    from quide_search.latency import confirm_latency

    scorer = objective.scorer
    context = scorer.latency.context
    rows = completed_rows(study)
    if top <= 0 or not rows or context.estimated:
        return None
    by_number = {r.trial: r for r in rows}
    plans = finalist_plans(objective, rows, top=top)
    stored = stored_confirmation(study)
    if stored and stored.top == top and stored.covered() == {str(k) for k in plans}:
        return stored
    started = time.perf_counter()
    results, failed = confirm_latency(plans, scorer.target, context)
    baseline = study.user_attrs[StudyKey.BASELINE]
    entries = []
    for key, result in results.items():
        scored = _scored(baseline if key == "float" else by_number[int(key)])
        entries.append(_entry(key, scored, result.median_ms, result.spread, result.repeats,
                              objective.gate, objective.settings.max_latency_ms))  # fmt: skip
    record = Confirmation(
        rounds=max((r.repeats for r in results.values()), default=0),
        seconds=time.perf_counter() - started,
        top=top,
        latency={**context.to_dict(), "source": "measured"},
        entries=tuple(entries),
        failed={str(k): reason for k, reason in failed.items()},
    )
    study.set_user_attr(StudyKey.CONFIRMATION, record.to_dict())
    return record


def finalist_plans(
    objective: PlanObjective, rows: list[TrialRow], *, top: int
) -> dict[int | str, BitPlan]:
    """The float plan (key ``float``) and the :func:`finalists`' plans, by trial number."""
    scorer = objective.scorer
    by_number = {r.trial: r for r in rows}
    plans: dict[int | str, BitPlan] = {"float": scorer.float_plan()}
    for n in finalists(rows, top=top):
        plans[n] = BitPlan(
            model=scorer.task.model_name,
            dataset=scorer.task.dataset_name,
            layers=by_number[n].plan,
            backend=scorer.backend.name,
        )
    return plans


def _scored(row: TrialRow | Mapping[str, Any]) -> tuple[float, float, bool]:
    """C, P and whether it is feasible, of a trial's row or the float model's stored metrics
    (feasible by its gate alone)."""
    if isinstance(row, TrialRow):
        return row.C, row.P, row.feasible
    return row[TrialKey.C], row[TrialKey.P], bool(row[TrialKey.GATE_PASSED])


def _entry(
    key: int | str,
    scored: tuple[float, float, bool],
    t_ms: float,
    spread: float,
    rounds: int,
    gate: Gate,
    max_latency_ms: float | None,
) -> ConfirmedEntry:
    """One finalist's confirmed T, with the I and I' it gives with its C and P (``scored``:
    C, P and whether it was feasible in the search)."""
    c, p, feasible = scored
    if max_latency_ms is not None:
        feasible = feasible and t_ms <= max_latency_ms
    return ConfirmedEntry(
        trial=key,
        T_confirmed_ms=t_ms,
        I_confirmed=intelligence_index(C=c, P=p, T_ms=t_ms),
        I_prime_confirmed=gated_index(C=c, P=p, T_ms=t_ms, gate=gate),
        feasible_confirmed=feasible and gate.passes(p),
        confirm_spread=spread,
        confirm_rounds=rounds,
    )
