"""Terminal text: what T is, said in one line."""

from __future__ import annotations

from quide_search.output.text import latency_text, plan_text


def test_latency_text_says_source_threads_and_floor() -> None:
    measured = {"batch_size": 1, "threads": 2, "device": "cpu", "method": "wall_clock",
                "source": "measured", "sample_ms": 5.0}  # fmt: skip
    assert latency_text(measured) == (
        "T in ms at batch 1, 2 threads on cpu (measured, wall_clock, samples of >= 5 ms)"
    )
    table = {**measured, "threads": 1, "source": "table"}
    assert latency_text(table) == (
        "T in ms at batch 1, 1 thread on cpu (per-layer table read in whole-model runs, "
        "checked before use)"
    )
    estimate = {**measured, "source": "model:gpu-h100-sxm", "device": "gpu-h100-sxm",
                "method": "analytic", "decode": {"new_tokens": 16}}  # fmt: skip
    assert latency_text(estimate) == (
        "T in ms at batch 1, 2 threads on gpu-h100-sxm (analytic estimate for gpu-h100-sxm, "
        "per generated token)"
    )
    assert plan_text({"conv1": "int8", "fc": "float"}) == "conv1=int8, fc=float"


def test_p_test_is_called_unbiased_only_where_the_weights_never_saw_the_split() -> None:
    from types import SimpleNamespace

    from quide_search.output.summary_text import _held_out

    def said(**task: object) -> str:
        return _held_out(SimpleNamespace(protocol={"task": task}))  # type: ignore[arg-type]

    assert said(kind="classifier", weights=None).endswith("the unbiased estimate")
    for task in ({"kind": "classifier", "weights": "my.pt"}, {"kind": "causal-lm"},
                 {"kind": "custom"}):  # fmt: skip
        assert said(**task) == (
            "held out from the search; whether the float weights were trained on it is not known"
        )
