"""Typed records of what ends a study: the confirmation, the test-split result, a finalist and
a budget's answer.

Each is declared once here and read by the summary, ``show --json``, the report, budgets and
export. The confirmation and the test result are stored as study attributes
(:attr:`~quide_search.records.StudyKey.CONFIRMATION`, :attr:`~quide_search.records.StudyKey.TEST`);
``to_dict`` writes the keys and values this version stores, and ``from_dict`` reads them back
(keys a later version adds are ignored; a record missing what this version needs, or holding a
value of the wrong kind, is a ``StorageError``), so a study written before these records reads
the same. A trial's own metrics are :class:`~quide_search.records.TrialRow`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, TypeVar

from quide_search.errors import QuideError, StorageError
from quide_search.metric import Gate
from quide_search.records import Budget, TrialRow

__all__ = ["BudgetAnswer", "Confirmation", "ConfirmedEntry", "Finalist", "TestEntry",
           "TestResult"]  # fmt: skip

_R = TypeVar("_R")

FLOAT_TRIAL = "float"
"""The ``trial`` of the float model's entry in a confirmation or test result."""


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data``'s values of ``cls``'s fields (a record from a later version may hold more)."""
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}


def _entries(cls: type[_E], data: Mapping[str, Any]) -> tuple[_E, ...]:
    """A finalist record's entries, each with every field of ``cls`` and a trial that is a
    number or ``"float"``."""
    entries = tuple(cls(**_known(cls, e)) for e in data["entries"])
    for e in entries:
        if not (isinstance(e.trial, int) or e.trial == FLOAT_TRIAL):
            raise ValueError(f"an entry's trial must be a number or 'float', but got {e.trial!r}")
    return entries


def _failed(data: Mapping[str, Any]) -> dict[str, str]:
    """A finalist record's failures, finalist -> reason (none in records that predate them)."""
    return {str(k): str(v) for k, v in dict(data.get("failed", {})).items()}


def _parsed(key: str, read: Callable[[], _R]) -> _R:
    """``read()`` of the stored study attribute ``key``, any fault in it one StorageError.

    Raises:
        StorageError: If the attribute lacks what this version needs or holds a value of
            the wrong kind.
    """
    try:
        return read()
    except (AttributeError, KeyError, TypeError, ValueError, QuideError) as e:
        raise StorageError(
            f"the study attribute {key!r} must have the shape quide-search writes, but reading "
            f"it failed ({type(e).__name__}: {e}). Run the study again into a new storage."
        ) from e


@dataclass(frozen=True)
class _Entry:
    """One finalist's entry in a finalist record; ``trial`` is the trial number, or
    ``"float"`` for the float model."""

    trial: int | str

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored."""
        return asdict(self)

    def values(self) -> dict[str, Any]:
        """The entry's values without its trial: what it adds to the row of that trial."""
        return {k: v for k, v in self.to_dict().items() if k != "trial"}


@dataclass(frozen=True)
class ConfirmedEntry(_Entry):
    """One finalist re-timed side by side: its confirmed T (ms), the I and I' it gives with the
    trial's stored C and P, whether it is still feasible, and the timing's spread and rounds."""

    T_confirmed_ms: float
    I_confirmed: float
    I_prime_confirmed: float
    feasible_confirmed: bool
    confirm_spread: float
    confirm_rounds: int


@dataclass(frozen=True)
class TestEntry(_Entry):
    """One finalist scored on the held-out test split: ``P_test``, and whether it passes the
    gate around the float model's test P."""

    __test__ = False  # not a pytest test class

    P_test: float
    gate_passed_test: bool


_E = TypeVar("_E", bound=_Entry)


@dataclass(frozen=True)
class _Finalists(Generic[_E]):
    """What the confirmation and the test result share: entries by trial, and failures."""

    entries: tuple[_E, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)

    def by_trial(self) -> dict[int, _E]:
        """The trials' entries by trial number, without the float model's."""
        return {int(e.trial): e for e in self.entries if e.trial != FLOAT_TRIAL}

    def of_float(self) -> _E | None:
        """The float model's entry, or None."""
        return next((e for e in self.entries if e.trial == FLOAT_TRIAL), None)

    def covered(self) -> set[str]:
        """The finalists this record covers, as strings: those measured and those failed."""
        return {str(e.trial) for e in self.entries} | set(self.failed)


