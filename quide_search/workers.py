"""Local parallel workers: extra processes that join the study the parent has prepared.

Each worker is a fresh ``spawn`` process (no forked torch or database state) that opens the same
storage, finds the study with its protocol and baseline already stored, and runs trials until the
study holds the target number of completed trials. Workers use distinct sampler seeds so their
first random proposals differ.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from multiprocessing.process import BaseProcess
from typing import Any

from quide_search.config import RunConfig

__all__ = ["start_workers", "stop_workers"]

_INTERRUPT_GRACE_S = 5.0
_STOP_GRACE_S = 60.0


def start_workers(config: RunConfig, count: int) -> list[BaseProcess]:
    """Start ``count`` worker processes on the study of ``config`` and return them."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    for index in range(1, count + 1):
        process = context.Process(
            target=_work, args=(config.to_dict(), index), name=f"quide-worker-{index}"
        )
        process.start()
        processes.append(process)
    return processes


def stop_workers(processes: list[BaseProcess], *, interrupted: bool) -> list[str]:
    """Wait for the workers to finish and return one line per worker that did not end well.

    After an interruption, a worker that is still running is sent SIGINT (so its trial is
    recorded as failed and queued again) and, if it still does not stop, terminated.
    """
    problems = []
    for process in processes:
        process.join(_INTERRUPT_GRACE_S if interrupted else None)
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
            process.join(_STOP_GRACE_S)
        if process.is_alive():
            process.terminate()
            process.join()
        if process.exitcode not in (0, 130) or (process.exitcode == 130 and not interrupted):
            problems.append(f"{process.name} exited with code {process.exitcode}")
    return problems


def _work(config_data: dict[str, Any], index: int) -> None:
    from quide_search.errors import QuideError
    from quide_search.session import open_session, optimize

    config = RunConfig(**{**config_data, "bits": tuple(config_data["bits"]), "workers": 1})

    def echo(message: str) -> None:
        print(f"[worker {index}] {message}", file=sys.stderr)

    try:
        session = open_session(config, sampler_seed=config.seed + index)
        optimize(session, config.trials, progress=False, echo=echo)
    except QuideError as e:
        echo(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
