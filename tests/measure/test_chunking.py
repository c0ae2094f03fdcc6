"""Chunk schedules fitted to the cost of a forward call, timed on a fake clock."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quide_search.measure import chunking
from quide_search.measure.chunking import chunk_bounds
from quide_search.measure.evaluator import Evaluator


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Costly(nn.Module):
    """Returns its input (the logits), advancing the clock as a model of that cost would."""

    def __init__(self, clock: _Clock, fixed_ms: float, per_sample_ms: float) -> None:
        super().__init__()
        self.clock, self.fixed, self.per_sample = clock, fixed_ms, per_sample_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += (self.fixed + self.per_sample * x.shape[0]) / 1e3
        return x


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(chunking, "perf_counter", fake)
    return fake


def _evaluator(samples: int, batch_size: int) -> Evaluator:
    logits = torch.zeros(samples, 3)
    logits[:, 0] = 1.0
    return Evaluator(logits, torch.zeros(samples, dtype=torch.long), batch_size=batch_size)


def test_bounds_double_then_take_full_batches_after_the_probes() -> None:
    assert list(chunk_bounds(500, 256, 104)) == [(0, 104), (104, 208), (208, 416), (416, 500)]
    assert list(chunk_bounds(500, 256, 104, probes=1)) == [(0, 104), (104, 360), (360, 500)]
    assert list(chunk_bounds(500, 256, 104, probes=2)) == [
        (0, 104), (104, 208), (208, 464), (464, 500),
    ]  # fmt: skip
    assert list(chunk_bounds(3, 256, 1)) == [(0, 1), (1, 2), (2, 3)]


def test_a_fixed_cost_per_call_means_one_chunk_per_batch(clock: _Clock) -> None:
    fitted = _evaluator(1000, 250).fit_chunking(_Costly(clock, fixed_ms=4.0, per_sample_ms=0.0))
    assert list(fitted.chunks()) == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_calls_that_cost_only_their_samples_keep_1_40_doubling(clock: _Clock) -> None:
    evaluator = _evaluator(1000, 250)
    fitted = evaluator.fit_chunking(_Costly(clock, fixed_ms=0.0, per_sample_ms=0.2))
    assert (fitted.chunk, fitted.probes) == (25, None)
    assert list(fitted.chunks()) == list(evaluator.chunks())


def test_first_chunk_runs_near_full_batch_throughput(clock: _Clock) -> None:
    # 3 ms a call + 0.1 ms a sample: per sample, 25 samples cost 1.96x a full batch (28 ms
    # for 250), 50 cost 1.43x: within 1.5x. One more call adds 3 ms to a 112-ms plain pass:
    # 15 % buys 5, and doubling from 50 takes 3 more than the plain 4.
    fitted = _evaluator(1000, 250).fit_chunking(_Costly(clock, fixed_ms=3.0, per_sample_ms=0.1))
    assert (fitted.chunk, fitted.probes) == (50, None)
    assert list(fitted.chunks())[:3] == [(0, 50), (50, 100), (100, 200)]


def test_few_affordable_calls_stop_the_doubling_early(clock: _Clock) -> None:
    # Like SimpleCNN on digits here: 0.5 ms a call + 0.01 ms a sample, 500 samples in
    # batches of 256. 104 samples run at 1.24x a full batch's cost per sample (52: 1.64x).
    # The plain pass (2 calls) takes 6 ms: 15 % buys one call of 0.5 ms, so one probe of 104
    # and then full batches (doubling would take 4 calls).
    fitted = _evaluator(500, 256).fit_chunking(_Costly(clock, fixed_ms=0.5, per_sample_ms=0.01))
    assert (fitted.chunk, fitted.probes) == (104, 1)
    assert list(fitted.chunks()) == [(0, 104), (104, 360), (360, 500)]


def test_one_probe_is_kept_while_a_call_costs_at_most_a_fifth_of_the_pass(clock: _Clock) -> None:
    # 500 samples in batches of 256, 0.01 ms a sample. At 0.8 ms a call one more call costs
    # 12 % of the 6.6-ms plain pass: within the 15 % budget. At 1.4 ms it costs 18 % of
    # 7.8 ms: over 15 %, but one probe is kept up to 20 %. At 2 ms (22 %) it lapses.
    for fixed_ms, calls in ((0.8, 3), (1.4, 3), (2.0, 2)):
        fitted = _evaluator(500, 256).fit_chunking(_Costly(clock, fixed_ms, 0.01))
        assert len(list(fitted.chunks())) == calls, fixed_ms
        assert (fitted.chunk < 256) == (calls == 3), fixed_ms


def test_a_call_that_costs_a_quarter_of_the_pass_means_no_chunks(clock: _Clock) -> None:
    # Like a deep model on few samples: 6 ms a call + 1 ms a sample, 16 samples. A chunk of
    # 8 runs at 1.27x a full batch's cost per sample, but a second call costs 27 % of the
    # 22-ms pass: over the 15 % budget.
    fitted = _evaluator(16, 256).fit_chunking(_Costly(clock, fixed_ms=6.0, per_sample_ms=1.0))
    assert list(fitted.chunks()) == [(0, 16)]


def test_expensive_passes_are_priced_from_single_calls(clock: _Clock) -> None:
    # A 2-s pass is not run whole: the calls of the ladder price it. A 1-ms fixed cost is
    # nothing against 2 ms a sample, so doubling from 1/40 stays.
    model = _Costly(clock, fixed_ms=1.0, per_sample_ms=2.0)
    fitted = _evaluator(1000, 250).fit_chunking(model)
    assert (fitted.chunk, fitted.probes) == (25, None)
    # The ladder (25 .. 250) took at most 20 rounds of 495 samples, no whole passes of 1000.
    assert clock.now < 20 * (6 * 1.0 + 495 * 2.0) / 1e3 + 1e-9


@pytest.mark.parametrize("samples", [1, 2, 3, 12, 100, 1000, 1001])
def test_fitting_works_for_any_split_size(clock: _Clock, samples: int) -> None:
    fitted = _evaluator(samples, 256).fit_chunking(_Costly(clock, 1.0, 0.0))
    assert fitted.chunk == min(samples, 256)  # a fixed cost only: one chunk per batch
    assert fitted.evaluate(_Costly(clock, 0.0, 0.0))[0] == 1.0
