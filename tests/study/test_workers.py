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


def _worker_pid(all_trials: list, parent: int, drawn: int = 0) -> int | None:
    """The pid of a worker (not ``parent``) with a RUNNING trial that has drawn at least
    ``drawn`` parameters, if any."""
    for t in by_state(all_trials, "RUNNING"):
        pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
        if pid not in (0, parent) and len(t.params) >= drawn:
            return pid
    return None


def test_a_worker_killed_by_the_oom_killer_is_reported_and_its_trial_failed(
    tmp_path: Path,
) -> None:
    import os
    import signal

    from _procs import wait_until

    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    process = start(run_args(tmp_path, 16, "--workers", "2", "--early-stop", "off"))
    # A trial tagged with its worker but killed before it drew all its parameters (one per
    # layer of the toy model) is failed and not retried, by design: wait for a whole plan.
    drawn = lambda ts: _worker_pid(ts, process.pid, drawn=3) is not None  # noqa: E731
    found = wait_until(storage, drawn, process)
    victim = _worker_pid(found, process.pid, drawn=3)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)  # as the kernel's out-of-memory killer does
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err
    assert "quide-worker-1 was killed by SIGKILL (what the kernel's out-of-memory killer" in out
    assert "1 worker process(es) did not end well" in err
    after = trials(storage)
    assert not by_state(after, "RUNNING")  # not left RUNNING for ever
    [lost] = [t for t in by_state(after, "FAIL") if t.user_attrs["worker"].endswith(f":{victim}")]
    assert lost.user_attrs["fail_reason"].startswith("its worker process ended: quide-worker-1")
    assert any(t.user_attrs.get("retry_of") == lost.number for t in after)  # retried once


def test_a_second_sigterm_does_not_cut_the_shutdown_short(tmp_path: Path) -> None:
    import os
    import signal
    import time

    from _procs import signal_mid_trial

    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    process = start(run_args(tmp_path, 200, "--workers", "2", "--early-stop", "off"))
    both = lambda ts: _worker_pid(ts, process.pid) is not None  # noqa: E731
    found = signal_mid_trial(storage, both, process, signal.SIGTERM)
    worker = _worker_pid(found, process.pid)
    assert worker is not None
    # As a service manager does: the whole group gets SIGTERM, and again moments later.
    os.kill(worker, signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    os.kill(worker, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM; completed trials are kept in the study" in err
    assert "did not end well" not in err
    assert not by_state(trials(storage), "RUNNING")


def test_after_a_stop_further_signals_are_answered_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os
    import signal

    from quide_search.search.stop import StopSwitch
    from quide_search.study.optimize import _signals_between_trials, handlers_restored

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("the caller's handler ran inside the block")

    stops = StopSwitch()
    before = signal.signal(signal.SIGTERM, mine)
    try:
        with handlers_restored():
            with _signals_between_trials(stops):
                os.kill(os.getpid(), signal.SIGTERM)  # between trials: recorded, not raised
                assert stops.signum == signal.SIGTERM
                stops._interruptible = True  # as inside StopSwitch.measuring
                os.kill(os.getpid(), signal.SIGTERM)  # a second one: answered, even mid-trial
            os.kill(os.getpid(), signal.SIGINT)  # during the shutdown after the loop
            assert signal.getsignal(signal.SIGTERM) is not mine
        assert signal.getsignal(signal.SIGTERM) is mine  # the caller's, once it is over
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert err.count("ignored: already stopping") == 2, err
    assert "SIGINT ignored" in err
