"""The scorer's latency reference: measured once, paired with every measured T on a CPU."""

from __future__ import annotations

import torch

from quide_search.latency import SAMPLE_MS
from quide_search.measurement import Measurement
from quide_search.scorer import Scorer


def _measure_counting(
    scorer: Scorer, qtype: str, module: torch.nn.Module
) -> tuple[Measurement, int]:
    """Measure the uniform ``qtype`` plan; return it and how often ``module`` itself ran.

    Views of the float model share its hooks, so the hook counts calls of ``module`` only.
    """
    calls: list[int] = []
    hook = module.register_forward_hook(lambda m, *_: calls.append(1) if m is module else None)
    try:
        return scorer.measure(scorer.uniform_plan(qtype)), len(calls)
    finally:
        hook.remove()


def test_measured_t_on_a_cpu_pairs_every_pass_with_the_reference(digits_task) -> None:  # type: ignore[no-untyped-def]
    scorer = Scorer(digits_task, device=torch.device("cpu"), eval_chunk=32)
    reference = scorer.context.reference_ms
    assert reference is not None and 0 < reference < 100
    measured, calls = _measure_counting(scorer, "qint8", scorer.model)
    # The float model ran once per warm-up pass and as many passes per timed pair as the
    # plan (enough for a sample of >= SAMPLE_MS), and nowhere else.
    passes = measured.latency_passes
    assert scorer.context.sample_ms == SAMPLE_MS and passes > 1
    assert calls == scorer.context.warmup + passes * measured.latency_repeats
    assert measured.T_raw_ms is not None and measured.T_ms > 0
    # A stored reference is used as given; None times plain medians.
    scorer.use_latency_reference(None)
    plain = scorer.measure(scorer.uniform_plan("qint8"))
    assert plain.T_raw_ms == plain.T_ms and scorer.context.reference_ms is None
    assert scorer.calibrate_latency() == scorer.context.reference_ms is not None


def test_estimated_and_table_t_have_no_reference(digits_task) -> None:  # type: ignore[no-untyped-def]
    for source in ("table", "model:cpu-epyc-2c"):
        scorer = Scorer(digits_task, device=torch.device("cpu"), latency=source, eval_chunk=32)
        assert scorer.context.reference_ms is None and scorer.calibrate_latency() is None
    estimated = scorer.measure(scorer.uniform_plan("qint8"))
    assert estimated.T_raw_ms is None and estimated.latency_repeats == 0


def test_a_latency_table_times_single_passes(digits_task) -> None:  # type: ignore[no-untyped-def]
    scorer = Scorer(digits_task, device=torch.device("cpu"), latency="table", eval_chunk=32)
    table = scorer.build_table(("qint8",))
    # Hundreds of sub-ms entries with 5-ms samples would take minutes: the table does not
    # use the floor, and says so in its context; the scorer's measured T keeps it.
    assert table.context["sample_ms"] is None and scorer.context.sample_ms == SAMPLE_MS
    assert set(table.layers) == set(scorer.weight_counts)
    assert all(row["qint8"] > 0 and row["none"] > 0 for row in table.layers.values())


def test_a_study_s_choices_dealt_over_the_layers_are_the_reference(digits_task) -> None:  # type: ignore[no-untyped-def]
    scorer = Scorer(
        digits_task, device=torch.device("cpu"), eval_chunk=32, reference_qtypes=["qint8", "qint2"]
    )
    assert scorer.context.reference_qtypes == ("qint8", "qint2")
    reference = scorer.latency_reference()
    assert reference is not None and reference is not scorer.model
    modules = dict(reference.named_modules())
    layers = list(scorer.weight_counts)
    assert [modules[n].weight_qtype.name for n in layers] == ["qint8", "qint2"] * 2
    measured, calls = _measure_counting(scorer, "qint4", reference)
    # Every timed sample ran the mix as often as the plan; trials did not change it.
    passes = measured.latency_passes
    assert calls == scorer.context.warmup + passes * measured.latency_repeats
    assert scorer.latency_reference() is reference and measured.T_ms > 0
    # The float model is the reference where no qtypes are given (studies from before the
    # mix) and where the choices are all float.
    for qtypes in (None, ["none"]):
        scorer.use_latency_reference(1.0, qtypes)
        assert scorer.latency_reference() is scorer.model
    scorer.use_latency_reference(None, ["qint8"])
    assert scorer.latency_reference() is None and scorer.context.reference_qtypes is None
