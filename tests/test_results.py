"""Typed records of a study's results: they read and write exactly what a study stores."""

from __future__ import annotations

from dataclasses import fields

from quide_search.metric import Metrics
from quide_search.records import METRIC_KEYS, MIB, Budget, TrialKey, TrialRow
from quide_search.results import BudgetAnswer, Confirmation, Finalist, TestResult

ATTRS = {"C": 4.0, "P": 0.95, "T_ms": 2.0, "I": 2.4, "I_prime": 2.4, "gate_passed": True,
         "avg_weight_bits": 8.0, "stored_bytes": 2048, "unit": "ms",
         "feasible": False}  # fmt: skip
CONFIRMATION = {
    "rounds": 20, "seconds": 1.5, "top": 5, "latency": {"source": "measured", "threads": 1},
    "entries": [
        {"trial": "float", "T_confirmed_ms": 1.0, "I_confirmed": 3.0, "I_prime_confirmed": 3.0,
         "feasible_confirmed": True, "confirm_spread": 0.02, "confirm_rounds": 20},
        {"trial": 3, "T_confirmed_ms": 1.5, "I_confirmed": 2.9, "I_prime_confirmed": 2.9,
         "feasible_confirmed": True, "confirm_spread": 0.03, "confirm_rounds": 20},
    ],
    "failed": {"4": "out of memory"},
}  # fmt: skip
TEST = {
    "samples": 300, "seconds": 0.2,
    "entries": [{"trial": "float", "P_test": 0.96, "gate_passed_test": True},
                {"trial": 3, "P_test": 0.955, "gate_passed_test": True}],
    "failed": {},
    "gate": {"baseline_P": 0.96, "max_drop": 0.01, "min_accuracy": None, "threshold": 0.95},
}  # fmt: skip


def test_the_metric_keys_are_the_row_fields_in_their_stored_order() -> None:
    assert METRIC_KEYS == ("C", "P", "T_ms", "I", "I_prime", "gate_passed", "avg_weight_bits",
                           "stored_bytes")  # fmt: skip
    assert TrialKey.I_PRIME in METRIC_KEYS
    # A trial stores a Metrics record: a row reads back its fields, whatever their order.
    assert set(METRIC_KEYS) == {f.name for f in fields(Metrics)} - {"baseline_bytes", "unit"}


def test_a_row_reads_a_trials_attributes_and_gives_the_old_dict_back() -> None:
    row = TrialRow.from_attrs(3, {"fc": "int8"}, ATTRS)
    assert row.to_dict() == {"trial": 3, "plan": {"fc": "int8"},
                             **{k: ATTRS[k] for k in METRIC_KEYS}, "feasible": False}  # fmt: skip
    assert list(row.to_dict()) == ["trial", "plan", *METRIC_KEYS, "feasible"]
    # A study written before ``feasible`` was stored: its gate decides.
    older = TrialRow.from_attrs(3, {"fc": "int8"}, {k: ATTRS[k] for k in METRIC_KEYS})
    assert older.feasible is True and older.uniform and older.plan_key == '{"fc": "int8"}'


def test_stored_finalist_records_round_trip_exactly() -> None:
    confirmation = Confirmation.from_dict(CONFIRMATION)
    assert confirmation.to_dict() == CONFIRMATION
    assert list(confirmation.to_dict()) == list(CONFIRMATION)
    assert confirmation.covered() == {"float", "3", "4"}
    assert confirmation.of_float().T_confirmed_ms == 1.0
    assert set(confirmation.by_trial()) == {3}
    test = TestResult.from_dict(TEST)
    assert test.to_dict() == TEST and list(test.to_dict()) == list(TEST)
    # Without a float score there is no test gate, and none is written.
    no_gate = {k: v for k, v in TEST.items() if k != "gate"}
    assert TestResult.from_dict(no_gate).to_dict() == no_gate


