"""Where quide-search keeps trained float models and other derived files."""

from __future__ import annotations

import os
from pathlib import Path

from quide_search.errors import ConfigError
from quide_search.files import check_path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "QUIDE_CACHE_DIR"
"""Environment variable that overrides the cache directory."""


def cache_dir() -> Path:
    """Return the cache directory: ``$QUIDE_CACHE_DIR`` or ``~/.cache/quide-search``.

    The directory is created on first use. A path from the environment gets the checks a
    path flag gets (a folder; where missing, one that can be created), named by its variable.
    An existing folder may be read-only (a cache baked into an image): a write into it then
    fails where it happens.

    Raises:
        ConfigError: If the path is a file, or a missing folder cannot be created.
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root) if root else Path.home() / ".cache" / "quide-search"
    if path.is_dir():
        return path
    name = f"the environment variable {CACHE_ENV}" if root else "the cache folder"
    check_path(path, kind="folder", flag=name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{name} must name a folder quide-search can create, but creating {str(path)!r} "
            f"failed ({e.strerror or e}). Set {CACHE_ENV} to a writable folder."
        ) from e
    return path
