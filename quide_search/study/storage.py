"""Optuna storage URLs: validate them before anything is written, then open them.

Accepted forms: any SQLAlchemy URL Optuna's RDB storage takes (``sqlite:///path.db``,
``postgresql://user@host/db``, ``mysql://...``) and ``journal:PATH`` for Optuna's journal file
storage (safe for several local processes without a database server).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import StorageError, first_line
from quide_search.storage_url import (
    check_url,
    default_storage_url,
    journal_path,
    sqlite_path,
    storage_file,
    supports_heartbeat,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "check_url",
    "default_storage_url",
    "open_storage",
    "sqlite_path",
    "storage_file",
    "study_names",
    "supports_heartbeat",
]

_OPEN_ATTEMPTS = 3


def open_storage(
    url: str,
    *,
    must_exist: bool = False,
    read_only: bool = False,
    heartbeat: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> BaseStorage:
    """Validate ``url`` and return an Optuna storage for it.

    Args:
        url: The ``--storage`` value.
        must_exist: Refuse to create a missing storage file.
        read_only: Open it for reading only: a SQLite file is opened read-only (its journal
            mode untouched, a file without write permission readable), no table is created.
        heartbeat: Seconds between a running trial's heartbeats (RDB storages only). A trial
            silent for twice as long is failed by the next worker that starts a trial.
        on_stale: Called by Optuna for each trial it failed for a missing heartbeat.

    Raises:
        StorageError: If the URL is malformed or the storage cannot be opened.
    """
    check_url(url, must_exist=must_exist or read_only, read_only=read_only)
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = journal_path(url)
    if journal is not None:
        return JournalStorage(JournalFileBackend(str(journal)))
    # SQLite serialises writers with file locks; a long busy timeout makes concurrent local
    # workers (and the heartbeat thread) wait for the lock instead of failing on it.
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    db = sqlite_path(url)
    if read_only and db is not None:
        url, kwargs = _read_only_sqlite(db), {"connect_args": {"uri": True}}
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # The heartbeat callback argument is marked experimental; it is stable in use.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    skip_table_creation=read_only,
                    heartbeat_interval=heartbeat or None,
                    heartbeat_stale_trial_callback=on_stale if heartbeat else None,
                )
            if url.startswith("sqlite") and not read_only:
                _serialize_sqlite(storage.engine)
            return storage
        except Exception as e:  # SQLAlchemy and drivers raise many unrelated types here.
            # Workers that start together on an empty database race to create Optuna's
            # tables; the loser sees a duplicate-object error and succeeds on a retry.
            if attempt + 1 == _OPEN_ATTEMPTS:
                why = first_line(getattr(e, "orig", None) or e)
                raise StorageError(
                    f"--storage {url!r} cannot be opened: {type(e).__name__}: {why}. "
                    "Check that the server runs and that the URL's user, host, port and "
                    "database are right."
                ) from e
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _read_only_sqlite(path: Path) -> str:
    """A SQLAlchemy URL that opens ``path`` read-only through SQLite's URI form.

    ``mode=ro`` never writes the file; a file this process may not write at all (a shared
    results folder, a copied database) is opened ``immutable``, which also takes no locks,
    since SQLite could not create its lock files beside it.
    """
    from urllib.parse import quote

    writable = os.access(path, os.W_OK) and os.access(path.parent or Path("."), os.W_OK)
    flags = "mode=ro" if writable else "mode=ro&immutable=1"
    return f"sqlite:///file:{quote(str(path.resolve()))}?{flags}&uri=true"


def _serialize_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    SQLite has no row locks, so Optuna's read-then-update steps (such as claiming a queued
    trial) can interleave between processes under SQLite's default deferred transactions: two
    workers then run the same trial and the second fails to store it. Taking the lock at
    BEGIN serialises those steps; the busy timeout makes the others wait their turn. This is
    SQLAlchemy's documented recipe for serializable SQLite transactions.
    """
    from sqlalchemy import event

    def no_driver_begin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not sqlite3, issues BEGIN

    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", no_driver_begin)
    event.listen(engine, "connect", _write_ahead_log)
    event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections opened before the listeners existed are not reused


def _write_ahead_log(dbapi_connection: Any, record: Any) -> None:
    """Use SQLite's write-ahead log, synced at checkpoints rather than at every commit.

    A trial writes each user attribute and each intermediate value in its own transaction;
    with the default rollback journal every one of them waits for a sync to disk (1.7 ms
    each here, about 20 per trial: most of a small model's trial). In WAL mode a commit that
    has returned survives the process being killed; only an operating-system crash or power
    loss can undo the last commits, never half of one. Readers no longer wait for the writer.
    WAL needs the database on a local file system (SQLite's documentation): for workers on
    several hosts, use PostgreSQL or a journal file.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def study_names(storage: BaseStorage) -> list[str]:
    """Return the names of the studies in ``storage``."""
    return [s.study_name for s in storage.get_all_studies()]
