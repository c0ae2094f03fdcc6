"""Budgets answered from stored trials: the best plan under a size or latency limit, no search.

A study's trials already hold every plan's C, P, stored bytes and T. A new deployment budget
(``show --max-size-mb``, ``export --max-size-mb``) is a filter over them: the plans that pass
the study's accuracy gate and fit the budget, chosen by the recommendation's own rule
(confirmed I' among the confirmed finalists that fit, else the search's I').
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.records import MIB, Budget, TrialKey, TrialRow
from quide_search.results import BudgetAnswer, Confirmation, Finalist, TestResult

if TYPE_CHECKING:
    import optuna

__all__ = ["MIB", "Budget", "answer_budget", "best_within", "nothing_fits"]


def best_within(
    rows: Sequence[TrialRow],
    budget: Budget,
    confirmation: Confirmation | None = None,
    test: TestResult | None = None,
) -> Finalist | None:
    """Return the best stored plan that passes the gate and fits ``budget``, or None.

    The choice follows the recommendation's rule on the plans that fit: the best confirmed
    finalist by confirmed I' (its confirmed T within the budget too), else the best by the
    search's I'. A finalist whose P failed the gate on the held-out test split is never
    chosen; a plan that was not a finalist has no test P. A budget that every finalist meets
    gives the recommended plan.

    Args:
        rows: The study's completed rows (:func:`quide_search.study.summary.completed_rows`).
        budget: The limits.
        confirmation: The study's confirmation record, if it has one.
        test: The study's test-split record, if it has one.

    Returns:
        The plan with ``feasible`` True (a confirmed one counted feasible under this budget),
        or None when no stored plan fits.
    """
    import dataclasses

    from quide_search.study.summary import rank

    confirmed = confirmation.by_trial() if confirmation else {}
    tested = test.by_trial() if test else {}
    unscored = set(test.failed) if test else set()  # finalists the test split could not score
    candidates = (Finalist(r, True, confirmed.get(r.trial), tested.get(r.trial)) for r in rows)
    fitting = [
        f
        for f in candidates
        if f.row.gate_passed
        and str(f.trial) not in unscored
        and (f.tested is None or f.tested.gate_passed_test)
        and f.fits(budget)
    ]
    # A confirmed finalist that fits is feasible under this budget, whatever the run's limits.
    pool = [
        dataclasses.replace(f, confirmed=dataclasses.replace(f.confirmed, feasible_confirmed=True))
        for f in fitting
        if f.confirmed is not None
    ]
    return max(pool or fitting, key=rank) if fitting else None


def answer_budget(study: optuna.Study, budget: Budget) -> BudgetAnswer:
    """The best stored plan of ``study`` within ``budget`` (:func:`best_within`) and, where
    none fits, why (:func:`nothing_fits`)."""
    from quide_search.study.summary import (
        completed_rows,
        stored_confirmation,
        stored_test,
        study_baseline,
    )

    rows = completed_rows(study)
    confirmation, test = stored_confirmation(study), stored_test(study)
    best = best_within(rows, budget, confirmation, test)
    why = None
    if best is None:
        baseline = study_baseline(study, confirmation, test)
        why = nothing_fits(rows, budget, study.study_name, baseline)
    return BudgetAnswer(budget, best, why, len(rows), bool(test and test.entries))


def nothing_fits(
    rows: Sequence[TrialRow],
    budget: Budget,
    study: str,
    baseline: Mapping[str, Any] | None = None,
) -> str:
    """Why no stored plan fits ``budget``: the smallest and fastest plans that pass the gate,
    or that the float model (``baseline``, the study's float metrics) fits it."""
    if baseline and TrialKey.STORED_BYTES in baseline:
        stored = float(baseline[TrialKey.STORED_BYTES])
        t_ms = float(baseline.get("T_confirmed_ms", baseline[TrialKey.T_MS]))
        if budget.fits(stored_bytes=stored, t_ms=t_ms):
            return (
                f"no quantized plan of study {study!r} passes its gate within {budget.text()}, "
                f"but the float model fits ({stored / MIB:.4g} MiB, T {t_ms:.4g} ms): keep it in "
                "float for this budget."
            )
    passing = [r for r in rows if r.gate_passed]
    if not passing:
        return f"no stored plan of study {study!r} passes its accuracy gate."
    small = min(passing, key=lambda r: float(r.stored_bytes))
    fast = min(passing, key=lambda r: float(r.T_ms))
    return (
        f"no stored plan of study {study!r} passes its gate within {budget.text()}: the "
        f"smallest that passes stores {float(small.stored_bytes) / MIB:.4g} MiB "
        f"(trial {small.trial}), the fastest has T {float(fast.T_ms):.4g} ms "
        f"(trial {fast.trial}). Loosen the budget, or run more trials with it "
        "(run --max-size-mb/--max-latency-ms)."
    )
