"""Optuna storage URLs: validate them before anything is written, then open them.

Accepted forms: any SQLAlchemy URL Optuna's RDB storage takes (``sqlite:///path.db``,
``postgresql://user@host/db``, ``mysql://...``) and ``journal:PATH`` for Optuna's journal file
storage (safe for several local processes without a database server).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from quide_search.errors import StorageError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

__all__ = ["check_url", "default_storage_url", "open_storage", "sqlite_path", "study_names"]

_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def default_storage_url(*, study: str, out_dir: str | os.PathLike[str] = "studies") -> str:
    """Return ``sqlite:///<out_dir>/<study>.db``, the storage used when none is given."""
    return f"sqlite:///{Path(out_dir) / (study + '.db')}"


def sqlite_path(url: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URL, or None for other URLs."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :].split("?", 1)[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def _journal_path(url: str) -> Path | None:
    return Path(url[len("journal:") :]) if url.startswith("journal:") else None


def check_url(url: str, *, must_exist: bool) -> None:
    """Check a storage URL's form, and for file storages their file or directory.

    Args:
        url: The ``--storage`` value.
        must_exist: True for commands that read a study (export, show): a missing file is an
            error instead of a new empty database.

    Raises:
        StorageError: Saying what must hold, what was given and what to do.
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    if scheme not in (*_RDB_SCHEMES, "journal"):
        raise StorageError(
            "--storage must be an Optuna storage URL such as sqlite:///studies/x.db, "
            f"postgresql://user@host/db or journal:PATH, but got {url!r}."
        )
    path = sqlite_path(url) or _journal_path(url)
    if scheme == "sqlite" and path is None:
        raise StorageError(
            f"--storage sqlite URLs must name a file (sqlite:///path/to/file.db), but got {url!r}."
        )
    if path is None:
        return
    if must_exist and not path.is_file():
        raise StorageError(
            f"--storage must point to an existing study file, but {str(path)!r} does not exist. "
            "Run `quide-search run` first or pass the --storage the study was created with."
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StorageError(
            f"--storage directory {str(parent)!r} does not exist (from {url!r}). Create it first."
        )
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(f"--storage file {str(path)!r} is not writable. Choose another path.")


def open_storage(url: str, *, must_exist: bool = False) -> BaseStorage:
    """Validate ``url`` and return an Optuna storage for it.

    Raises:
        StorageError: If the URL is malformed or the storage cannot be opened.
    """
    check_url(url, must_exist=must_exist)
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = _journal_path(url)
    try:
        if journal is not None:
            return JournalStorage(JournalFileBackend(str(journal)))
        # A generous timeout lets several local workers share one SQLite file.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # SQLAlchemy and drivers raise many unrelated types here.
        raise StorageError(f"--storage {url!r} cannot be opened: {type(e).__name__}: {e}") from e


def study_names(storage: BaseStorage) -> list[str]:
    """Return the names of the studies in ``storage``."""
    return [s.study_name for s in storage.get_all_studies()]
