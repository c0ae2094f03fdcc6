"""Budgets answered from stored trials: the best plan under a size or latency limit, no search.

A study's trials already hold every plan's C, P, stored bytes and T. A new deployment budget
(``show --max-size-mb``, ``export --max-size-mb``) is a filter over them: the plans that pass
the study's accuracy gate and fit the budget, chosen by the recommendation's own rule
(confirmed I' among the confirmed finalists that fit, else the search's I').
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quide_search.errors import ConfigError
from quide_search.records import TrialKey

__all__ = ["MIB", "Budget", "best_within", "nothing_fits"]

MIB = 2**20
"""Bytes per MiB: ``--max-size-mb`` counts stored weight bytes in MiB, as the search does."""


@dataclass(frozen=True)
class Budget:
    """A deployment budget: stored weights at most ``max_size_mb`` MiB, T at most
    ``max_latency_ms`` ms (the study's T: its unit, batch and device). None: no limit."""

    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for flag, limit in (
            ("--max-size-mb", self.max_size_mb),
            ("--max-latency-ms", self.max_latency_ms),
        ):
            if limit is not None and not 0 < limit < float("inf"):
                raise ConfigError(f"{flag} must be a finite number > 0, but got {limit}.")

    @property
    def given(self) -> bool:
        """Whether any limit is set."""
        return self.max_size_mb is not None or self.max_latency_ms is not None

    def fits(self, row: Mapping[str, Any]) -> bool:
        """Whether a completed trial's row fits: stored bytes and the search's T."""
        size_mb = float(row[TrialKey.STORED_BYTES]) / MIB
        if self.max_size_mb is not None and size_mb > self.max_size_mb:
            return False
        return self.max_latency_ms is None or float(row[TrialKey.T_MS]) <= self.max_latency_ms

    def text(self) -> str:
        """``size <= 0.5 MiB, T <= 2 ms``."""
        parts = []
        if self.max_size_mb is not None:
            parts.append(f"size <= {self.max_size_mb:g} MiB")
        if self.max_latency_ms is not None:
            parts.append(f"T <= {self.max_latency_ms:g} ms")
        return ", ".join(parts) or "no limit"


def best_within(
    rows: Sequence[Mapping[str, Any]],
    budget: Budget,
    confirmation: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Return the best stored plan that passes the gate and fits ``budget``, or None.

    The choice follows the recommendation's rule on the plans that fit: the best confirmed
    finalist by confirmed I' (its confirmed T within the budget too), else the best by the
    search's I'. A budget that every finalist meets gives the recommended plan.

    Args:
        rows: The study's completed rows (:func:`quide_search.study.summary.completed_rows`).
        budget: The limits.
        confirmation: The study's confirmation record, if it has one.

    Returns:
        The row with ``feasible`` True, or None when no stored plan fits.
    """
    from quide_search.study.summary import recommended

    fitting = [{**r, "feasible": True} for r in rows if r[TrialKey.GATE_PASSED] and budget.fits(r)]
    if not fitting:
        return None
    numbers = {r["trial"] for r in fitting}
    limit = budget.max_latency_ms
    entries = [
        {**e, "feasible_confirmed": limit is None or e["T_confirmed_ms"] <= limit}
        for e in (confirmation or {}).get("entries", [])
        if e["trial"] in numbers
    ]
    return recommended(fitting, {"entries": entries})


def nothing_fits(rows: Sequence[Mapping[str, Any]], budget: Budget, study: str) -> str:
    """Why no stored plan fits ``budget``: the smallest and fastest plans that pass the gate."""
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
