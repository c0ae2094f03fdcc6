"""The trial loop of one process, and how it stops on Ctrl-C (SIGINT) or SIGTERM.

The loop owns what happens around a trial: who ran it, the signal handlers, and what a stop
does to the trial in hand; the objective only scores it. SIGTERM is what systemd, Kubernetes,
Slurm and CI runners send; it is handled like Ctrl-C: the trial in hand is recorded as failed
with the reason, its plan is queued again once, and the process ends with 128 + the signal's
number (130, 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from quide_search.records import TrialKey
from quide_search.study.retry import INTERRUPTED, TERMINATED, retry_once, this_worker

if TYPE_CHECKING:
    import optuna

    from quide_search.search.objective import PlanObjective
    from quide_search.search.stop import StopSwitch
    from quide_search.study.session import Session

__all__ = ["COUNTED", "STOP_SIGNALS", "completed", "handlers_restored", "optimize"]

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
"""Trial states that count towards --trials: scored in full, or proved to fail the gate."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def optimize(
    session: Session,
    target: int,
    *,
    progress: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Run trials in this process until the study holds ``target`` counted trials.

    Other processes may be adding trials to the same study; each stops once the shared count
    reaches the target, so a study can end up to (workers - 1) over it, by the trials that
    were already running then.

    Raises:
        Stopped: After SIGINT or SIGTERM, once the trial in hand is recorded.
    """
    from optuna.study import MaxTrialsCallback

    from quide_search.errors import TrialEvaluationError
    from quide_search.search.warmstart import refine_on_path
    from quide_search.study.heartbeat import fail_stale

    study = session.study
    fail_stale(study)
    done = completed(study)
    if target - done <= 0:
        return
    objective = session.objective

    def stop_if_asked(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if objective.stops.asked:
            study.stop()

    shown = _Progress(target, done, progress=progress, echo=echo)
    try:
        with _signals_between_trials(objective.stops):
            # Failed trials do not count towards the target: allow as many again, then stop.
            study.optimize(
                _one_trial(objective),
                n_trials=2 * (target - done) + 10,
                catch=(TrialEvaluationError,),
                callbacks=[
                    MaxTrialsCallback(target, states=COUNTED),
                    refine_on_path(objective),
                    fail_stale,
                    shown,
                    stop_if_asked,
                ],
            )
    finally:
        shown.bar.close()
    objective.stops.check()


class _Progress:
    """Optuna callback: the trials bar with the best I' so far, and a line per failed trial."""

    def __init__(self, target: int, done: int, *, progress: bool, echo: Callable[[str], None]):
        from tqdm import tqdm

        self.target, self.best = target, float("-inf")
        self.bar = tqdm(total=target, initial=done, desc="trials", unit="trial",
                        disable=not progress)  # fmt: skip
        self.echo = self.bar.write if progress else echo

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in COUNTED:
            self.best = max(self.best, float(trial.user_attrs.get(TrialKey.I_PRIME, 0.0)))
            self.bar.n = min(self.target, completed(study))
            self.bar.set_postfix(best_I_prime=f"{self.best:.3f}")
        elif trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get(TrialKey.FAIL_REASON, "unexpected error")
            self.echo(f"trial {trial.number} failed: {reason}")


def _one_trial(
    objective: PlanObjective,
) -> Callable[[optuna.Trial], float | tuple[float, float, float]]:
    """The objective as the loop runs it: the trial names its worker, and a trial cut short
    by a stop signal is failed with the reason and its plan queued once more (the plan is
    whole only once every group has its parameter)."""

    def run(trial: optuna.Trial) -> float | tuple[float, float, float]:
        try:
            trial.set_user_attr(TrialKey.WORKER, this_worker())
            return objective(trial)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL and re-raises; the reason and one retry are ours.
            reason = TERMINATED if objective.stops.signum == signal.SIGTERM else INTERRUPTED
            trial.set_user_attr(TrialKey.FAIL_REASON, reason)
            if len(trial.params) == len(objective.groups):
                retry_once(trial.study, trial.params, trial.user_attrs, trial.number, reason)
            raise

    return run


@contextlib.contextmanager
def _signals_between_trials(stops: StopSwitch) -> Iterator[None]:
    """Make SIGINT and SIGTERM stop a running trial, but never in the middle of a storage call.

    While a plan is being measured, the signal raises KeyboardInterrupt at once (the loop
    records the trial as failed and queues its plan again). During the trial's
    storage I/O it only records the signal, and the trial fails the same way at its next
    check. Between trials it records the signal too: the study stops after the trial in hand
    is stored, so no trial is left RUNNING by the signal.

    Once a stop is asked, later signals do not interrupt what it records: a second Ctrl-C, a
    SIGTERM sent to the whole process group and again by the parent to its workers, or a
    scheduler's repeated SIGTERM. From then on (until :func:`handlers_restored` ends) they
    are answered with one line; SIGKILL still stops the process at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stops.asked:
            _already_stopping(signum, frame)
            return
        stops.ask(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, _already_stopping if stops.asked else before)


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    import sys

    print(
        f"quide-search: {signal.Signals(signum).name} ignored: already stopping, once the "
        "running trials are recorded (SIGKILL stops at once and leaves them RUNNING).",
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def handlers_restored() -> Iterator[None]:
    """Put back the SIGINT and SIGTERM handlers found on entry when the block ends.

    :func:`optimize` leaves further stop signals ignored after a stop, so that the shutdown
    after it (workers joined, trials recorded) is not cut short; the caller's handlers come
    back here, once that shutdown is over.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, before in previous.items():
            if before is not None:
                signal.signal(s, before)


def completed(study: optuna.Study) -> int:
    """Trials that count towards ``--trials`` (complete, or proved to fail the gate)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))
