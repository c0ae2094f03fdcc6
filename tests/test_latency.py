"""Latency measurement on a fake clock: the stop rule, and pairing with a reference."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
from torch import nn

from quide_search import latency
from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.latency import LatencyContext, measure_latency


class _Machine:
    """A clock whose speed halves for ``spell`` passes at a time, as a shared CPU's does."""

    def __init__(self, spell: int = 0) -> None:
        self.now_ns = 0
        self.passes = 0
        self.spell = spell
        self.order: list[str] = []

    def __call__(self) -> int:
        return self.now_ns

    def run(self, name: str, cost_ms: float) -> None:
        slow = self.spell and (self.passes // self.spell) % 2 == 1
        self.now_ns += round(cost_ms * (2.0 if slow else 1.0) * 1e6)
        self.passes += 1
        self.order.append(name)


class _Model(nn.Module):
    def __init__(self, machine: _Machine, name: str, cost_ms: float) -> None:
        super().__init__()
        self.machine, self.name, self.cost = machine, name, cost_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.machine.run(self.name, self.cost)
        return x


def _context(reference_ms: float | None = None, repeats: int = 20) -> LatencyContext:
    return LatencyContext(
        device="cpu",
        batch_size=1,
        threads=1,
        torch_version=torch.__version__,
        method="wall_clock",
        min_repeats=repeats,
        max_repeats=repeats,
        reference_ms=reference_ms,
    )


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> _Machine:
    fake = _Machine(spell=50)
    monkeypatch.setattr(latency, "perf_counter_ns", fake)
    return fake


def test_paired_t_does_not_drift_with_the_machine(machine: _Machine) -> None:
    plan, ref, x = _Model(machine, "plan", 3.0), _Model(machine, "ref", 2.0), torch.zeros(1)
    # Alone, the plan's median follows the machine: 3 ms in a fast spell, 6 ms in a slow one
    # (a measurement here is 5 warm-up passes and 45 timed ones: one spell).
    fast = measure_latency(plan, x, context=_context(repeats=45))
    slow = measure_latency(plan, x, context=_context(repeats=45))
    assert machine.passes == 100 and (fast.median_ms, slow.median_ms) == (3.0, 6.0)
    # Paired, each pass counts as reference_ms x (plan / reference): 1.5 x 4 ms in any spell.
    paired = [
        measure_latency(plan, x, context=_context(reference_ms=4.0, repeats=20), reference=ref)
        for _ in range(4)
    ]
    assert [p.median_ms for p in paired] == [6.0] * 4
    # raw_ms is the plan's own median, which still drifts; repeats count pairs.
    assert sorted({p.raw_ms for p in paired}) == [3.0, 6.0]
    assert all(p.repeats == 20 and p.spread == 0.0 for p in paired)


def test_pairs_alternate_which_model_runs_first(machine: _Machine) -> None:
    plan, ref = _Model(machine, "plan", 1.0), _Model(machine, "ref", 1.0)
    measure_latency(plan, torch.zeros(1), context=_context(1.0, repeats=20), reference=ref)
    timed = machine.order[2 * 5 :]  # after the warm-up passes of both
    pairs = [tuple(timed[i : i + 2]) for i in range(0, len(timed), 2)]
    assert len(pairs) == 20 and pairs[::2] == [("plan", "ref")] * 10
    assert pairs[1::2] == [("ref", "plan")] * 10


def test_passes_stop_once_the_middle_half_is_tight(machine: _Machine) -> None:
    machine.spell = 0
    plan = _Model(machine, "plan", 2.0)
    context = LatencyContext(
        device="cpu", batch_size=1, threads=1, torch_version="t", method="wall_clock"
    )
    result = measure_latency(plan, torch.zeros(1), context=context)
    assert (result.repeats, result.median_ms, result.raw_ms) == (20, 2.0, 2.0)
    # A pass time that keeps changing never settles: the cap ends it.
    costs = iter([1.0, 1.5] * 200)
    plan.forward = lambda x: (machine.run("plan", next(costs)), x)[1]  # type: ignore[method-assign]
    capped = measure_latency(plan, torch.zeros(1), context=context)
    assert capped.repeats == 200 and capped.spread == pytest.approx(0.5 / 1.25)
    assert capped.median_ms == statistics.median([1.0, 1.5] * 100)
    # Paired, the cap bounds both models' passes together: 100 pairs, 200 passes.
    costs = iter([1.0, 1.5, 1.5] * 200)
    reference = _Model(machine, "ref", 1.0)
    paired = dataclasses.replace(context, reference_ms=1.0)
    pairs = measure_latency(plan, torch.zeros(1), context=paired, reference=reference)
    assert pairs.repeats == 100 and pairs.spread > 0.02


def test_a_reference_needs_its_t_and_that_t_must_be_positive(machine: _Machine) -> None:
    plan, ref = _Model(machine, "plan", 1.0), _Model(machine, "ref", 1.0)
    with pytest.raises(TrialEvaluationError, match="reference"):
        measure_latency(plan, torch.zeros(1), context=_context(), reference=ref)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="finite and > 0 ms"):
            _context(reference_ms=bad)


