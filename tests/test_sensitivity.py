"""Sensitivity measurement and the greedy allocation built on it."""

from __future__ import annotations

import torch

from quide_search.plan import QTYPES
from quide_search.scorer import Scorer
from quide_search.search import group_layers
from quide_search.sensitivity import greedy_path, greedy_plans, measure_sensitivity
from quide_search.task import Task

_SENS = {
    "a": {"qint8": {"kl": 0.001}, "qint4": {"kl": 0.5}, "qint2": {"kl": 2.0}},
    "b": {"qint8": {"kl": 0.0}, "qint4": {"kl": 0.01}, "qint2": {"kl": 0.02}},
    "c": {"qint8": {"kl": 0.0}, "qint4": {"kl": 0.1}, "qint2": {"kl": 0.3}},
}
_WEIGHTS = {"a": 100, "b": 100, "c": 100}
_BITS = ("qint8", "qint4", "qint2")


def _average(plan: dict[str, str]) -> float:
    return sum(QTYPES[q] * _WEIGHTS[g] for g, q in plan.items()) / sum(_WEIGHTS.values())


def test_greedy_path_gives_bits_to_the_most_sensitive_first() -> None:
    path = greedy_path(_SENS, _WEIGHTS, _BITS)
    assert path[0] == dict.fromkeys("abc", "qint2")
    assert path[-1] == dict.fromkeys("abc", "qint8")
    # a loses 1.5 KL per 2 bits by going to int4 (0.75/bit): the first upgrade.
    assert path[1] == {"a": "qint4", "b": "qint2", "c": "qint2"}
    averages = [_average(p) for p in path]
    assert averages == sorted(averages)
    # b is nearly insensitive: it is the last group to leave int2.
    assert [p["b"] for p in path].index("qint4") > [p["c"] for p in path].index("qint4")


def test_greedy_plans_stay_within_their_budgets_and_are_mixed() -> None:
    plans = greedy_plans(_SENS, _WEIGHTS, _BITS, budgets=5)
    assert plans and len(plans) == len({tuple(sorted(p.items())) for p in plans})
    for plan in plans:
        assert len(set(plan.values())) > 1
        assert _average(plan) <= 7.0 + 1e-9
    assert plans[0] == {"a": "qint4", "b": "qint2", "c": "qint2"}  # budget 3 bits


def test_float_choice_adds_budgets_above_the_quantized_bits() -> None:
    sens = {g: {**row, "none": {"kl": 0.0}} for g, row in _SENS.items()}
    plans = greedy_plans(sens, _WEIGHTS, ("none", *_BITS), budgets=5)
    assert any("none" not in p.values() for p in plans)


def test_measured_sensitivity_grows_as_bits_shrink(digits_task: Task) -> None:
    scorer = Scorer(digits_task, device=torch.device("cpu"))
    groups = group_layers(list(scorer.weight_counts), "layer")
    table = measure_sensitivity(scorer, groups, ("qint8", "qint4", "qint2"))
    assert list(table) == ["conv1", "conv2", "fc1", "fc2"]
    for row in table.values():
        assert 0 <= row["qint8"]["kl"] < row["qint4"]["kl"] < row["qint2"]["kl"]
        for value in row.values():
            assert -1.0 <= value["accuracy_change"] <= 1.0
    # The float model is restored after each measurement.
    assert not any("quanto" in type(m).__module__ for m in scorer.model.modules())