def test_a_finalist_is_one_flat_row_scored_by_its_confirmed_t() -> None:
    row = TrialRow.from_attrs(3, {"fc": "int8"}, ATTRS)
    confirmed = Confirmation.from_dict(CONFIRMATION).by_trial()[3]
    tested = TestResult.from_dict(TEST).by_trial()[3]
    finalist = Finalist(row, True, confirmed, tested)
    assert (finalist.I_prime, finalist.I, finalist.T_ms, finalist.p_test) == (
        2.9,
        2.9,
        1.5,
        0.955,
    )
    flat = finalist.to_dict()
    assert flat == {**row.to_dict(), **confirmed.to_dict(), **tested.to_dict(), "feasible": True}
    assert list(flat)[: len(row.to_dict())] == list(row.to_dict())  # the trial's keys first
    plain = Finalist(row, False)
    assert (plain.I_prime, plain.T_ms, plain.p_test) == (2.4, 2.0, None)
    assert plain.to_dict() == row.to_dict()  # feasible False either way
    # Budgets read T confirmed where it is: 1.5 ms fits 1.8 ms, the search's 2.0 would not.
    assert finalist.fits(Budget(max_latency_ms=1.8)) and not plain.fits(Budget(max_latency_ms=1.8))
    assert not finalist.fits(Budget(max_size_mb=1000 / MIB))


def test_a_record_of_another_shape_is_a_storage_error() -> None:
    import pytest

    from quide_search.errors import StorageError

    entry = CONFIRMATION["entries"][1]  # type: ignore[index]
    for broken in (
        {**CONFIRMATION, "entries": [{"trial": 3, "T_confirmed_ms": 1.5}]},  # an entry's field
        {k: v for k, v in CONFIRMATION.items() if k != "rounds"},  # a count it reports
        {**CONFIRMATION, "entries": [{**entry, "trial": "x"}]},  # neither a number nor float
        {**CONFIRMATION, "failed": [1]},
        {**CONFIRMATION, "entries": None},
    ):
        with pytest.raises(StorageError, match="the study attribute 'confirmation' must have"):
            Confirmation.from_dict(broken)
    for broken in (
        {**TEST, "gate": {"max_drop": 0.01}},  # a gate without the float model's test P
        {**TEST, "gate": {**TEST["gate"], "max_drop": None}},  # no rule left  # type: ignore[dict-item]
    ):
        with pytest.raises(StorageError, match="the study attribute 'test' must have"):
            TestResult.from_dict(broken)
    # Keys a later version adds are ignored, in the record and in its entries.
    later = {**CONFIRMATION, "new": 1, "entries": [{**entry, "new": 2}]}
    assert Confirmation.from_dict(later).to_dict() == {**CONFIRMATION, "entries": [entry]}


def test_a_budget_answer_is_what_show_json_prints() -> None:
    row = TrialRow.from_attrs(3, {"fc": "int8"}, ATTRS)
    answer = BudgetAnswer(Budget(max_size_mb=0.5), Finalist(row, True), None, 7, True)
    assert answer.to_dict() == {"limits": "size <= 0.5 MiB", "best": {**row.to_dict(),
                                "feasible": True}, "why": None, "trials": 7,
                                "test_split": True}  # fmt: skip
    # A confirmed and tested pick lists its test values first, as the answer always has.
    both = Finalist(row, True, Confirmation.from_dict(CONFIRMATION).by_trial()[3],
                    TestResult.from_dict(TEST).by_trial()[3])  # fmt: skip
    keys = list(BudgetAnswer(Budget(), both, None, 7, True).to_dict()["best"])
    assert keys.index("P_test") < keys.index("T_confirmed_ms")
    shown = list(both.to_dict())  # as the recommended row: its confirmed values first
    assert shown.index("P_test") > shown.index("T_confirmed_ms") and set(shown) == set(keys)
    none = BudgetAnswer(Budget(max_latency_ms=1.0), None, "nothing fits", 7, False)
    assert none.to_dict()["best"] is None and none.to_dict()["why"] == "nothing fits"