@dataclass(frozen=True)
class Confirmation(_Finalists[ConfirmedEntry]):
    """The confirmation step: finalists re-timed by measurement in interleaved rounds.

    ``latency`` is the latency context they were timed in; ``top`` the ``--confirm-top`` it
    was run with; ``seconds`` its wall time; ``failed`` the finalists that could not be timed
    (trial -> reason)."""

    rounds: int = 0
    seconds: float = 0.0
    top: int = 0
    latency: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Confirmation:
        """Read the stored study attribute.

        Raises:
            StorageError: If it lacks a field this version needs.
        """

        def read() -> Confirmation:
            required = {"rounds": data["rounds"], "seconds": data["seconds"]}
            return cls(**{**_known(cls, data), **required, "failed": _failed(data),
                          "entries": _entries(ConfirmedEntry, data)})  # fmt: skip

        return _parsed("confirmation", read)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored."""
        return {"rounds": self.rounds, "seconds": self.seconds, "top": self.top,
                "latency": dict(self.latency), "entries": [e.to_dict() for e in self.entries],
                "failed": dict(self.failed)}  # fmt: skip


@dataclass(frozen=True)
class TestResult(_Finalists[TestEntry]):
    """The test step: finalists and the float model scored on the held-out test split.

    ``gate`` is the study's gate around the float model's test P (its ``baseline_P``), None
    when the float model could not be scored; ``samples`` the test split's size."""

    __test__ = False  # not a pytest test class

    samples: int = 0
    seconds: float = 0.0
    gate: Gate | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestResult:
        """Read the stored study attribute.

        Raises:
            StorageError: If it lacks a field this version needs.
        """

        def read() -> TestResult:
            gate = data.get("gate")
            if gate is not None:  # stored with both rules, None where unset
                gate = Gate(baseline_P=gate["baseline_P"], max_drop=gate["max_drop"],
                            min_accuracy=gate["min_accuracy"])  # fmt: skip
            required = {"samples": data["samples"], "seconds": data["seconds"]}
            return cls(**{**_known(cls, data), **required, "failed": _failed(data),
                          "entries": _entries(TestEntry, data), "gate": gate})  # fmt: skip

        return _parsed("test", read)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (``gate`` only where the float model was scored)."""
        data = {
            "samples": self.samples,
            "seconds": self.seconds,
            "entries": [e.to_dict() for e in self.entries],
            "failed": dict(self.failed),
        }
        return data if self.gate is None else {**data, "gate": self.gate.to_dict()}


@dataclass(frozen=True)
class Finalist:
    """A plan as the study recommends it (or a budget picks it): its trial row, its confirmed T
    and its test-split P where it has them, and whether it qualifies (``feasible``: on the
    search split, by its confirmed T where confirmed, and on the test split's gate where
    finalists were scored; the row's own ``feasible`` is the search's alone).

    Its ``I_prime``, ``I`` and ``T_ms`` are the ones it is ranked by: by the confirmed T where
    it was confirmed, else the search's."""

    row: TrialRow
    feasible: bool
    confirmed: ConfirmedEntry | None = None
    tested: TestEntry | None = None

    @property
    def trial(self) -> int:
        """The trial number."""
        return self.row.trial

    @property
    def plan(self) -> dict[str, str]:
        """The per-layer plan."""
        return self.row.plan

    @property
    def I_prime(self) -> float:  # noqa: N802 - the paper's name
        """I' by the confirmed T where confirmed, else the search's I'."""
        return self.confirmed.I_prime_confirmed if self.confirmed else self.row.I_prime

    @property
    def I(self) -> float:  # noqa: E743, N802 - the paper's name
        """I by the confirmed T where confirmed, else the search's I."""
        return self.confirmed.I_confirmed if self.confirmed else self.row.I

    @property
    def T_ms(self) -> float:  # noqa: N802 - the metric's name
        """T in ms: the confirmed T where confirmed, else the search's."""
        return self.confirmed.T_confirmed_ms if self.confirmed else self.row.T_ms

    @property
    def p_test(self) -> float | None:
        """P on the held-out test split, where it was scored there."""
        return self.tested.P_test if self.tested else None

    def fits(self, budget: Budget) -> bool:
        """Whether its stored bytes and T (confirmed where confirmed) are within ``budget``."""
        return budget.fits(stored_bytes=float(self.row.stored_bytes), t_ms=float(self.T_ms))

    def to_dict(self, *, test_first: bool = False) -> dict[str, Any]:
        """One flat row, as ``show --json`` gives it: the trial's, then its confirmed and test
        values (the test values first with ``test_first``, the order a budget's answer has
        always printed)."""
        data = self.row.to_dict()
        entries = (self.tested, self.confirmed) if test_first else (self.confirmed, self.tested)
        for entry in entries:
            data.update(entry.values() if entry else {})
        data["feasible"] = self.feasible
        return data


@dataclass(frozen=True)
class BudgetAnswer:
    """A deployment budget answered from stored trials: the best plan within it, or why none
    is; how many completed trials were searched; whether finalists were test-split scored."""

    budget: Budget
    best: Finalist | None
    why: str | None
    trials: int
    test_split: bool

    def to_dict(self) -> dict[str, Any]:
        """As ``show --json`` gives it under ``budget``."""
        best = self.best.to_dict(test_first=True) if self.best else None
        return {"limits": self.budget.text(), "best": best, "why": self.why,
                "trials": self.trials, "test_split": self.test_split}  # fmt: skip
