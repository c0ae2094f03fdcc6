"""Local parallel workers: extra processes that join the study the parent has prepared.

Each worker is a fresh ``spawn`` process (no forked torch or database state) that opens the same
storage, finds the study with its protocol and baseline already stored, and runs trials until the
study holds the target number of completed trials. Workers use distinct sampler seeds so their
first random proposals differ, and all processes start trials together.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

from quide_search.config import RunConfig

__all__ = ["WorkerEnd", "WorkerPool"]

_READY_TIMEOUT_S = 900.0
_STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class WorkerEnd:
    """A worker that did not end well: ``message`` says how; ``worker`` is the ``host:pid``
    its trials carry in their ``worker`` attribute."""

    worker: str
    message: str


class WorkerPool:
    """``count`` worker processes on the study of ``config``, started at construction."""

    def __init__(self, config: RunConfig, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = context.Barrier(count + 1)
        self.processes: list[BaseProcess] = []
        for index in range(1, count + 1):
            process = context.Process(
                target=_work,
                args=(config.to_dict(), index, self._ready),
                name=f"quide-worker-{index}",
            )
            process.start()
            self.processes.append(process)

    def wait_ready(self) -> bool:
        """Wait until every worker has loaded its task and joined the study.

        Starting trials together keeps the load (and so the measured T) the same throughout.

        Returns:
            Whether all workers got ready; False when one failed to start.
        """
        try:
            self._ready.wait(_READY_TIMEOUT_S)
        except threading.BrokenBarrierError:
            return False
        return True

    def stop(self, *, signum: int | None = None) -> list[WorkerEnd]:
        """Wait for the workers to finish and return each worker that did not end well.

        After this process was stopped by ``signum`` (SIGINT or SIGTERM), each worker still
        running gets the same signal at once, so it records its trial as failed and queues it
        again; one that still runs after a grace period is terminated.
        """
        from quide_search.study.retry import worker_tag

        if signum is not None:
            for process in self.processes:
                if process.is_alive() and process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)
        problems = []
        for process in self.processes:
            process.join(_STOP_GRACE_S if signum is not None else None)
            if process.is_alive():
                process.terminate()  # ignored by a worker already stopping: then SIGKILL
                process.join(_STOP_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join()
            message = _how_it_ended(process, signum)
            if message is not None:
                problems.append(WorkerEnd(worker_tag(process.pid or 0), message))
        return problems


def _how_it_ended(process: BaseProcess, signum: int | None) -> str | None:
    """None for a worker that ended well (or as ``signum`` asked); else one line."""
    code = process.exitcode
    if code == 0 or (signum is not None and code in (128 + signum, -signum)):
        return None
    if code is None or code >= 0:
        return f"{process.name} exited with code {code}"
    killer = signal.Signals(-code)
    hint = (
        " (what the kernel's out-of-memory killer sends: fewer --workers or a smaller "
        "--cache-mb need less memory)"
        if killer == signal.SIGKILL
        else ""
    )
    return f"{process.name} was killed by {killer.name}{hint}"


def _work(config_data: dict[str, Any], index: int, ready: Barrier) -> None:
    from quide_search.errors import QuideError, Stopped
    from quide_search.latency import torch_threads
    from quide_search.study.optimize import optimize
    from quide_search.study.session import open_session

    config = RunConfig(**{**config_data, "bits": tuple(config_data["bits"]), "workers": 1})

    def echo(message: str) -> None:
        print(f"[worker {index}] {message}", file=sys.stderr)

    try:
        with torch_threads(config.threads):
            try:
                session = open_session(config, sampler_seed=config.seed + index)
            except BaseException:
                ready.abort()  # the parent goes on with the workers that did start
                raise
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.wait(_READY_TIMEOUT_S)
            optimize(session, config.trials, progress=False, echo=echo)
    except QuideError as e:
        echo(f"error: {e}")
        sys.exit(2)
    except Stopped as e:
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
