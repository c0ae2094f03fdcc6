from __future__ import annotations

from quide_search.report import latency_text


def test_latency_text_says_threads_reference_and_floor() -> None:
    context = {"batch_size": 1, "threads": 2, "device": "cpu", "method": "wall_clock"}
    assert latency_text(context) == "T in ms at batch 1, 2 threads on cpu (wall_clock)"
    paired = {**context, "threads": 1, "reference_ms": 0.06725, "sample_ms": 5.0}
    # Studies created before the reference was a mix paired with the float model.
    assert latency_text(paired) == (
        "T in ms at batch 1, 1 thread on cpu (wall_clock, paired with the float model at "
        "0.06725 ms per pass, samples of >= 5 ms)"
    )
    mixed = {**paired, "reference_qtypes": ["none", "qint8", "qint4"]}
    assert latency_text(mixed) == (
        "T in ms at batch 1, 1 thread on cpu (wall_clock, paired with a float/qint8/qint4 mix "
        "at 0.06725 ms per pass, samples of >= 5 ms)"
    )
