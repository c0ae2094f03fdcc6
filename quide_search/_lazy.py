"""Lazy re-exports for package ``__init__`` modules.

A folder's ``__init__`` names its public objects without importing the modules that define
them, so importing a light module of a folder (or ``quide-search --help``) never loads torch,
optuna or optimum-quanto. The objects load on first attribute access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports ``exports[name]`` on first use.

    Args:
        package: The package's ``__name__`` (for error messages).
        exports: Public name -> the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
