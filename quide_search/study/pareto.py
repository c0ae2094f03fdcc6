"""The Pareto front over (C max, P max, T min): pure Python, recomputed whenever asked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from quide_search.metric import metric_value

__all__ = ["dominates", "pareto_front"]

_Point = TypeVar("_Point")


def _ctp(point: object) -> tuple[float, float, float]:
    c, p, t = (float(metric_value(point, k)) for k in ("C", "P", "T_ms"))
    return c, p, t


def _order(point: object) -> tuple[float, float, float]:
    c, p, t = _ctp(point)
    return -c, -p, t


def dominates(a: object, b: object) -> bool:
    """Return whether point ``a`` dominates ``b``: no worse in C, P and T, better in one.

    Points are mappings or records with ``C``, ``P`` and ``T_ms``."""
    (ca, pa, ta), (cb, pb, tb) = _ctp(a), _ctp(b)
    no_worse = ca >= cb and pa >= pb and ta <= tb
    better = ca > cb or pa > pb or ta < tb
    return bool(no_worse and better)


def pareto_front(points: Sequence[_Point]) -> list[_Point]:
    """Return the non-dominated points, sorted by C descending then P descending.

    Points equal in C, P and T are all kept (none dominates the other).

    Example:
        >>> pts = [{"C": 4, "P": 0.9, "T_ms": 1.0}, {"C": 2, "P": 0.8, "T_ms": 2.0}]
        >>> [p["C"] for p in pareto_front(pts)]
        [4]
    """
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=_order)
