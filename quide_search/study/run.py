"""A whole search: open the study, run trials (in this process and any workers), confirm the
finalists, score them on the held-out test split, persist the Pareto front and summarise."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from quide_search.config import RunConfig
from quide_search.files import check_replaceable, is_generated_json
from quide_search.study.summary import SearchSummary, front_path, persist_front, summarize

if TYPE_CHECKING:
    import optuna

    from quide_search.study.workers import WorkerPool

__all__ = ["run_search"]


def run_search(
    config: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print
) -> SearchSummary:
    """Create or resume the study of ``config`` and run it until it holds ``trials`` trials.

    Running again with the same config runs no more trials; a larger ``trials`` extends the
    study. With ``config.workers > 1``, that many processes (this one included) share the
    work. At the end the finalists are re-timed side by side (``config.confirm_top``) and
    scored on the held-out test split; the recommended plan is the best by confirmed I'
    whose P passes the gate on the search split and on the test split.

    Raises:
        QuideError: For bad settings or an unusable storage, before anything is written.
        Stopped: After SIGINT or SIGTERM, once the running trials are recorded as failed
            and queued again.
    """
    from quide_search.latency import torch_threads
    from quide_search.progress import shown
    from quide_search.study.confirm import confirm_study
    from quide_search.study.holdout import test_study
    from quide_search.study.optimize import handlers_restored, optimize
    from quide_search.study.session import open_session
    from quide_search.study.setup import check_paths
    from quide_search.study.workers import WorkerPool

    check_paths(config)
    front = front_path(config.study_name, config.storage_url, config.out_dir)
    check_replaceable(front, ours=is_generated_json, flag="the Pareto front file")
    with torch_threads(config.threads), shown(progress), handlers_restored():
        session = open_session(config)
        for note in (session.protocol.search.exclusion_line(), session.latency_fallback()):
            if note is not None:
                echo(note)
        parallel = config.workers > 1 and config.trials > 0
        timed = not session.objective.scorer.latency.deterministic  # T measured per trial
        if parallel and timed and session.objective.scorer.device.type == "cpu":
            echo(
                f"note: {config.workers} workers share {os.cpu_count()} CPU cores, so T is "
                "measured while other trials run; --threads 1 keeps them from oversubscribing."
            )
        pool: WorkerPool | None = None
        signum: int | None = None
        try:
            if parallel:
                pool = WorkerPool(config, config.workers - 1)
                if not pool.wait_ready():
                    echo("warning: a worker failed to start; going on with those that did.")
            optimize(session, config.trials, progress=progress, echo=echo)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            raise
        finally:
            groups = len(session.objective.groups)
            lost = _stop_workers(session.study, pool, signum, echo, groups) if pool else []
        if config.trials > 0:
            confirm_study(session.study, session.objective, top=config.confirm_top)
            test_study(session.study, session.objective, top=config.confirm_top)
    summary = summarize(session.study, storage_url=session.storage_url, out_dir=config.out_dir)
    persist_front(session.study, summary)
    return dataclasses.replace(summary, lost_workers=tuple(lost))


def _stop_workers(
    study: optuna.Study,
    pool: WorkerPool,
    signum: int | None,
    echo: Callable[[str], None],
    groups: int,
) -> list[str]:
    """Stop ``pool``; say how each worker that did not end well ended, and fail the trials
    it left RUNNING (retried once). Returns those lines."""
    from quide_search.study.heartbeat import fail_trials_of

    lines = []
    for end in pool.stop(signum=signum):
        why = f"its worker process ended: {end.message}"
        failed = fail_trials_of(study, end.worker, why, params=groups)
        lines.append(
            end.message
            + (f"; its running trial {', '.join(map(str, failed))} was failed and queued "
               "again" if failed else "")
        )  # fmt: skip
        echo(f"warning: {lines[-1]}")
    return lines
