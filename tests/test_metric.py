from __future__ import annotations

import math

import pytest

from quide_search.errors import MetricError, QuideError
from quide_search.metric import Gate, Metrics, compression_ratio, gated_index, intelligence_index


@pytest.mark.parametrize(
    ("C", "P", "T_ms", "expected"),
    [
        (1.0, 1.0, 1.0, 1.0),  # log2(2) = 1
        (4.0, 0.9, 3.0, 4.0 * 0.9 / 2.0),  # log2(4) = 2
        (8.0, 0.5, 7.0, 8.0 * 0.5 / 3.0),
        (2.0, 0.0, 0.5, 0.0),
    ],
    ids=["unit", "t3", "t7", "p0"],
)
def test_intelligence_index_values(C: float, P: float, T_ms: float, expected: float) -> None:
    assert intelligence_index(C=C, P=P, T_ms=T_ms) == pytest.approx(expected, rel=1e-12)


def test_intelligence_index_matches_definition_for_small_t() -> None:
    assert intelligence_index(C=3.0, P=0.8, T_ms=0.1) == pytest.approx(2.4 / math.log2(1.1))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"C": 1.0, "P": 0.5, "T_ms": 0.0}, "T_ms must be > 0"),
        ({"C": 1.0, "P": 0.5, "T_ms": -1.0}, "T_ms must be > 0"),
        ({"C": 1.0, "P": 0.5, "T_ms": math.inf}, "T_ms must be finite"),
        ({"C": 1.0, "P": 0.5, "T_ms": math.nan}, "T_ms must be finite"),
        ({"C": 0.0, "P": 0.5, "T_ms": 1.0}, "C must be > 0"),
        ({"C": -2.0, "P": 0.5, "T_ms": 1.0}, "C must be > 0"),
        ({"C": math.nan, "P": 0.5, "T_ms": 1.0}, "C must be finite"),
        ({"C": 1.0, "P": 1.5, "T_ms": 1.0}, "P must lie in [0, 1]"),
        ({"C": 1.0, "P": -0.1, "T_ms": 1.0}, "P must lie in [0, 1]"),
        ({"C": 1.0, "P": "high", "T_ms": 1.0}, "P must be a real number"),
    ],
)
def test_intelligence_index_rejects_out_of_domain(kwargs: dict, fragment: str) -> None:
    with pytest.raises(MetricError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        intelligence_index(**kwargs)


def test_metric_error_is_quide_and_value_error() -> None:
    with pytest.raises(QuideError):
        intelligence_index(C=1.0, P=0.5, T_ms=0.0)
    with pytest.raises(ValueError):
        intelligence_index(C=1.0, P=0.5, T_ms=0.0)


def test_gate_drop_threshold_and_boundary() -> None:
    gate = Gate(baseline_P=0.98, max_drop=0.01)
    assert gate.threshold == pytest.approx(0.97)
    assert gate.passes(0.97)  # exactly on the threshold passes despite float rounding
    assert gate.passes(0.99)
    assert not gate.passes(0.969)


def test_gate_floor_and_both() -> None:
    assert Gate(baseline_P=0.98, max_drop=None, min_accuracy=0.9).threshold == 0.9
    both = Gate(baseline_P=0.98, max_drop=0.2, min_accuracy=0.9)
    assert both.threshold == 0.9  # the stricter of 0.78 and 0.9
    assert Gate(baseline_P=0.98, max_drop=0.01, min_accuracy=0.5).threshold == pytest.approx(0.97)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"baseline_P": 1.2},
        {"baseline_P": 0.9, "max_drop": -0.1},
        {"baseline_P": 0.9, "max_drop": None, "min_accuracy": 2.0},
        {"baseline_P": 0.9, "max_drop": None, "min_accuracy": None},
    ],
)
def test_gate_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(MetricError):
        Gate(**kwargs)


def test_gated_index_zero_when_failing_and_still_validates() -> None:
    gate = Gate(baseline_P=0.95, max_drop=0.01)
    assert gated_index(C=4.0, P=0.9, T_ms=1.0, gate=gate) == 0.0
    assert gated_index(C=4.0, P=0.95, T_ms=1.0, gate=gate) == pytest.approx(3.8)
    with pytest.raises(MetricError):
        gated_index(C=4.0, P=0.9, T_ms=0.0, gate=gate)  # never a silent 0 for a bad T


def test_compression_ratio() -> None:
    assert compression_ratio(baseline_bytes=1000, stored_bytes=250) == 4.0
    with pytest.raises(MetricError, match="byte counts must be > 0"):
        compression_ratio(baseline_bytes=1000, stored_bytes=0)


def test_metrics_score_record() -> None:
    gate = Gate(baseline_P=0.9, max_drop=0.05)
    m = Metrics.score(
        P=0.86, T_ms=3.0, stored_bytes=100, baseline_bytes=400, avg_weight_bits=8.0, gate=gate
    )
    assert (m.C, m.I, m.I_prime, m.gate_passed) == (4.0, pytest.approx(1.72), m.I, True)
    assert m.unit == "ms"
    failing = Metrics.score(
        P=0.8, T_ms=3.0, stored_bytes=100, baseline_bytes=400, avg_weight_bits=8.0, gate=gate
    )
    assert failing.I_prime == 0.0 and pytest.approx(1.6) == failing.I
    assert set(m.to_dict()) >= {"C", "P", "T_ms", "I", "I_prime", "gate_passed", "unit"}
