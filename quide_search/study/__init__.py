"""Studies: Optuna studies that hold a search, from creation to summary.

Owns the storage (``storage``), the session that creates or joins a study (``session``,
``setup``), the trial loop with its signals and retries (``optimize``, ``retry``), local worker
processes (``workers``), the confirmation of the finalists (``confirm``) and their test-split
scores (``holdout``), budgets (``budget``), reading a study back (``summary``, ``pareto``,
``warnings``), the whole search (``run``) and the uniform sweep (``sweep``).

Layer: study (imports search and everything below it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.study.pareto import pareto_front
    from quide_search.study.run import run_search
    from quide_search.study.session import Session, open_session
    from quide_search.study.summary import SearchSummary, load_study, summarize
    from quide_search.study.sweep import SweepResult, run_sweep

__all__ = ["SearchSummary", "Session", "SweepResult", "load_study", "open_session",
           "pareto_front", "run_search", "run_sweep", "summarize"]  # fmt: skip

__getattr__ = lazy_exports(
    __name__,
    {
        "pareto_front": "quide_search.study.pareto",
        "run_search": "quide_search.study.run",
        "Session": "quide_search.study.session",
        "open_session": "quide_search.study.session",
        "SearchSummary": "quide_search.study.summary",
        "load_study": "quide_search.study.summary",
        "summarize": "quide_search.study.summary",
        "SweepResult": "quide_search.study.sweep",
        "run_sweep": "quide_search.study.sweep",
    },
)
