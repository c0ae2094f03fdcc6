"""A stop asked by SIGINT or SIGTERM, as the objective sees it.

The optimize loop (:mod:`quide_search.study.optimize`) installs the signal handlers, records the
signal here with :meth:`StopSwitch.ask`, and decides what a stop does to the trial in hand (its
fail reason, its one retry). The objective only says where a stop may cut in at once (while a
plan is measured, never during storage I/O) and checks for one between its steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from quide_search.errors import Stopped

__all__ = ["StopSwitch"]


class StopSwitch:
    """The signal a stop was asked with (None: none yet) and whether it may raise at once.

    A KeyboardInterrupt raised inside a storage call can leave its SQLite transaction open,
    holding the write lock; the trial's next write (its fail reason) then waits on that lock
    for as long as the busy timeout. So only the measurement is interrupted at once
    (:meth:`measuring`); elsewhere :meth:`ask` only records the signal, and the trial stops at
    its next :meth:`check`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = False

    @property
    def asked(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    def ask(self, signum: int) -> None:
        """Record a stop signal; raise :class:`Stopped` at once inside :meth:`measuring`.

        Raises:
            Stopped: When called inside :meth:`measuring` (outside any :meth:`storage_io`).
        """
        self.signum = signum
        if self._interruptible:
            raise Stopped(signum)

    def check(self) -> None:
        """Raise :class:`Stopped` if a stop was asked.

        Raises:
            Stopped: With the signal's number.
        """
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Let a stop raise at once inside this block, which must do its storage I/O only
        under :meth:`storage_io`.

        Raises:
            Stopped: On entry, if a stop was already asked.
        """
        self.check()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    @contextlib.contextmanager
    def storage_io(self) -> Iterator[None]:
        """Shield a storage write inside :meth:`measuring` from an immediate stop; check for
        one once the write is done.

        Raises:
            Stopped: After the block, if a stop was asked during it.
        """
        was = self._interruptible
        self._interruptible = False
        try:
            yield
        finally:
            self._interruptible = was
        self.check()
