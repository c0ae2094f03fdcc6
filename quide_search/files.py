"""Files and folders quide-search writes: atomically, and never over what it did not write.

Every output (plan files, reports, tables, sweeps, checkpoints, exported fronts) goes through
this module. A file is written through a temporary file and a rename, so an interrupted write
leaves the old file or the new one. A path that already exists is replaced only when
quide-search wrote it: a JSON file carries a ``generator`` field, an HTML report a generator
meta tag, and a folder a manifest (``quide-manifest.json``) that lists every file in it. A
folder is filled beside its target and swapped in with one rename (Linux's
``renameat2(RENAME_EXCHANGE)`` where available), so it is never half-written either.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quide_search.errors import ConfigError

__all__ = [
    "GENERATOR",
    "MAX_DOCUMENT_BYTES",
    "MANIFEST",
    "atomic_write_text",
    "check_folder_target",
    "check_path",
    "check_replaceable",
    "is_generated_json",
    "read_document",
    "stamped",
    "write_directory",
]

GENERATOR = "quide-search"
"""The ``generator`` value of every JSON record quide-search writes."""
MANIFEST = "quide-manifest.json"
"""The file that lists what a folder written by quide-search holds."""


MAX_DOCUMENT_BYTES = 16 * 2**20
"""The largest plan, table or other document quide-search reads (16 MiB; a plan is kBs)."""


def read_document(
    path: str | os.PathLike[str], *, what: str, max_bytes: int = MAX_DOCUMENT_BYTES
) -> str:
    """Read a document (plan, latency table) as UTF-8 text: a regular file of bounded size.

    A device (``/dev/zero``), a FIFO or a socket is refused before it is opened, so the read
    never hangs or grows without end; so is a file over ``max_bytes``.

    Args:
        path: The file.
        what: What it must be, for the message (``plan file``, ``--latency table:PATH``).
        max_bytes: The largest file accepted (default :data:`MAX_DOCUMENT_BYTES`).

    Raises:
        FileNotFoundError: If it does not exist (the caller says what to do).
        ConfigError: If it is not a regular file, is too large, or is not UTF-8 text.
    """
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read ({e.strerror or e}).") from e
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise ConfigError(
            f"{what} must be a regular file, but {str(p)!r} is {kind}. Give the file's path."
        )
    try:
        with p.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read ({e.strerror or e}).") from e
    if len(data) > max_bytes:
        raise ConfigError(
            f"{what} must be at most {max_bytes / 2**20:g} MiB, but {str(p)!r} is larger. "
            "Give a smaller file."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text ({e.reason}).") from e


def stamped(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``record`` with ``generator`` first: the mark that quide-search wrote it."""
    return {"generator": GENERATOR, **{k: v for k, v in record.items() if k != "generator"}}


