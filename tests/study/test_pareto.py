from __future__ import annotations

from quide_search.study.pareto import dominates, pareto_front


def _p(C: float, P: float, T: float, n: int = 0) -> dict:
    return {"C": C, "P": P, "T_ms": T, "trial": n}


def test_dominates_needs_strictly_better_somewhere() -> None:
    assert dominates(_p(2, 0.9, 1), _p(1, 0.9, 1))
    assert not dominates(_p(2, 0.9, 1), _p(2, 0.9, 1))
    assert not dominates(_p(2, 0.8, 1), _p(1, 0.9, 1))


def test_front_keeps_trade_offs_and_drops_dominated() -> None:
    points = [
        _p(4, 0.90, 2.0, 0),
        _p(2, 0.95, 2.0, 1),
        _p(2, 0.90, 3.0, 2),
        _p(1, 0.95, 1.0, 3),
        _p(4, 0.90, 2.0, 4),
    ]
    front = pareto_front(points)
    assert [p["trial"] for p in front] == [0, 4, 1, 3]
