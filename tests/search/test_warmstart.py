"""Refinement on the greedy path: the plans between the last failing and first passing point."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna

from quide_search.records import StudyKey
from quide_search.search.warmstart import refine_on_path

PATH_ATTR = StudyKey.GREEDY_PATH

_GROUPS = ("a", "b")
_CHOICES = ("int2", "int4", "int8")
_PATH = [
    ["int2", "int2"], ["int4", "int2"], ["int4", "int4"], ["int8", "int4"],
    ["int8", "int8"],
]  # fmt: skip


def _study(scored: dict[int, bool], waiting_greedy: bool = False) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(PATH_ATTR, _PATH)
    dist = optuna.distributions.CategoricalDistribution(_CHOICES)
    for index, passed in scored.items():
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(zip(_GROUPS, _PATH[index], strict=True)),
                distributions=dict.fromkeys(_GROUPS, dist),
                value=1.0 if passed else 0.0,
                user_attrs={"gate_passed": passed},
            )
        )
    if waiting_greedy:
        study.enqueue_trial({"a": "int8", "b": "int2"}, user_attrs={"warm_start": "greedy"})
    return study


def _queued(study: optuna.Study) -> list[dict[str, Any]]:
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    return [
        t.system_attrs["fixed_params"] for t in waiting if t.user_attrs.get("warm_start") == "path"
    ]


def _objective() -> Any:
    return SimpleNamespace(groups={g: [g] for g in _GROUPS}, choices=list(_CHOICES),
                           group_choices={g: list(_CHOICES) for g in _GROUPS})  # fmt: skip


def test_queues_the_plans_between_the_crossing_once() -> None:
    study = _study({0: False, 3: True, 4: True})
    callback = refine_on_path(_objective())
    callback(study, study.trials[-1])
    assert _queued(study) == [{"a": "int4", "b": "int2"}, {"a": "int4", "b": "int4"}]
    callback(study, study.trials[-1])  # once only
    assert len(_queued(study)) == 2 and study.user_attrs["path_refined"] is True


def test_waits_for_the_greedy_plans_still_queued() -> None:
    study = _study({0: False, 3: True}, waiting_greedy=True)
    refine_on_path(_objective())(study, study.trials[-1])
    assert _queued(study) == [] and "path_refined" not in study.user_attrs


def test_nothing_to_refine_when_no_path_point_passes() -> None:
    study = _study({0: False, 2: False})
    refine_on_path(_objective())(study, study.trials[-1])
    assert _queued(study) == [] and study.user_attrs["path_refined"] is True


def test_climbs_from_the_best_feasible_plan_once() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(PATH_ATTR, _PATH)
    study.set_user_attr("path_refined", True)
    dist = optuna.distributions.CategoricalDistribution(_CHOICES)
    for params, value in ((("int4", "int8"), 2.0), (("int4", "int4"), 0.0)):
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(zip(_GROUPS, params, strict=True)),
                distributions=dict.fromkeys(_GROUPS, dist),
                value=value,
                user_attrs={"feasible": value > 0, "I_prime": value, "gate_passed": value > 0},
            )
        )
    objective = _objective()
    callback = refine_on_path(objective)  # type: ignore[arg-type]
    callback(study, study.trials[-1])
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    # One step down first (a: int2), then up (a: int8); b: int4 was scored, b has no step up.
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"a": "int2", "b": "int8"},
        {"a": "int8", "b": "int8"},
    ]
    assert study.user_attrs["climbed_from"] == [["int4", "int8"]]
