"""The trial loop's own work around a trial: its worker, and what a stop does to it."""

from __future__ import annotations

import signal

import optuna
import pytest

from quide_search.errors import Stopped
from quide_search.search.stop import StopSwitch
from quide_search.study.optimize import _one_trial
from quide_search.study.retry import INTERRUPTED, TERMINATED, this_worker


class _Objective:
    """Draws two groups' parameters, then is stopped by ``signum`` while it measures."""

    groups = {"a": ["a"], "b": ["b"]}

    def __init__(self, signum: int, *, draw: int = 2) -> None:
        self.stops, self.signum, self.draw = StopSwitch(), signum, draw

    def __call__(self, trial: optuna.Trial) -> float:
        for group in list(self.groups)[: self.draw]:
            trial.suggest_categorical(group, ["int8", "int4"])
        with self.stops.measuring():
            self.stops.ask(self.signum)  # as the loop's signal handler does
        return 1.0


@pytest.mark.parametrize(("signum", "reason"), [(signal.SIGINT, INTERRUPTED),
                                                (signal.SIGTERM, TERMINATED)])  # fmt: skip
def test_a_stopped_trial_fails_with_the_reason_and_its_plan_is_queued_once(
    signum: int, reason: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    objective = _Objective(signum)
    with pytest.raises(Stopped):
        study.optimize(_one_trial(objective), n_trials=1)  # type: ignore[arg-type]
    [failed, queued] = study.get_trials(deepcopy=False)
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs == {"worker": this_worker(), "fail_reason": reason}
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == failed.params  # enqueued: drawn as before
    assert queued.user_attrs == {"retry_of": failed.number, "retry_reason": reason}


def test_a_trial_stopped_before_its_plan_is_whole_is_not_queued_again() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    with pytest.raises(Stopped):
        study.optimize(_one_trial(_Objective(signal.SIGINT, draw=1)), n_trials=1)  # type: ignore[arg-type]
    [failed] = study.get_trials(deepcopy=False)
    assert failed.user_attrs["fail_reason"] == INTERRUPTED


def test_a_stop_before_the_trial_starts_fails_it_without_a_retry() -> None:
    class Checked(_Objective):
        """Checks the stop first, as ``PlanObjective.__call__`` does."""

        def __call__(self, trial: optuna.Trial) -> float:
            self.stops.check()
            return super().__call__(trial)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    objective = Checked(signal.SIGTERM)
    objective.stops.ask(signal.SIGTERM)  # between trials: recorded, not raised
    with pytest.raises(Stopped):
        study.optimize(_one_trial(objective), n_trials=1)  # type: ignore[arg-type]
    [failed] = study.get_trials(deepcopy=False)  # nothing drawn, so nothing queued again
    assert failed.user_attrs == {"worker": this_worker(), "fail_reason": TERMINATED}
