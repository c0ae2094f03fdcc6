"""The QuIDE metric: compression C, task score P, latency T and the Intelligence Index.

Pure functions without torch, so the definitions can be read, tested and reused on their own.
The units are fixed (T in milliseconds) because ``log2(T + 1)`` is not unit-invariant: the same
model timed in seconds would score very differently. See ``docs/metric.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from quide_search.errors import MetricError
from quide_search.records import TrialKey

__all__ = [
    "LATENCY_UNIT",
    "Gate",
    "Metrics",
    "compression_ratio",
    "gated_index",
    "intelligence_index",
    "knee",
]

_Row = TypeVar("_Row")

LATENCY_UNIT = "ms"
"""The unit of T everywhere in quide-search; stored with every result."""


def _check_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{name} must be a real number, but got {name}={value!r}.") from e
    if not math.isfinite(value):
        raise MetricError(f"{name} must be finite, but got {name}={value!r}.")
    return value


def compression_ratio(*, baseline_bytes: int, stored_bytes: int) -> float:
    """Return C = baseline bytes / stored bytes.

    Args:
        baseline_bytes: Bytes of every parameter and buffer of the float model.
        stored_bytes: Bytes the quantized model actually stores (packed data, scales, shifts and
            every tensor left in float).

    Raises:
        MetricError: If either count is not a positive integer.

    Example:
        >>> compression_ratio(baseline_bytes=400, stored_bytes=100)
        4.0
    """
    if baseline_bytes <= 0 or stored_bytes <= 0:
        raise MetricError(
            "byte counts must be > 0, but got "
            f"baseline_bytes={baseline_bytes}, stored_bytes={stored_bytes}."
        )
    return baseline_bytes / stored_bytes


def intelligence_index(*, C: float, P: float, T_ms: float) -> float:  # noqa: N803
    """Return I = C * P / log2(T + 1), with T in milliseconds.

    Args:
        C: Compression ratio, > 0 (the float model has C = 1).
        P: Task score in [0, 1] (top-1 accuracy for classifiers).
        T_ms: Median latency in milliseconds, finite and > 0.

    Raises:
        MetricError: If any argument is outside its domain; never returns NaN or divides by zero.

    Example:
        >>> round(intelligence_index(C=4.0, P=0.9, T_ms=1.0), 6)
        3.6
    """
    C = _check_finite("C", C)  # noqa: N806
    P = _check_finite("P", P)  # noqa: N806
    T_ms = _check_finite("T_ms", T_ms)  # noqa: N806
    if C <= 0:
        raise MetricError(f"C must be > 0, but got C={C}.")
    if not 0.0 <= P <= 1.0:
        raise MetricError(f"P must lie in [0, 1], but got P={P}.")
    if T_ms <= 0:
        raise MetricError(f"T_ms must be > 0 (a measured latency in ms), but got T_ms={T_ms}.")
    return C * P / math.log2(T_ms + 1.0)


@dataclass(frozen=True)
class Gate:
    """The accuracy gate of I'.

    The gate passes when ``P >= threshold``, where the threshold is the larger of
    ``baseline_P - max_drop`` (when ``max_drop`` is set) and ``min_accuracy`` (when set).

    Attributes:
        baseline_P: P of the float model, measured once per study with the same protocol.
        max_drop: Largest allowed absolute drop from ``baseline_P``, or None for no such limit.
        min_accuracy: Absolute floor on P, or None for no floor.
    """

    baseline_P: float  # noqa: N815
    max_drop: float | None = 0.01
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        _check_unit("baseline_P", self.baseline_P)
        if self.max_drop is not None:
            _check_unit("max_drop (--max-accuracy-drop)", self.max_drop)
        if self.min_accuracy is not None:
            _check_unit("min_accuracy (--min-accuracy)", self.min_accuracy)
        if self.max_drop is None and self.min_accuracy is None:
            raise MetricError(
                "a gate needs max_drop or min_accuracy, but both are None. "
                "Pass --max-accuracy-drop or --min-accuracy."
            )

    @property
    def threshold(self) -> float:
        """The smallest P that passes the gate."""
        bounds = []
        if self.max_drop is not None:
            bounds.append(self.baseline_P - self.max_drop)
        if self.min_accuracy is not None:
            bounds.append(self.min_accuracy)
        return max(bounds)

    def passes(self, P: float) -> bool:  # noqa: N803
        """Return whether a score P passes the gate."""
        # A tiny tolerance keeps P = baseline - drop from failing on float rounding.
        return self.threshold - 1e-12 <= P

    def to_dict(self) -> dict[str, Any]:
        """Return the gate as plain JSON types, with its threshold for readers."""
        return {**asdict(self), "threshold": self.threshold}


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise MetricError(f"{name} must lie in [0, 1], but got {value!r}.")


def gated_index(*, C: float, P: float, T_ms: float, gate: Gate) -> float:  # noqa: N803
    """Return I' = I when ``gate`` passes for P, else 0.

    The arguments are validated exactly as in :func:`intelligence_index`, also when the gate
    fails, so a NaN never hides behind a zero.

    Example:
        >>> gate = Gate(baseline_P=0.95, max_drop=0.01)
        >>> gated_index(C=4.0, P=0.90, T_ms=1.0, gate=gate)
        0.0
    """
    index = intelligence_index(C=C, P=P, T_ms=T_ms)
    return index if gate.passes(P) else 0.0


@dataclass(frozen=True)
class Metrics:
    """One scored configuration: the record written to trials, sweeps and exported plans."""

    C: float
    P: float
    T_ms: float
    I: float  # noqa: E741
    I_prime: float
    gate_passed: bool
    stored_bytes: int
    baseline_bytes: int
    avg_weight_bits: float
    unit: str = LATENCY_UNIT

    @classmethod
    def score(
        cls,
        *,
        P: float,  # noqa: N803
        T_ms: float,  # noqa: N803
        stored_bytes: int,
        baseline_bytes: int,
        avg_weight_bits: float,
        gate: Gate,
    ) -> Metrics:
        """Compute C, I and I' from measured quantities and build the record."""
        C = compression_ratio(baseline_bytes=baseline_bytes, stored_bytes=stored_bytes)  # noqa: N806
        index = intelligence_index(C=C, P=P, T_ms=T_ms)
        passed = gate.passes(P)
        return cls(
            C=C,
            P=float(P),
            T_ms=float(T_ms),
            I=index,
            I_prime=index if passed else 0.0,
            gate_passed=passed,
            stored_bytes=int(stored_bytes),
            baseline_bytes=int(baseline_bytes),
            avg_weight_bits=float(avg_weight_bits),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON types."""
        return asdict(self)


def metric_value(point: object, name: str) -> Any:
    """A metric of a scored point: a mapping's key (a sweep row, a JSON record) or a record's
    attribute (:class:`~quide_search.records.TrialRow`, :class:`Metrics`)."""
    return point[name] if isinstance(point, Mapping) else getattr(point, name)


def knee(rows: Sequence[_Row]) -> _Row:
    """Return the uniform protocol's knee: the row with the highest I' (ties: the higher I).

    Rows are metric records or mappings (``I_prime`` and ``I`` at least); the first of equal
    rows wins.
    """
    return max(
        rows, key=lambda r: (metric_value(r, TrialKey.I_PRIME), metric_value(r, TrialKey.I))
    )
