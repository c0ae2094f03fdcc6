"""Budgets answered from stored trials: the best plan under a size or latency limit, no search.

A study's trials already hold every plan's C, P, stored bytes and T. A new deployment budget
(``show --max-size-mb``, ``export --max-size-mb``) is a filter over them: the plans that pass
the study's accuracy gate and fit the budget, chosen by the recommendation's own rule
(confirmed I' among the confirmed finalists that fit, else the search's I').
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quide_search.records import MIB, Budget, TrialKey

__all__ = ["MIB", "Budget", "best_within", "nothing_fits"]


def best_within(
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    confirmation: Mapping[str, Any] | None = None,
    test: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Return the best stored plan that passes the gate and fits ``budget``, or None.

    The choice follows the recommendation's rule on the plans that fit: the best confirmed
    finalist by confirmed I' (its confirmed T within the budget too), else the best by the
    search's I'. A finalist whose P failed the gate on the held-out test split is never
    chosen; a plan that was not a finalist has no test P (``P_test`` absent). A budget that
    every finalist meets gives the recommended plan.

    Args:
        rows: The study's completed rows (:func:`quide_search.study.summary.completed_rows`).
        budget: The limits.
        confirmation: The study's confirmation record, if it has one.
        test: The study's test-split record, if it has one.

    Returns:
        The row with ``feasible`` True, or None when no stored plan fits.
    """
    from quide_search.study.summary import recommended

    entries = {e["trial"]: e for e in (confirmation or {}).get("entries", [])}
    tested = {e["trial"]: e for e in (test or {}).get("entries", [])}
    unscored = set((test or {}).get("failed", {}))  # finalists the test split could not score
    fitting = [
        {**r, **tested.get(r["trial"], {}), "feasible": True}
        for r in rows
        if r[TrialKey.GATE_PASSED]
        and str(r["trial"]) not in unscored
        and tested.get(r["trial"], {}).get(TrialKey.GATE_PASSED_TEST, True)
        and budget.fits({**r, **entries.get(r["trial"], {})})
    ]
    numbers = {r["trial"] for r in fitting}
    kept = [{**e, "feasible_confirmed": True} for n, e in entries.items() if n in numbers]
    return recommended(fitting, {"entries": kept}) if fitting else None


def nothing_fits(
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    study: str,
    baseline: Mapping[str, Any] | None = None,
) -> str:
    """Why no stored plan fits ``budget``: the smallest and fastest plans that pass the gate,
    or that the float model (``baseline``, the study's float metrics) fits it."""
    if baseline and TrialKey.STORED_BYTES in baseline and budget.fits(baseline):
        t_ms = float(baseline.get("T_confirmed_ms", baseline[TrialKey.T_MS]))
        return (
            f"no quantized plan of study {study!r} passes its gate within {budget.text()}, but "
            f"the float model fits ({float(baseline[TrialKey.STORED_BYTES]) / MIB:.4g} MiB, T "
            f"{t_ms:.4g} ms): keep it in float for this budget."
        )
    passing = [r for r in rows if r[TrialKey.GATE_PASSED]]
    if not passing:
        return f"no stored plan of study {study!r} passes its accuracy gate."
    small = min(passing, key=lambda r: float(r[TrialKey.STORED_BYTES]))
    fast = min(passing, key=lambda r: float(r[TrialKey.T_MS]))
    return (
        f"no stored plan of study {study!r} passes its gate within {budget.text()}: the "
        f"smallest that passes stores {float(small[TrialKey.STORED_BYTES]) / MIB:.4g} MiB "
        f"(trial {small['trial']}), the fastest has T {float(fast[TrialKey.T_MS]):.4g} ms "
        f"(trial {fast['trial']}). Loosen the budget, or run more trials with it "
        "(run --max-size-mb/--max-latency-ms)."
    )
