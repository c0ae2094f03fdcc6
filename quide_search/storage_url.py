"""Optuna storage URLs: their forms, and the checks a URL gets before any storage opens.

Accepted forms: any SQLAlchemy URL Optuna's RDB storage takes (``sqlite:///path.db``,
``postgresql://user@host/db``, ``mysql://...``) and ``journal:PATH`` for Optuna's journal file
storage. Only the standard library: settings (``config``) check a URL here without importing
Optuna; :mod:`quide_search.study.storage` opens it.
"""

from __future__ import annotations

import os
from pathlib import Path

from quide_search.errors import StorageError

__all__ = [
    "check_url",
    "check_url_form",
    "default_storage_url",
    "journal_path",
    "sqlite_path",
    "storage_file",
    "supports_heartbeat",
]

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


def storage_file(url: str) -> Path | None:
    """The file of a SQLite or journal storage URL; None for a server's URL."""
    return sqlite_path(url) or journal_path(url)


def journal_path(url: str) -> Path | None:
    """Return the file of a ``journal:PATH`` URL, or None for other URLs."""
    return Path(url[len("journal:") :]) if url.startswith("journal:") else None


def check_url_form(url: str) -> None:
    """Check a storage URL's form only (its scheme; a SQLite URL names a file); no I/O.

    Raises:
        StorageError: Saying what must hold, what was given and what to do.
    """
    scheme = _scheme(url)
    if scheme not in (*_RDB_SCHEMES, "journal"):
        raise StorageError(
            "--storage must be an Optuna storage URL such as sqlite:///studies/x.db, "
            f"postgresql://user@host/db or journal:PATH, but got {url!r}."
        )
    if scheme == "sqlite" and sqlite_path(url) is None:
        raise StorageError(
            f"--storage sqlite URLs must name a file (sqlite:///path/to/file.db), but got {url!r}."
        )


def check_url(url: str, *, must_exist: bool, read_only: bool = False) -> None:
    """Check a storage URL's form, and for file storages their file or directory.

    Args:
        url: The ``--storage`` value.
        must_exist: True for commands that read a study (export, show): a missing file is an
            error instead of a new empty database.
        read_only: The caller only reads: the file need not be writable.

    Raises:
        StorageError: Saying what must hold, what was given and what to do.
    """
    check_url_form(url)
    scheme = _scheme(url)
    path = sqlite_path(url) or journal_path(url)
    if path is None:
        return
    if path.is_dir():
        raise StorageError(
            f"--storage must name a file, but {str(path)!r} (from {url!r}) is a folder. Name a "
            "file inside it, e.g. journal:runs/study.log or sqlite:///runs/study.db."
        )
    if must_exist and not path.is_file():
        raise StorageError(
            f"--storage must point to an existing study file, but {str(path)!r} does not exist. "
            "Run `quide-search run` first or pass the --storage the study was created with."
        )
    _check_file_kind(path, scheme, url)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise StorageError(
            f"--storage must name a file in a folder, but {str(parent)!r} {what} (from "
            f"{url!r}). Create the folder first, or choose another path."
        )
    if read_only:
        return
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageError(
            f"--storage file {str(path)!r} must be writable to run trials in it, but it is "
            "not. Copy it somewhere writable, or choose another --storage."
        )


def _scheme(url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql``; empty for a text with no scheme."""
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_file_kind(path: Path, scheme: str, url: str) -> None:
    """Refuse an existing file that is not what the URL says (a text file as a journal would
    get an Optuna record appended to it; as a SQLite file it fails with a server's advice).

    Raises:
        StorageError: Naming what the file must be and what to do.
    """
    if not path.exists():
        return
    if not path.is_file():
        raise StorageError(
            f"--storage must name a regular file, but {str(path)!r} (from {url!r}) is not one "
            "(a device, pipe or socket). Name a file."
        )
    if path.stat().st_size == 0:
        return  # an empty file: SQLite and the journal both start one
    try:
        with path.open("rb") as file:
            head = file.read(4096)
    except OSError as e:
        raise StorageError(f"--storage file {str(path)!r} cannot be read ({e.strerror}).") from e
    if scheme == "sqlite" and not head.startswith(_SQLITE_HEADER):
        raise StorageError(
            f"--storage {url!r} must name a SQLite database, but {str(path)!r} is another kind "
            "of file. Nothing was written to it; name a new file (e.g. sqlite:///studies/x.db)."
        )
    if scheme == "journal" and not _is_journal(head):
        raise StorageError(
            f"--storage {url!r} must name an Optuna journal file, but {str(path)!r} is another "
            "kind of file (its first line is not a journal record). Nothing was written to it; "
            "name a new file (e.g. journal:studies/x.log)."
        )


def _is_journal(head: bytes) -> bool:
    """Whether ``head`` starts with an Optuna journal record (a JSON object with ``op_code``)."""
    import json

    first = head.split(b"\n", 1)[0]
    try:
        record = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        # A record longer than the head read: judged by its opening.
        return first.startswith(b'{"op_code"') and b"\n" not in head
    return isinstance(record, dict) and "op_code" in record


def supports_heartbeat(url: str) -> bool:
    """Whether trials in this storage can have heartbeats: Optuna's RDB storages, not journals."""
    return journal_path(url) is None
