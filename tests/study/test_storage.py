"""Storage URLs and the SQLite settings that make concurrent local writers safe."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import optuna
import pytest

from quide_search.errors import StorageError
from quide_search.study.storage import open_storage, supports_heartbeat


def _claim_queued_trials(url: str, rounds: int, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    failures = 0
    for _ in range(rounds):
        try:
            study.optimize(lambda t: t.suggest_int("x", 0, 10_000), n_trials=1)
        except Exception:
            failures += 1
    errors.put(failures)


def test_concurrent_processes_never_claim_the_same_queued_trial(tmp_path: Path) -> None:
    # Under SQLite's default deferred transactions two processes can both move one WAITING
    # trial to RUNNING; the loser then fails with "Cannot tell a COMPLETE trial" (seen in 13 of
    # 160 claims with 4 processes before the fix). BEGIN IMMEDIATE makes the claim atomic.
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    for x in range(120):
        study.enqueue_trial({"x": x})
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [
        context.Process(target=_claim_queued_trials, args=(url, 30, errors)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert sum(errors.get(timeout=5) for _ in workers) == 0
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert sorted(t.params["x"] for t in trials) == list(range(120))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_heartbeat_is_for_rdb_storages_only() -> None:
    assert supports_heartbeat("sqlite:///x.db") and supports_heartbeat("postgresql://h/db")
    assert not supports_heartbeat("journal:x.log")


def test_unreachable_server_is_one_clear_error() -> None:
    start = time.monotonic()
    with pytest.raises(StorageError, match="Check that the server runs") as e:
        open_storage("postgresql://nobody@127.0.0.1:1/x")
    assert "\n" not in str(e.value)
    assert time.monotonic() - start < 30


def test_reading_commands_read_without_writing(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    import sqlite3

    from quide_search.cli import main

    db = tmp_path / "other.db"
    url = f"sqlite:///{db}"
    plain = optuna.storages.RDBStorage(url)  # another program's database: rollback journal
    optuna.create_study(study_name="theirs", storage=plain).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    plain.engine.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    db.chmod(0o444)
    assert main(["studies", "--storage", url]) == 0
    assert "theirs" in capsys.readouterr().out
    for command in ("show", "report"):
        assert main([command, "--study", "theirs", "--storage", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has no quide-search protocol" in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal, no -shm
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
