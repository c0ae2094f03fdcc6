"""The package's version, in the lowest layer so that every other one may record it."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
"""Kept equal to ``project.version`` in pyproject.toml (tests/test_imports.py checks it)."""
