"""Sensitivity measurement and the greedy allocation built on it."""

from __future__ import annotations

import pytest

from quide_search.plan import PRECISIONS
from quide_search.search.sensitivity import greedy_path, greedy_plans, measure_sensitivity
from quide_search.search.space import group_layers

_SENS = {
    "a": {"int8": {"kl": 0.001}, "int4": {"kl": 0.5}, "int2": {"kl": 2.0}},
    "b": {"int8": {"kl": 0.0}, "int4": {"kl": 0.01}, "int2": {"kl": 0.02}},
    "c": {"int8": {"kl": 0.0}, "int4": {"kl": 0.1}, "int2": {"kl": 0.3}},
}
_WEIGHTS = {"a": 100, "b": 100, "c": 100}
_BITS = ("int8", "int4", "int2")


def _average(plan: dict[str, str]) -> float:
    return sum(PRECISIONS[q] * _WEIGHTS[g] for g, q in plan.items()) / sum(_WEIGHTS.values())


def test_greedy_path_gives_bits_to_the_most_sensitive_first() -> None:
    path = greedy_path(_SENS, _WEIGHTS, _BITS)
    assert path[0] == dict.fromkeys("abc", "int2")
    assert path[-1] == dict.fromkeys("abc", "int8")
    # a loses 1.5 KL per 2 bits by going to int4 (0.75/bit): the first upgrade.
    assert path[1] == {"a": "int4", "b": "int2", "c": "int2"}
    averages = [_average(p) for p in path]
    assert averages == sorted(averages)
    # b is nearly insensitive: it is the last group to leave int2.
    assert [p["b"] for p in path].index("int4") > [p["c"] for p in path].index("int4")


def test_greedy_plans_stay_within_their_budgets_and_are_mixed() -> None:
    plans = greedy_plans(_SENS, _WEIGHTS, _BITS, budgets=5)
    assert plans and len(plans) == len({tuple(sorted(p.items())) for p in plans})
    for plan in plans:
        assert len(set(plan.values())) > 1
        assert _average(plan) <= 7.0 + 1e-9
    assert plans[0] == {"a": "int4", "b": "int2", "c": "int2"}  # budget 3 bits


def test_float_choice_adds_budgets_above_the_quantized_bits() -> None:
    sens = {g: {**row, "float": {"kl": 0.0}} for g, row in _SENS.items()}
    plans = greedy_plans(sens, _WEIGHTS, ("float", *_BITS), budgets=5)
    assert any("float" not in p.values() for p in plans)


def test_measured_sensitivity_grows_as_bits_shrink(cpu_scorer) -> None:  # type: ignore[no-untyped-def]
    scorer = cpu_scorer
    groups = group_layers(list(scorer.weight_counts), "layer")
    table = measure_sensitivity(scorer, groups, ("int8", "int4", "int2"))
    assert list(table) == ["conv1", "conv2", "fc1", "fc2"]
    for row in table.values():
        assert 0 <= row["int8"]["kl"] < row["int4"]["kl"] < row["int2"]["kl"]
        for value in row.values():
            assert -1.0 <= value["accuracy_change"] <= 1.0
            # Scored on the first 128 calibration samples: changes come in steps of 1/128.
            steps = value["accuracy_change"] * 128
            assert steps == pytest.approx(round(steps), abs=1e-9)
    # The float model is restored after each measurement.
    assert not any(type(m).__module__.startswith("optimum") for m in scorer.model.modules())
