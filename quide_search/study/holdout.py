"""The test step: the finalists scored on the held-out test split the search never saw.

The search ranks plans, and its gate passes them, on the eval split (the *search split*). The
plan chosen that way has an optimistic P there: among many plans within a few samples of the
gate, the one that scored best is partly the one that was luckiest on those samples. So at
the end of every run the finalists (the same ones the confirmation step re-times:
:func:`~quide_search.study.confirm.finalists`) and the float model are scored once more, on
the test split, which is disjoint from the search and calibration splits. The gate is applied
again around the float model's *test* P, and the recommended plan is the best finalist that
passes both gates (:func:`quide_search.study.summary.recommended`). The values are stored in
the study attribute ``test``; nothing the search stored changes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from quide_search.errors import QuideError
from quide_search.records import StudyKey
from quide_search.results import TestEntry, TestResult
from quide_search.study.confirm import finalist_plans
from quide_search.study.summary import completed_rows, stored_test

if TYPE_CHECKING:
    import optuna

    from quide_search.search.objective import PlanObjective

__all__ = ["TEST_TOP", "test_study"]

TEST_TOP = 5
"""Plans by I' scored on the test split when the confirmation step is off (``--confirm-top 0``)."""


def test_study(study: optuna.Study, objective: PlanObjective, *, top: int) -> TestResult | None:
    """Score the study's finalists and the float model on the test split; store and return it.

    Args:
        study: The study, after its trials.
        objective: Its objective (the scorer and the gate settings).
        top: The confirmation step's ``top``; 0 scores the :data:`TEST_TOP` best instead.

    Returns:
        The record (its gate's ``baseline_P`` is the float model's test P; the float model's
        entry has trial ``float``). None when no trial completed. A stored record that
        covers the same finalists is kept as it is.
    """
    rows = completed_rows(study)
    if not rows:
        return None
    plans = finalist_plans(objective, rows, top=top or TEST_TOP)
    stored = stored_test(study)
    if stored and stored.covered() == {str(k) for k in plans}:
        return stored
    from quide_search.progress import bar

    scorer = objective.scorer
    started = time.perf_counter()
    scores: dict[int | str, float] = {}
    failed: dict[str, str] = {}
    samples = len(scorer.task.splits.test)
    desc = f"test split: {len(plans)} finalists on {samples} held-out samples"
    for key in bar(list(plans), desc, unit="plan"):
        try:
            scores[key] = scorer.test_score(plans[key])
        except QuideError as e:  # a failed finalist is data, as a failed trial is
            failed[str(key)] = str(e)
    record = TestResult(samples=samples, seconds=time.perf_counter() - started, failed=failed)
    if "float" in scores:
        gate = dataclasses.replace(objective.gate, baseline_P=scores["float"])
        entries = tuple(TestEntry(key, p, gate.passes(p)) for key, p in scores.items())
        record = dataclasses.replace(record, gate=gate, entries=entries)
    study.set_user_attr(StudyKey.TEST, record.to_dict())
    return record
