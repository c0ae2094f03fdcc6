"""The scorer: built one way from a protocol, immutable, measuring P, T and bytes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import fake_scorer, protocol_for
from fakes import FakeLatency

from quide_search.backends import model_bytes
from quide_search.errors import ConfigError
from quide_search.measure.scorer import Scorer

CPU = torch.device("cpu")


def test_a_measurement_holds_p_t_bytes_paths_and_where_the_time_went(toy_scorer) -> None:  # type: ignore[no-untyped-def]
    plan = toy_scorer.uniform_plan("int8")
    calls = toy_scorer.latency.calls
    measured = toy_scorer.measure(plan)
    assert toy_scorer.latency.calls == calls + 1
    assert measured.T_ms == pytest.approx(1.0 + 3 * 0.08)  # the fake source's T
    assert pytest.approx(382 / 384) == measured.P  # two of 384 predictions flip in int8
    exact = toy_scorer.cache.assemble(plan, exact=True)
    assert measured.stored_bytes == model_bytes(exact) < toy_scorer.baseline_bytes
    assert measured.fallback_layers == ["conv", "fc1", "fc2"] and measured.kernel_layers == []
    assert set(measured.seconds) == {"assemble", "evaluate", "latency", "record"}
    assert measured.avg_weight_bits == 8.0 and measured.eval_samples == 384


def test_the_chunk_schedule_is_fitted_once_or_taken_from_the_protocol(toy_task) -> None:  # type: ignore[no-untyped-def]
    fitted = fake_scorer(toy_task)
    assert fitted.chunking[0] >= 1
    given = Scorer.build(toy_task, protocol_for(toy_task).with_chunking(32, 2), device=CPU,
                         latency=FakeLatency())  # fmt: skip
    assert given.chunking == (32, 2)
    # Two doubling probes, then full batches of 256.
    assert list(given.evaluator.chunks()) == [(0, 32), (32, 64), (64, 320), (320, 384)]


def test_evaluation_and_timing_keep_their_own_threads(toy_task) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    scorer = fake_scorer(toy_task, threads=1)
    hook = scorer.model.fc2.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        scorer.measure(scorer.uniform_plan("float"))
    finally:
        hook.remove()
    assert set(seen) == {1} and torch.get_num_threads() == 2  # conftest restores torch's


def test_a_table_source_is_measured_at_build_or_read_from_the_study(  # type: ignore[no-untyped-def]
    toy_task, any_error
) -> None:
    protocol = protocol_for(toy_task, latency="table", latency_sample_ms=0.2)
    protocol = protocol.model_copy(update={"latency": dataclasses.replace(
        protocol.latency, max_repeats=30)})  # fmt: skip
    built = Scorer.build(toy_task, protocol, device=CPU)
    table = built.latency.stored()
    assert table is not None and set(table["layers"]) == {"conv", "fc1", "fc2"}
    check = built.latency.check.to_list()
    again = Scorer.build(toy_task, protocol, device=CPU, stored_table=table, stored_check=check)
    plan = again.uniform_plan("int4")
    assert again.latency.stored() == table
    assert again.measure(plan).T_ms == built.measure(plan).T_ms  # the same prediction
    assert again.latency_label == "table" and built.measure(plan).latency_repeats == 0


def test_measured_t_runs_samples_that_span_the_floor(cpu_scorer) -> None:  # type: ignore[no-untyped-def]
    measured = cpu_scorer.measure(cpu_scorer.uniform_plan("int8"))
    assert measured.T_ms > 0 and measured.latency_repeats >= 20
    assert measured.latency_passes > 1  # SimpleCNN's pass is far shorter than 5 ms
    assert cpu_scorer.latency_label == "wall_clock"


def test_a_protocol_for_other_layers_is_refused(toy_task) -> None:  # type: ignore[no-untyped-def]
    protocol = protocol_for(toy_task)
    other = protocol.model_copy(update={"task": protocol.task.model_copy(
        update={"layers": ("conv", "fc1")})})  # fmt: skip
    with pytest.raises(ConfigError, match="quantizable layers must be the protocol's"):
        Scorer.build(toy_task, other, device=CPU, latency=FakeLatency())
