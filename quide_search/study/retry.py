"""Who ran a trial, why it failed when a process was stopped or lost, and its one retry.

A trial cut short by SIGINT, SIGTERM or a silent worker is FAIL with a ``fail_reason``; its plan
is queued again once (never a retry's), so one stray signal costs no plan.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from quide_search.records import TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["INTERRUPTED", "NO_HEARTBEAT", "TERMINATED", "requeue_stale", "retry_once",
           "this_worker", "worker_tag"]  # fmt: skip

INTERRUPTED = "interrupted by SIGINT (Ctrl-C) while the trial ran"
"""``fail_reason`` of a trial stopped by Ctrl-C."""
TERMINATED = "stopped by SIGTERM while the trial ran"
"""``fail_reason`` of a trial stopped by SIGTERM (a scheduler or service manager)."""

NO_HEARTBEAT = "its worker stopped sending heartbeats (killed or lost)"
"""``fail_reason`` of a trial whose worker went silent, and ``retry_reason`` of its retry."""


def worker_tag(pid: int) -> str:
    """``host:pid``, what a trial's ``worker`` attribute names the process that ran it by."""
    return f"{socket.gethostname()}:{pid}"


def this_worker() -> str:
    """This process's :func:`worker_tag`, read at each call (a worker process has its own
    pid)."""
    return worker_tag(os.getpid())


def retry_once(
    study: optuna.Study,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
    number: int,
    reason: str,
) -> bool:
    """Queue the plan of failed trial ``number`` again unless that trial was itself a retry.

    Returns:
        Whether the plan was queued.
    """
    if TrialKey.RETRY_OF in user_attrs:
        return False
    study.enqueue_trial(
        dict(params), user_attrs={TrialKey.RETRY_OF: number, TrialKey.RETRY_REASON: reason}
    )
    return True


def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna heartbeat callback: retry once the plan of a trial whose worker went silent."""
    retry_once(study, trial.params, trial.user_attrs, trial.number, NO_HEARTBEAT)
