"""Progress on the terminal for the phases of a run that take more than a moment.

Training a model on first use, the float baseline, the per-layer latency table, the
sensitivity analysis, the check of the table and the confirmation of the finalists each draw a
bar on stderr saying what they do and how far they are (the trials have their own). A run
turns them on for its duration with :func:`shown` (the CLI's ``--no-progress`` and worker
processes leave them off); library calls outside one are silent.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

__all__ = ["bar", "phase", "shown"]

T = TypeVar("T")

_SHOWN: ContextVar[bool] = ContextVar("quide_search_progress", default=False)


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Draw (or not) the phases' bars inside the block."""
    token = _SHOWN.set(enabled)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def bar(
    items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it"
) -> Iterable[T]:
    """``items``, drawing a bar named ``desc`` while they are consumed, where bars are shown."""
    if not _SHOWN.get():
        return items
    return _drawn(items, desc, total, unit)


def _drawn(items: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    # A generator, so that a loop left early (a break) still closes its bar at once.
    from tqdm.auto import tqdm

    with tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr,
              dynamic_ncols=True) as drawn:  # fmt: skip
        yield from drawn


@contextlib.contextmanager
def phase(desc: str) -> Iterator[None]:
    """A line for one step without parts (``desc: elapsed``), drawn where bars are shown."""
    if not _SHOWN.get():
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(total=1, desc=desc, file=sys.stderr, bar_format="{desc}: {elapsed}") as line:
        yield
        line.update(1)
