"""Timing one model on a fake clock: the stop rule, the sample floor, threads, failures."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
from _clock import Machine, Model
from torch import nn

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.latency import LatencyContext, _timer
from quide_search.latency._timer import passes_per_sample, time_model


def _context(**changes: object) -> LatencyContext:
    base = LatencyContext(
        source="measured", device="cpu", method="wall_clock", batch_size=1, threads=1,
        torch_version=torch.__version__, sample_ms=None,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    fake = Machine()
    monkeypatch.setattr(_timer, "perf_counter_ns", fake)
    return fake


def test_samples_stop_once_their_middle_half_is_tight(machine: Machine) -> None:
    result = time_model(Model(machine, "plan", 2.0), torch.zeros(1), _context())
    assert (result.repeats, result.median_ms, result.spread, result.passes) == (20, 2.0, 0.0, 1)
    assert machine.passes == 5 + 20
    # A pass time that keeps changing never settles: the cap ends it, its spread recorded.
    flaky = Model(machine, "plan", 0.0, costs=iter([1.0, 1.5] * 200))
    capped = time_model(flaky, torch.zeros(1), _context())
    assert capped.repeats == 200 and capped.spread == pytest.approx(0.5 / 1.25)
    assert capped.median_ms == statistics.median([1.0, 1.5] * 100)
    assert len(capped.samples) == 200


def test_a_sample_runs_passes_until_it_spans_the_floor(machine: Machine) -> None:
    # A pass that alternates 1.0 and 1.5 ms never settles one pass at a time (above), but a
    # sample of two passes is always 2.5 ms: the samples agree and the stop rule ends it.
    flaky = Model(machine, "plan", 0.0, costs=iter([1.0, 1.5] * 200))
    # The last warm-up pass took 1.0 ms, so a sample needs ceil(1.8 / 1.0) = 2 passes.
    result = time_model(flaky, torch.zeros(1), _context(sample_ms=1.8))
    assert (result.passes, result.repeats, result.median_ms, result.spread) == (2, 20, 1.25, 0.0)
    assert machine.passes == 5 + 2 * 20


def test_the_floor_is_on_the_wall_clock_only_and_bounded() -> None:
    assert _context(sample_ms=5.0).sample_ms == 5.0
    assert _context(method="cuda_events", sample_ms=5.0).sample_ms is None
    assert _context(method="analytic", sample_ms=5.0).sample_ms is None
    # A pass that times as nothing (a broken clock) gets one pass and fails on its own.
    assert passes_per_sample(5.0, 0.0) == passes_per_sample(None, 1e-9) == 1
    assert passes_per_sample(5.0, float("nan")) == 1
    assert passes_per_sample(5.0, 1e-9) == _timer._MAX_PASSES
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="shortest timed sample"):
            _context(sample_ms=bad)
    with pytest.raises(ConfigError, match=r"min_repeats <= max_repeats must hold"):
        _context(min_repeats=30, max_repeats=20)


def test_a_time_that_is_not_a_time_fails_the_trial(machine: Machine) -> None:
    with pytest.raises(TrialEvaluationError, match="finite and > 0 ms, but measured 0.0"):
        time_model(Model(machine, "plan", 0.0), torch.zeros(1), _context())


class _CountsThreads(nn.Module):
    """Notes the torch thread count each pass runs with; fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.seen: set[int] = set()
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("boom")
        return x


def test_t_is_timed_with_the_contexts_threads_and_the_process_keeps_its_own() -> None:
    torch.set_num_threads(3)  # the run's (evaluation's) threads; conftest restores torch's
    model = _CountsThreads()
    time_model(model, torch.zeros(1), _context(max_repeats=20))
    assert model.seen == {1} and torch.get_num_threads() == 3
    broken = _CountsThreads(fail=True)
    with pytest.raises(
        TrialEvaluationError, match="latency measurement failed: RuntimeError: boom"
    ):
        time_model(broken, torch.zeros(1), _context())
    assert broken.seen == {1} and torch.get_num_threads() == 3
    with pytest.raises(ConfigError, match=r"--latency-threads must be in \[1, 1024\], but got 0"):
        _context(threads=0)
