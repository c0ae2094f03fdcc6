"""Trials whose worker stopped sending heartbeats: failed with the reason, retried once.

Optuna fails such a trial itself at the start of the next trial, but only after it is
finished can its callback see it, and a finished trial takes no more attributes. So each
process fails them first, right before its trials and after each one: the reason goes onto
the trial while it is still RUNNING, then the trial is failed and its plan queued again once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search.records import TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["fail_stale", "fail_trials_of"]


def fail_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
    """Fail the study's stale trials with ``fail_reason`` and queue their plans once.

    Usable as an Optuna callback (``trial`` is ignored). Does nothing on storages without
    heartbeats.
    """
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    from quide_search.study.retry import NO_HEARTBEAT, retry_once

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return
    # Optuna keeps no public way to ask which trials are stale; this is the one it uses.
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        stale = _fail(study, trial_id, NO_HEARTBEAT)
        if stale is not None:
            retry_once(study, stale.params, stale.user_attrs, stale.number, NO_HEARTBEAT)


def fail_trials_of(
    study: optuna.Study, worker: str, reason: str, *, params: int | None = None
) -> list[int]:
    """Fail the RUNNING trials of ``worker`` (``host:pid``, a process known to be gone) with
    ``reason``, and queue each plan once more where the trial had drawn all its ``params``
    (one per search group; None: any); return their numbers.

    A process that was killed (SIGKILL from the out-of-memory killer) records nothing, and
    storages without heartbeats would keep its trial RUNNING for ever.
    """
    import optuna

    from quide_search.study.retry import retry_once

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get(TrialKey.WORKER) != worker:
            continue
        if _fail(study, trial._trial_id, reason) is not None:
            if params is None or len(trial.params) == params:
                retry_once(study, trial.params, trial.user_attrs, trial.number, reason)
            failed.append(trial.number)
    return failed


def _fail(study: optuna.Study, trial_id: int, reason: str) -> optuna.trial.FrozenTrial | None:
    """Record ``reason`` on a RUNNING trial, then fail it; return it failed, or None where
    another process finished it first (the reason goes on while the trial still takes it)."""
    import optuna

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, TrialKey.FAIL_REASON, reason)
        if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return storage.get_trial(trial_id)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # finished meanwhile (by another process's heartbeat check, or its own end)
    return None