def test_a_sample_runs_passes_until_it_spans_the_floor(machine: _Machine) -> None:
    machine.spell = 0
    # A pass that alternates 1.0 and 1.5 ms never settles one pass at a time (above), but a
    # sample of two passes is always 2.5 ms: the samples agree and the stop rule ends it.
    costs = iter([1.0, 1.5] * 200)
    plan = _Model(machine, "plan", 0.0)
    plan.forward = lambda x: (machine.run("plan", next(costs)), x)[1]  # type: ignore[method-assign]
    context = dataclasses.replace(_context(repeats=20), max_repeats=200, sample_ms=1.8)
    # The last warm-up pass took 1.0 ms, so a sample needs ceil(1.8 / 1.0) = 2 passes.
    result = measure_latency(plan, torch.zeros(1), context=context)
    assert (result.passes, result.repeats, result.median_ms) == (2, 20, 1.25)
    assert machine.passes == 5 + 2 * 20 and result.spread == 0.0
    # Paired, one warm-up pass of both models sets the count, and both run it per sample.
    machine.order.clear()
    plan, ref = _Model(machine, "plan", 1.0), _Model(machine, "ref", 0.5)
    paired = dataclasses.replace(context, reference_ms=0.5, sample_ms=6.0)
    pairs = measure_latency(plan, torch.zeros(1), context=paired, reference=ref)
    assert pairs.passes == 4 and pairs.median_ms == 1.0 and pairs.repeats == 20
    timed = machine.order[2 * 5 :]
    assert timed[:8] == ["plan"] * 4 + ["ref"] * 4 and timed[8:16] == ["ref"] * 4 + ["plan"] * 4


def test_the_floor_is_on_the_cpu_clock_only_and_bounded(machine: _Machine) -> None:
    assert LatencyContext.create(device=torch.device("cpu")).sample_ms == latency.SAMPLE_MS
    for method in ("cuda_events", "model:cpu-epyc-2c"):
        assert dataclasses.replace(_context(), method=method, sample_ms=5.0).sample_ms is None
    assert _context().sample_ms is None  # a context stored before the floor: one pass
    # A pass that times as nothing (a broken clock) gets one pass and fails on its own.
    assert latency._passes_per_sample(5.0, 0.0) == latency._passes_per_sample(None, 1e-9) == 1
    assert latency._passes_per_sample(5.0, float("nan")) == 1
    assert latency._passes_per_sample(5.0, 1e-9) == latency._MAX_PASSES
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="shortest timed sample"):
            dataclasses.replace(_context(), sample_ms=bad)


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
    measure_latency(model, torch.zeros(1), context=_context())  # threads=1
    assert model.seen == {1} and torch.get_num_threads() == 3
    broken = _CountsThreads(fail=True)
    with pytest.raises(TrialEvaluationError, match="boom"):
        measure_latency(broken, torch.zeros(1), context=_context())
    assert broken.seen == {1} and torch.get_num_threads() == 3
    assert LatencyContext.create(device=torch.device("cpu")).threads == 3
    assert LatencyContext.create(device=torch.device("cpu"), threads=2).threads == 2
    with pytest.raises(ConfigError, match="--latency-threads must be >= 1, but got 0"):
        LatencyContext.create(device=torch.device("cpu"), threads=0)
