"""Confirmation on a fake clock: rounds interleave the plans, each round starts one later."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
import torch
from _clock import Machine, Model

from quide_search.errors import TrialEvaluationError
from quide_search.latency import LatencyContext, TimingTarget, _timer, confirm_latency
from quide_search.plan import BitPlan


def _plan(name: str) -> BitPlan:
    return BitPlan(model="m", dataset="d", layers={"layer": name})


def _target(models: Mapping[str, torch.nn.Module], per_call: int = 1) -> TimingTarget:
    def runnable(plan: BitPlan) -> torch.nn.Module:
        name = plan.layers["layer"]
        if name == "int2":
            raise TrialEvaluationError("int2 does not run here")
        return models[name]

    return TimingTarget(
        runnable=runnable, example=torch.zeros(1), per_call=per_call, layers=["layer"],
        layer_profile=lambda p: {}, layer_bytes=lambda p: {},
        shapes=list,
    )  # fmt: skip


def _context(**changes: object) -> LatencyContext:
    base = LatencyContext(
        source="measured", device="cpu", method="wall_clock", batch_size=1, threads=1,
        torch_version=torch.__version__, sample_ms=None, warmup=1,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    fake = Machine(spell=9)
    monkeypatch.setattr(_timer, "perf_counter_ns", fake)
    return fake


def test_rounds_rotate_the_order_and_a_spell_falls_on_every_plan(machine: Machine) -> None:
    models = {"float": Model(machine, "A", 1.0), "int8": Model(machine, "B", 2.0),
              "int4": Model(machine, "C", 3.0)}  # fmt: skip
    plans = {"a": _plan("float"), "b": _plan("int8"), "c": _plan("int4")}
    results, failed = confirm_latency(plans, _target(models), _context(), min_rounds=4,
                                      max_rounds=4)  # fmt: skip
    assert failed == {}
    timed = machine.order[3:]  # after one warm-up pass each
    # Each visit runs one untimed pass (its layers were just swapped in), then one sample.
    visits = [timed[i] for i in range(0, len(timed), 2)]
    assert visits == ["A", "B", "C", "B", "C", "A", "C", "A", "B", "A", "B", "C"]
    # The machine's slow spells (every 9 passes) touch each plan in some round.
    assert all(r.repeats == 4 for r in results.values())
    assert [results[k].median_ms for k in "abc"] == sorted(results[k].median_ms for k in "abc")
    assert all(r.spread > 0 for r in results.values())


def test_rounds_stop_once_every_plan_agrees_and_failures_are_left_out(machine: Machine) -> None:
    machine.spell = 0
    models = {"float": Model(machine, "A", 1.0), "int8": Model(machine, "B", 4.0)}
    plans = {0: _plan("float"), 1: _plan("int8"), 2: _plan("int2")}
    results, failed = confirm_latency(plans, _target(models, per_call=2), _context())
    assert failed == {2: "int2 does not run here"}
    assert {k: (r.median_ms, r.repeats) for k, r in results.items()} == {
        0: (0.5, 10), 1: (2.0, 10),
    }  # fmt: skip
