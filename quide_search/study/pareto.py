"""The Pareto front over (C max, P max, T min): pure Python, recomputed whenever asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dominates", "pareto_front"]


def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Return whether point ``a`` dominates ``b``: no worse in C, P and T, better in one."""
    no_worse = a["C"] >= b["C"] and a["P"] >= b["P"] and a["T_ms"] <= b["T_ms"]
    better = a["C"] > b["C"] or a["P"] > b["P"] or a["T_ms"] < b["T_ms"]
    return bool(no_worse and better)


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return the non-dominated points, sorted by C descending then P descending.

    Points equal in C, P and T are all kept (none dominates the other).

    Example:
        >>> pts = [{"C": 4, "P": 0.9, "T_ms": 1.0}, {"C": 2, "P": 0.8, "T_ms": 2.0}]
        >>> [p["C"] for p in pareto_front(pts)]
        [4]
    """
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (-p["C"], -p["P"], p["T_ms"]))
