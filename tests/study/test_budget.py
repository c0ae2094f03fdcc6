"""Budgets answered from stored trials: the best plan that fits, or why none does."""

from __future__ import annotations

import pytest

from quide_search.errors import ConfigError
from quide_search.records import TrialRow
from quide_search.results import Confirmation, ConfirmedEntry, TestEntry, TestResult
from quide_search.study.budget import MIB, Budget, best_within, nothing_fits


def _row(trial: int, mib: float, t_ms: float, i_prime: float, gate: bool = True) -> TrialRow:
    return TrialRow(trial=trial, plan={"fc": "int8"}, stored_bytes=int(mib * MIB), T_ms=t_ms,
                    I_prime=i_prime if gate else 0.0, I=i_prime, gate_passed=gate, C=1.0, P=0.9,
                    avg_weight_bits=8.0, feasible=gate)  # fmt: skip


def _confirmed(trial: int | str, t_ms: float, i_prime: float) -> ConfirmedEntry:
    return ConfirmedEntry(trial, t_ms, i_prime, i_prime, True, 0.01, 5)


ROWS = [_row(0, 1.0, 1.0, 5.0), _row(1, 0.5, 2.0, 7.0), _row(2, 0.2, 3.0, 9.0),
        _row(3, 0.1, 0.5, 12.0, gate=False)]  # fmt: skip


@pytest.mark.parametrize(
    ("budget", "trial"),
    [
        (Budget(), 2),
        (Budget(max_size_mb=0.6), 2),
        (Budget(max_size_mb=0.6, max_latency_ms=2.5), 1),
        (Budget(max_latency_ms=1.0), 0),
        (Budget(max_size_mb=0.19), None),  # trial 3 is smaller but fails the gate
    ],
)
def test_the_best_plan_that_passes_the_gate_within_the_budget(budget: Budget, trial: int) -> None:
    best = best_within(ROWS, budget)
    assert (best and best.trial) == trial
    assert best is None if trial is None else best is not None and best.feasible


def test_a_confirmed_finalist_is_chosen_on_its_confirmed_t() -> None:
    confirmation = Confirmation(
        entries=(_confirmed(2, 3.5, 9.5), _confirmed(1, 1.5, 8.0), _confirmed("float", 0.4, 1.0))
    )
    best = best_within(ROWS, Budget(), confirmation)
    assert best is not None and best.trial == 2 and best.I_prime == 9.5
    # Within 3.2 ms by the search's T trial 2 fits, but its confirmed T does not.
    best = best_within(ROWS, Budget(max_latency_ms=3.2), confirmation)
    assert best is not None and best.trial == 1 and best.T_ms == 1.5
    assert best.to_dict()["T_confirmed_ms"] == 1.5
    # Trial 1's confirmed T (1.5) is over 1.4 even where no confirmed plan fits: trial 0.
    best = best_within(ROWS, Budget(max_latency_ms=1.4), confirmation)
    assert best is not None and best.trial == 0 and best.confirmed is None


def test_nothing_fits_names_the_smallest_and_fastest_passing_plans() -> None:
    text = nothing_fits(ROWS, Budget(max_size_mb=0.1), "s")
    assert text.startswith("no stored plan of study 's' passes its gate within size <= 0.1 MiB")
    assert "stores 0.2 MiB (trial 2), the fastest has T 1 ms (trial 0)" in text


@pytest.mark.parametrize("limit", [0.0, -1.0, float("inf"), float("nan")])
def test_a_budget_must_be_a_finite_positive_number(limit: float) -> None:
    with pytest.raises(ConfigError, match="--max-size-mb must be a finite number > 0"):
        Budget(max_size_mb=limit)


def test_where_only_the_float_model_fits_it_is_said() -> None:
    baseline = {"stored_bytes": int(0.05 * MIB), "T_ms": 0.3, "T_confirmed_ms": 0.2}
    text = nothing_fits(ROWS, Budget(max_latency_ms=0.25), "s", baseline)
    assert text == ("no quantized plan of study 's' passes its gate within T <= 0.25 ms, but "
                    "the float model fits (0.05 MiB, T 0.2 ms): keep it in float for this "
                    "budget.")  # fmt: skip


def test_finalists_that_failed_or_could_not_be_scored_on_the_test_split_are_skipped() -> None:
    test = TestResult(
        entries=(TestEntry(2, 0.8, False), TestEntry("float", 0.9, True)),
        failed={"1": "out of memory"},
    )
    best = best_within(ROWS, Budget(), None, test)
    assert best is not None and best.trial == 0 and "P_test" not in best.to_dict()
    scored = TestResult(entries=(TestEntry(2, 0.95, True),))
    chosen = best_within(ROWS, Budget(), None, scored)
    assert chosen is not None and chosen.trial == 2 and chosen.p_test == 0.95
