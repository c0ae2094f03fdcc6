"""The one exception family of quide-search.

Every error a user can cause derives from :class:`QuideError`, so the CLI catches exactly one
type at its boundary. Where a builtin fits, an error also derives from it (``ConfigError`` is a
``ValueError``) so that library callers can keep catching the builtin.
"""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "MetricError",
    "PlanError",
    "QuideError",
    "StorageError",
    "Stopped",
    "TrialEvaluationError",
    "did_you_mean",
    "first_line",
]


class QuideError(Exception):
    """Base class of every error quide-search raises on purpose."""


class ConfigError(QuideError, ValueError):
    """A setting, flag or argument is outside what the tool accepts."""


class MetricError(QuideError, ValueError):
    """C, P or T is outside the domain where the Intelligence Index is defined."""


class PlanError(QuideError, ValueError):
    """A bit-plan (in memory or in a file) is malformed or does not fit the model."""


class DataError(QuideError, FileNotFoundError):
    """Data, weights or a cache file is missing or unreadable."""


class StorageError(QuideError, RuntimeError):
    """An Optuna storage URL cannot be opened or a study cannot be found in it."""


class TrialEvaluationError(QuideError, RuntimeError):
    """A trial could not be scored (NaN output, failed quantization, out of memory).

    The study records such a trial as FAIL with this message; it never stops the search.
    """


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGINT or SIGTERM); ``signum`` says which.

    Not a :class:`QuideError`: like Ctrl-C, it ends the run after the trial in hand is
    recorded, and the CLI exits with 128 + ``signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a " Did you mean: x?" suffix for ``name`` or an empty string.

    Kept here so every registry and validator phrases suggestions the same way.
    """
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean: " + ", ".join(repr(c) for c in close) + "?"


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first line (its type's name if it has no message), cut at ``limit``
    characters: a library's message may run to many lines (a graph dump, a C++ trace)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