def is_generated_json(path: Path) -> bool:
    """Whether ``path`` is a JSON (or YAML) object stamped by :func:`stamped`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix.lower() in (".yaml", ".yml"):
        return text.startswith(f"generator: {GENERATOR}\n")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def check_path(
    path: str | os.PathLike[str], *, kind: str, flag: str, must_exist: bool = False
) -> Path:
    """Check a path argument by kind, before anything is read or written; return it.

    Args:
        path: The path given.
        kind: ``file`` or ``folder``: what it must be where it exists.
        flag: The option that named it, for the message.
        must_exist: It must exist already (an input rather than an output).

    Raises:
        ConfigError: If it is of the other kind, missing when it must exist, or an output
            that cannot be created (its nearest existing parent is a file or not writable).
    """
    p = Path(path)
    other = "file" if kind == "folder" else "folder"
    if p.exists() and (p.is_dir() if kind == "file" else not p.is_dir()):
        raise ConfigError(
            f"{flag} must name a {kind}, but {str(p)!r} is a {other}. Name a {kind}."
        )
    if must_exist and not p.exists():
        raise ConfigError(f"{flag} must name an existing {kind}, but {str(p)!r} does not exist.")
    if not must_exist:
        parent = next((a for a in [p, *p.absolute().parents] if a.exists()), Path("/"))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(
                f"{flag} must be a path quide-search can create or write, but {str(parent)!r} "
                "is not a writable folder. Choose another path."
            )
    return p


def check_replaceable(path: Path, *, ours: Callable[[Path], bool], flag: str) -> None:
    """Refuse a file path that exists and was not written by quide-search.

    Args:
        path: Where a file is about to be written.
        ours: Recognises a file quide-search wrote (e.g. :func:`is_generated_json`).
        flag: The option that named the path, for the message.

    Raises:
        ConfigError: If ``path`` is a folder, or a file quide-search did not write.
    """
    if path.is_dir():
        raise ConfigError(
            f"{flag} must name a file, but {str(path)!r} is a folder. Name a file inside it."
        )
    if path.exists() and not ours(path):
        raise ConfigError(
            f"{flag} may replace only a file that quide-search wrote, but {str(path)!r} "
            "exists and was not written by it. Choose another path, or move that file away."
        )


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    An interrupted write leaves either the old file or the new one, never half of one. The
    file gets the usual permissions (0666 less the umask), not the temporary file's 0600.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=_scratch_prefix(target), dir=target.parent)
    except OSError as e:  # named by the file asked for, not by a temporary one
        raise OSError(e.errno, e.strerror, str(target)) from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_directory(
    out: str | os.PathLike[str], fill: Callable[[Path], None], *, kind: str, flag: str = "--out"
) -> Path:
    """Fill a new folder with ``fill(folder)`` and put it at ``out`` in one step.

    ``out`` may be missing, an empty folder, or a folder quide-search wrote: one whose
    manifest lists every file in it. Anything else is refused before anything is written,
    so a user's folder (or the studies folder) is never replaced.

    Args:
        out: The folder to write.
        fill: Writes the folder's files into the empty staging folder it is given.
        kind: What the folder is (``checkpoint``, ``front``), recorded in the manifest.
        flag: The option that named the folder, for messages.

    Raises:
        ConfigError: If ``out`` is a file, or a folder holding files quide-search did not write.
    """
    check_folder_target(Path(out), flag=flag)
    target = Path(os.path.abspath(out))  # "." and "a/.." name a real folder with a parent
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))
    try:
        fill(staging)
        files = sorted(str(p.relative_to(staging)) for p in _files(staging))
        manifest = stamped({"kind": kind, "files": files})
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _normal_permissions(staging)
        _swap_in(staging, target, flag)
    finally:
        _remove(staging)
    return target


_SCRATCH = "quide-scratch"


def _scratch_prefix(target: Path) -> str:
    """The name start of a staging folder or temporary file beside ``target``: it names the
    host and the process, so a later write of the same target on the same host can tell a
    dead writer's leftovers (on a folder shared between hosts, others' are left alone)."""
    return f".{target.name}.{_SCRATCH}.{_host()}.{os.getpid()}."


def _host() -> str:
    import socket

    return "".join(c for c in socket.gethostname() if c.isalnum() or c == "-")[:64] or "host"


def _remove_stale(target: Path) -> None:
    """Remove what writers of ``target`` on this host that no longer run left beside it (a
    process killed mid-write leaves its staging folder or temporary file; nothing else
    cleans them). One that cannot be removed (another user's) is left."""
    start = f".{target.name}.{_SCRATCH}.{_host()}."
    for leftover in target.parent.glob(f"{glob.escape(start)}*"):
        pid = leftover.name[len(start) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                _remove(leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove(path: Path) -> None:
    """Remove a staging folder, temporary file or the link a swap moved aside."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_folder_target(target: Path, *, flag: str) -> None:
    """Refuse a folder :func:`write_directory` would refuse, before anything is built for it.

    Raises:
        ConfigError: If ``target`` is a file, or a folder holding files quide-search did not
            write.
    """
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"{flag} must name a folder, but {str(target)!r} is a file. Name a folder (it is "
            "created if missing)."
        )
    if not target.is_dir():
        return
    foreign = _foreign_files(target)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ConfigError(
            f"{flag} must be a new or empty folder, or one that quide-search wrote (listed in "
            f"its {MANIFEST}), but {str(target)!r} holds other files ({shown}). Choose "
            "another folder; nothing was written."
        )


def _foreign_files(folder: Path) -> list[str]:
    """Files in ``folder`` that its manifest does not list (all of them without one)."""
    present = sorted(str(p.relative_to(folder)) for p in _files(folder))
    listed: set[str] = set()
    manifest = folder / MANIFEST
    if is_generated_json(manifest):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        listed = {MANIFEST, *(str(f) for f in data.get("files", []))}
    return [name for name in present if name not in listed]


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() or path.is_symlink():
            yield path


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files): give the usual ones."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _swap_in(staging: Path, target: Path, flag: str) -> None:
    """Put ``staging`` at ``target``; the old ``target`` (checked as ours) ends in staging."""
    if not target.exists():
        os.replace(staging, target)
        staging.mkdir()  # the caller removes it
        return
    if _exchange(staging, target):
        return
    # No atomic exchange here: move the old folder aside first. A crash between the two
    # renames leaves the old folder beside the target, never a mix of the two.
    # Not a scratch name: after a crash between the renames it holds the only copy.
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    aside.rmdir()
    os.replace(target, aside)
    os.replace(staging, target)
    os.replace(aside, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False if unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes.append(ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return bool(
        renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
