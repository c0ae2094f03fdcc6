"""Where quide-search keeps trained float models and other derived files."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "QUIDE_CACHE_DIR"
"""Environment variable that overrides the cache directory."""


def cache_dir() -> Path:
    """Return the cache directory: ``$QUIDE_CACHE_DIR`` or ``~/.cache/quide-search``.

    The directory is created on first use.
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root) if root else Path.home() / ".cache" / "quide-search"
    path.mkdir(parents=True, exist_ok=True)
    return path
