"""Warm starts: queue sensitivity-greedy plans, refine where the greedy path meets the gate,
then climb from the best plan one layer at a time.

The greedy path (``sensitivity.greedy_path``) runs from the fewest bits to the most. Its plans
fail the gate at first and pass it later, and I' is usually highest just past that point
(the fewest bytes that still pass). Queuing plans at a few bit budgets finds the two budgets
the crossing lies between. Once those plans are scored, the path's plans between them are
queued too, so the search sees the greedy allocation's best plan. Then, while the best
feasible plan changes, its neighbours (one group one precision step down or up) are queued;
failing neighbours cost little, since early stopping ends them. TPE proposes plans whenever
the queue is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from quide_search.records import StudyKey, TrialKey, WarmStart

if TYPE_CHECKING:
    import optuna

    from quide_search.search.objective import PlanObjective

__all__ = ["queue_warm_starts", "refine_on_path"]

_MAX_PATH_CELLS = 50_000  # plans x groups stored in the study; larger paths are not refined
_QUEUED_KINDS = (WarmStart.GREEDY, WarmStart.PATH, WarmStart.NEIGHBOUR)


def queue_warm_starts(
    study: optuna.Study, objective: PlanObjective, sensitivity: dict[str, Any]
) -> int:
    """Queue the greedy plans at bit budgets and store the path for :func:`refine_on_path`.

    Returns:
        The number of plans queued.
    """
    from quide_search.search.sensitivity import warm_plans

    plans, path = warm_plans(
        objective.scorer, objective.groups, objective.group_choices, sensitivity
    )
    for plan in plans:
        study.enqueue_trial(
            plan, user_attrs={TrialKey.WARM_START: WarmStart.GREEDY}, skip_if_exists=True
        )
    groups = list(objective.groups)
    if len(path) * len(groups) <= _MAX_PATH_CELLS:
        study.set_user_attr(StudyKey.GREEDY_PATH, [[p[g] for g in groups] for p in path])
    return len(plans)


def refine_on_path(
    objective: PlanObjective,
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Return an Optuna callback that queues, once, the path's plans around the gate crossing.

    It waits until no greedy warm-start plan is left in the queue, then takes the lowest path
    point that passed the gate and the highest one below it that failed, and queues every path
    plan strictly between them that has not been scored.
    """
    groups = list(objective.groups)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        import optuna

        attrs = study.user_attrs
        if StudyKey.GREEDY_PATH not in attrs:
            return
        states = optuna.trial.TrialState
        waiting = study.get_trials(deepcopy=False, states=(states.WAITING,))
        if any(t.user_attrs.get(TrialKey.WARM_START) in _QUEUED_KINDS for t in waiting):
            return
        if attrs.get(StudyKey.PATH_REFINED):
            _climb(study, groups, objective.group_choices)
            return
        path = [tuple(p) for p in attrs[StudyKey.GREEDY_PATH]]
        passed: dict[tuple[str, ...], bool] = {}
        for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)):
            if set(t.params) == set(groups):
                passed[tuple(t.params[g] for g in groups)] = bool(
                    t.user_attrs.get(TrialKey.GATE_PASSED)
                )
        scored = [i for i, p in enumerate(path) if p in passed]
        first_pass = min((i for i in scored if passed[path[i]]), default=None)
        study.set_user_attr(StudyKey.PATH_REFINED, True)
        if first_pass is None:
            return
        last_fail = max((i for i in scored if i < first_pass and not passed[path[i]]), default=-1)
        for plan in path[last_fail + 1 : first_pass]:
            if plan not in passed:
                study.enqueue_trial(
                    dict(zip(groups, plan, strict=True)),
                    user_attrs={TrialKey.WARM_START: WarmStart.PATH},
                    skip_if_exists=True,
                )

    return callback


def _climb(study: optuna.Study, groups: list[str], choices: Mapping[str, list[str]]) -> None:
    """Queue the unscored neighbours of the best feasible plan (each group one step up or
    down its own ``choices``), once per best plan."""
    import optuna

    from quide_search.plan import weight_bits

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [
        t for t in done if t.user_attrs.get(TrialKey.FEASIBLE) and set(t.params) == set(groups)
    ]
    if not feasible:
        return
    best = max(feasible, key=lambda t: (t.user_attrs[TrialKey.I_PRIME], -t.number))
    key = [best.params[g] for g in groups]
    climbed = list(study.user_attrs.get(StudyKey.CLIMBED_FROM, []))
    if key in climbed:
        return
    study.set_user_attr(StudyKey.CLIMBED_FROM, [*climbed, key])
    scored = {tuple(t.params.get(g) for g in groups) for t in study.get_trials(deepcopy=False)}
    for step in (-1, 1):  # fewer bits first: that is where I' grows
        for g in groups:
            ladder = sorted(choices[g], key=weight_bits)
            i = ladder.index(best.params[g]) + step
            if 0 <= i < len(ladder):
                plan = {**best.params, g: ladder[i]}
                if tuple(plan[h] for h in groups) not in scored:
                    study.enqueue_trial(
                        plan, user_attrs={TrialKey.WARM_START: WarmStart.NEIGHBOUR}
                    )
