"""Several processes on one study: local --workers, a worker joined by hand, PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import _postgres
import pytest
from _procs import ATTRS, STUDY, by_state, counted, finish, run_args, start, trials


def _check_shared_study(storage: str, target: int, processes: int) -> None:
    all_trials = trials(storage)
    done = counted(all_trials)
    # Each worker stops once the shared count reaches the target; trials already running then
    # are let finish, so the study may hold up to (processes - 1) more.
    assert target <= len(done) <= target + processes - 1
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    assert all(set(t.user_attrs) >= ATTRS for t in by_state(all_trials, "COMPLETE"))
    assert not by_state(all_trials, "RUNNING") and not by_state(all_trials, "FAIL")
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == processes, workers  # every process really ran trials


def test_three_local_workers_share_one_study(tmp_path: Path) -> None:
    done = finish(run_args(tmp_path, 24, "--workers", "3"), timeout=600)
    assert done.returncode == 0, done.stderr
    _check_shared_study(f"sqlite:///{tmp_path}/{STUDY}.db", 24, 3)
    found = re.search(r"(\d+) completed trials .*?, (\d+) stopped early", done.stdout)
    assert found is not None, done.stdout
    assert 24 <= int(found.group(1)) + int(found.group(2)) <= 26


def test_process_started_by_hand_joins_the_same_study(tmp_path: Path) -> None:
    from _procs import wait_until

    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    # Every sample scored in batches of 32: each trial runs twelve of the slow toy model's
    # 25-ms calls, so the first process is still at work when the second has started.
    argv = run_args(tmp_path, 40, "--early-stop", "off", "--bits", "8,4,2,f8,fp",
                    "--eval-batch-size", "32")  # fmt: skip
    first = start(argv)
    wait_until(storage, lambda ts: len(counted(ts)) >= 2, first)
    protocol = trials_protocol(storage)
    second = start([*argv, "--seed", "7"])  # started by hand on the same study
    for process in (first, second):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    _check_shared_study(storage, 40, 2)
    assert trials_protocol(storage) == protocol  # the joiner wrote nothing over it


def trials_protocol(storage: str) -> dict:
    import optuna

    return dict(optuna.load_study(study_name=STUDY, storage=storage).user_attrs["protocol"])


@pytest.mark.skipif(_postgres.unavailable() is not None, reason=str(_postgres.unavailable()))
def test_two_hosts_share_a_postgresql_study(tmp_path: Path) -> None:
    with _postgres.cluster() as url:
        common = ("--storage", url, "--study", "pg-study")
        # Create the study (tables, protocol, baseline) before the workers start.
        init = finish(run_args(tmp_path, 0, *common))
        assert init.returncode == 0, init.stderr
        workers = [start(run_args(tmp_path, 16, *common, "--seed", str(s))) for s in (1, 2)]
        for process in workers:
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err
        all_trials = trials(url, "pg-study")
        done = counted(all_trials)
        assert 16 <= len(done) <= 17
        assert len({t.number for t in all_trials}) == len(all_trials)
        assert all(set(t.user_attrs) >= ATTRS for t in by_state(all_trials, "COMPLETE"))
        assert len({t.user_attrs["worker"] for t in done}) == 2


def test_sigterm_to_the_parent_stops_its_workers(tmp_path: Path) -> None:
    import signal

    from _procs import signal_mid_trial

    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    process = start(run_args(tmp_path, 200, "--workers", "2", "--early-stop", "off"))
    workers = lambda ts: len({t.user_attrs.get("worker") for t in counted(ts)}) >= 2  # noqa: E731
    signal_mid_trial(storage, workers, process, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    after = trials(storage)
    assert not by_state(after, "RUNNING")  # the worker's trial was recorded too
    assert len(counted(after)) < 200
    reasons = {t.user_attrs.get("fail_reason") for t in by_state(after, "FAIL")}
    assert reasons <= {"stopped by SIGTERM while the trial ran"} and reasons
