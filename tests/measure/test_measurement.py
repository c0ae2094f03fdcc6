"""The measurement record scores under a gate; the early-stop signal says how far it got."""

from __future__ import annotations

import pytest

from quide_search.errors import QuideError
from quide_search.measure.measurement import GateUnreachable, Measurement
from quide_search.metric import Gate


def _measured(P: float) -> Measurement:  # noqa: N803
    return Measurement(
        P=P,
        T_ms=3.0,
        stored_bytes=250,
        avg_weight_bits=8.0,
        latency_repeats=20,
        latency_spread=0.01,
        eval_samples=100,
    )


def test_metrics_score_c_i_and_the_gate() -> None:
    # C = 1000 / 250 = 4; I = 4 * 0.9 / log2(3 + 1) = 1.8.
    passed = _measured(0.9).metrics(baseline_bytes=1000, gate=Gate(0.95, max_drop=0.1))
    assert (passed.C, passed.I, passed.I_prime, passed.gate_passed) == (
        pytest.approx(4.0),
        pytest.approx(1.8),
        pytest.approx(1.8),
        True,
    )
    failed = _measured(0.9).metrics(baseline_bytes=1000, gate=Gate(0.95, max_drop=0.01))
    assert (failed.I, failed.I_prime, failed.gate_passed) == (pytest.approx(1.8), 0.0, False)
    assert (failed.stored_bytes, failed.baseline_bytes, failed.avg_weight_bits) == (250, 1000, 8.0)


def test_gate_unreachable_reports_how_far_evaluation_got() -> None:
    signal = GateUnreachable(samples=10, total=40, reachable=0.5)
    assert str(signal) == "P <= 0.5000 after 10 of 40 samples"
    assert (signal.samples, signal.total, signal.reachable) == (10, 40, 0.5)
    assert not isinstance(signal, QuideError)  # a pruned trial, not an error
