"""The per-layer table: its prediction, its file, its check and guard, and a table profiled in
whole-model runs of the toy model."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from _clock import Machine, Model

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.latency import (
    LatencyContext,
    LatencyTable,
    TableCheck,
    TableLatency,
    TimingTarget,
    _profiler,
    make_source,
    read_table,
)
from quide_search.latency.table import profile_table
from quide_search.latency.table_check import CheckRow, check_plans, check_table, uniform_scale
from quide_search.plan import BitPlan


def _table() -> LatencyTable:
    layers = {"a": {"float": 1.0, "int8": 0.5, "int4": 0.75}, "b": {"float": 2.0, "int8": 3.0}}
    return LatencyTable(base_ms=5.0, layers=layers, context={"device": "cpu"})


def _check(*rows: tuple[str, float, float]) -> TableCheck:
    return TableCheck(tuple(CheckRow(*row) for row in rows))


def test_a_plan_is_float_t_plus_each_layers_change_unclamped() -> None:
    table = _table()
    assert table.predict({"a": "int8", "b": "int8"}) == 5.0 - 0.5 + 1.0
    assert table.predict({"a": "float", "b": "float"}) == 5.0
    # A sum at or below 0 is returned as it is, for the guard to reject, never clamped.
    assert LatencyTable(0.1, {"a": {"float": 1.0, "int8": 0.0}}, {}).predict(
        {"a": "int8"}
    ) == pytest.approx(-0.9)
    with pytest.raises(ConfigError, match="must hold layer 'b' under 'int4'"):
        table.predict({"b": "int4"})


def test_a_table_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table().to_dict()))
    assert read_table(path) == _table()
    with pytest.raises(ConfigError, match="must name a readable JSON file"):
        read_table(tmp_path / "missing.json")
    (tmp_path / "plan.json").write_text(json.dumps({"schema_version": 3, "model": "m"}))
    with pytest.raises(ConfigError, match="reading it failed: KeyError"):
        read_table(tmp_path / "plan.json")
    (tmp_path / "old.json").write_text(json.dumps({**_table().to_dict(), "schema_version": 1}))
    with pytest.raises(ConfigError, match="must be the JSON quide-search writes"):
        read_table(tmp_path / "old.json")
    # Times must be finite numbers, and the context an object.
    nan = {**_table().to_dict(), "base_ms": math.nan}
    (tmp_path / "nan.json").write_text(json.dumps(nan))
    with pytest.raises(ConfigError, match="must be a finite number of ms, but got nan"):
        read_table(tmp_path / "nan.json")
    (tmp_path / "ctx.json").write_text(json.dumps({**_table().to_dict(), "context": 5}))
    with pytest.raises(ConfigError, match="context must be an object, but got 5"):
        read_table(tmp_path / "ctx.json")
    # Tables of layers timed alone are refused, with what to do instead.
    (tmp_path / "v2.json").write_text(json.dumps({**_table().to_dict(), "schema_version": 2}))
    with pytest.raises(ConfigError, match=r"schema 2 \(each layer timed alone\) is no longer"):
        read_table(tmp_path / "v2.json")


def test_the_check_passes_within_its_bound_and_says_which_way() -> None:
    good = _check(("float", 1.0, 1.1), ("int8", 2.0, 1.8))
    assert [round(r.error, 3) for r in good.rows] == [-0.091, 0.111]
    assert good.passed and good.worst == pytest.approx(2.0 / 1.8 - 1)
    assert good.range_ms == (1.1, 1.8)
    assert good.verdict() == (
        "latency table checked on 2 plans timed whole: worst error 11% (bound 25%); the "
        "search uses it."
    )
    bad = _check(("float", 1.0, 1.1), ("int8", 0.5, 2.0))
    assert not bad.passed
    assert bad.verdict().startswith(
        "latency table not used: it missed the 2 plans timed whole by up to 75% (bound 25%), "
        "so this study's T is measured per trial instead"
    )
    assert TableCheck.from_list(bad.to_list()) == bad
    assert bad.to_list()[1]["error"] == pytest.approx(-0.75)
    with pytest.raises(ConfigError, match="at least one row with measured_ms > 0, but got 0"):
        TableCheck.from_list([])
    # A row that is not a number fails the check, wherever it stands.
    assert not _check(("float", 1.0, 1.0), ("int8", math.nan, 2.0)).passed
    with pytest.raises(ConfigError, match="reading it failed: KeyError"):
        TableCheck.from_list([{"plan": "int8"}])


def test_a_prediction_outside_what_the_check_timed_fails_its_trial() -> None:
    check = _check(("float", 1.0, 1.0), ("int8", 2.0, 2.0))
    # Down to 25 % faster than the fastest plan timed, up to twice the slowest.
    for inside in (0.75, 1.0, 3.0, 4.0):
        check.guard(inside)
    for outside in (0.74, 4.01, 0.0, -3.0, math.nan):
        with pytest.raises(TrialEvaluationError, match=r"outside the 0.75-4 ms it may predict"):
            check.guard(outside)
    with pytest.raises(TrialEvaluationError, match=r"predicts T = -3 ms for this plan"):
        check.guard(-3.0)


def test_the_checked_plans_are_float_uniform_and_seeded_mixed() -> None:
    plans = check_plans(["a", "b", "c"], ("float", "int8", "int4"))
    assert list(plans) == ["float", "int8", "int4", "mixed 1", "mixed 2", "mixed 3", "mixed 4"]
    assert plans["int4"] == {"a": "int4", "b": "int4", "c": "int4"}
    assert plans == check_plans(["a", "b", "c"], ("float", "int8", "int4"))  # seeded
    mixed = [plans[f"mixed {i}"] for i in range(1, 5)]
    assert all(set(p.values()) <= {"float", "int8", "int4"} for p in mixed)
    assert any(len(set(p.values())) > 1 for p in mixed)


def test_hooks_read_each_layers_time_inside_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine()
    monkeypatch.setattr(_profiler, "perf_counter_ns", machine)
    a, b = Model(machine, "a", 1.0), Model(machine, "b", 2.5)
    model = torch.nn.Sequential(a, b)
    times = _profiler.layer_times(model, {"a": a, "b": b, "unused": torch.nn.Identity()},
                                  torch.zeros(1))  # fmt: skip
    assert times == {"a": 1.0, "b": 2.5, "unused": 0.0}
    assert machine.order == ["a", "b", "a", "b"]  # an untimed pass, then the hooked one
    # A decode's time is per generated token; the hooks are gone afterwards.
    assert _profiler.layer_times(model, {"a": a}, torch.zeros(1), per_call=2) == {"a": 0.5}
    assert not a._forward_hooks and not a._forward_pre_hooks


def _fake_target(
    machine: Machine, costs: dict[str, dict[str, float]], spell_rounds: set[int]
) -> TimingTarget:
    """Layer times per precision; in a spell round, every plan of that round runs 10 ms slower
    in every layer (a busy machine slows both sides of each paired difference alike)."""
    seen: list[str] = []

    def layer_profile(plan: BitPlan) -> dict[str, float]:
        seen.append(next(iter(plan.layers.values())))
        slow = 10.0 if (len(seen) - 1) // len(costs["a"]) in spell_rounds else 0.0
        return {n: costs[n][q] + slow for n, q in plan.layers.items()}

    return TimingTarget(
        runnable=lambda plan: Model(machine, "m", 3.0), example=torch.zeros(1), per_call=1,
        layers=list(costs), layer_profile=layer_profile, layer_bytes=lambda p: {},
        shapes=list,
    )  # fmt: skip


def _context(**changes: object) -> LatencyContext:
    base = LatencyContext(
        source="table", device="cpu", method="wall_clock", batch_size=1, threads=1,
        torch_version=torch.__version__, sample_ms=None, warmup=1, min_repeats=5,
        max_repeats=10,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_layers_change_is_the_median_of_differences_within_a_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quide_search.latency import _timer

    machine = Machine()
    monkeypatch.setattr(_timer, "perf_counter_ns", machine)
    costs = {"a": {"float": 1.0, "int8": 0.4}, "b": {"float": 2.0, "int8": 2.5}}
    # 3 of 5 rounds are slow: the float medians carry the spell, the changes do not.
    table = profile_table(_context(), _fake_target(machine, costs, {0, 2, 4}), ("int8",))
    assert table.layers["a"] == {"float": 11.0, "int8": pytest.approx(10.4)}
    assert table.layers["b"] == {"float": 12.0, "int8": pytest.approx(12.5)}
    assert table.predict({"a": "int8", "b": "int8"}) == pytest.approx(3.0 - 0.6 + 0.5)
    assert table.context["profile_rounds"] == 5 and table.base_ms == 3.0


def test_a_fresh_tables_changes_are_scaled_onto_the_uniform_plans_timed_whole() -> None:
    table = LatencyTable(10.0, {"a": {"float": 2.0, "int8": 4.0, "int4": 6.0},
                                "b": {"float": 3.0, "int8": 4.0, "int4": 5.0}}, {})  # fmt: skip
    plans = {q: {"a": q, "b": q} for q in ("int8", "int4")}
    # The whole model changes 1.25x what the layers' hooks read: +3.75 and +7.5 ms.
    assert uniform_scale(table, plans, {"int8": 13.75, "int4": 17.5}) == pytest.approx(1.25)
    scaled = table.scaled(1.25)
    assert scaled.predict({"a": "int8", "b": "int4"}) == pytest.approx(10.0 + 1.25 * 4.0)
    assert scaled.context["scale"] == 1.25 and scaled.layers["a"]["float"] == 2.0
    # A factor outside what a hook reading can be off by leaves the table as it is.
    assert uniform_scale(table, plans, {"int8": 19.0, "int4": 28.0}) == 1.0
    # A change under 5 % of the float T says nothing about the factor.
    assert uniform_scale(table, {"int8": {"a": "float", "b": "float"}}, {"int8": 20.0}) == 1.0


def test_a_fresh_table_takes_its_float_t_from_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from quide_search.latency import _timer

    machine = Machine()
    monkeypatch.setattr(_timer, "perf_counter_ns", machine)
    costs = {"a": {"float": 1.0, "int8": 0.4}, "b": {"float": 2.0, "int8": 2.5}}
    target = _fake_target(machine, costs, set())
    # Not timed while profiling: the check times the float model beside the other plans.
    unbased = profile_table(_context(), target, ("int8",), time_base=False)
    assert math.isnan(unbased.base_ms) and unbased.layers["a"] == {"float": 1.0, "int8": 0.4}
    based, check = check_table(unbased, target, _context(), ("int8",), rebase=True)
    assert based.base_ms == 3.0 and check.rows[0].error == 0.0
    # A table left without a base it cannot take from the check is refused, not scored.
    with pytest.raises(TrialEvaluationError, match="has no float T"):
        check_table(unbased, target, _context(), ("int8",), rebase=False)


def test_a_table_profiled_and_checked_on_the_toy_model(
    toy_scorer, any_error, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    context = dataclasses.replace(toy_scorer.latency.context, source="table", device="cpu",
                                  method="wall_clock", sample_ms=0.2, max_repeats=40)  # fmt: skip
    source = TableLatency.measure(context, toy_scorer.target, ("int8", "int2"))
    assert set(source.table.layers) == {"conv", "fc1", "fc2"}
    assert all(set(row) == {"float", "int8", "int2"} for row in source.table.layers.values())
    assert all(row["float"] > 0 for row in source.table.layers.values())
    labels = [row.plan for row in source.check.rows]
    assert labels == ["float", "int8", "int2", "mixed 1", "mixed 2", "mixed 3", "mixed 4"]
    assert all(row.measured_ms > 0 for row in source.check.rows)
    # A table measured now takes the float T its check timed beside the others as its base.
    assert source.check.rows[0].measured_ms == source.table.base_ms
    assert source.check.rows[0].error == 0.0
    plan = toy_scorer.uniform_plan("int8")
    assert source.label == "table" and source.deterministic
    assert source.latency(plan).median_ms == source.table.predict(plan.layers)
    assert source.predicted_ms(dict(plan.layers)) == source.latency(plan).median_ms
    # The stored table and check make the same source in another process, unmeasured.
    again = make_source(context, toy_scorer.target, precisions=("int8",),
                        stored=source.stored(), stored_check=source.check.to_list())  # fmt: skip
    assert isinstance(again, TableLatency) and again.check == source.check
    assert again.latency(plan) == source.latency(plan)
    # A saved table must cover every choice of every layer; it is checked here anew.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(source.stored()))
    from_file = dataclasses.replace(context, table_file=str(saved))
    read = make_source(from_file, toy_scorer.target, precisions=("int8",))
    assert isinstance(read, TableLatency) and read.table == source.table  # its base kept
    assert [row.plan for row in read.check.rows][:2] == ["float", "int8"]
    with pytest.raises(ConfigError, match="under 'int4'"):
        make_source(from_file, toy_scorer.target, precisions=("int8", "int4"))


def test_a_table_that_misses_the_timed_plans_is_not_used(toy_scorer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context = dataclasses.replace(toy_scorer.latency.context, source="table", device="cpu",
                                  method="wall_clock", sample_ms=0.2, max_repeats=40)  # fmt: skip
    # Each quantized layer "saves" 100 ms: the sums fall far below 0.
    layers = {n: {"float": 0.01, "int8": -100.0} for n in toy_scorer.target.layers}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(LatencyTable(0.05, layers, {"device": "cpu"}).to_dict()))
    source = make_source(dataclasses.replace(context, table_file=str(bad)), toy_scorer.target,
                         precisions=("int8",))  # fmt: skip
    assert isinstance(source, TableLatency) and not source.check.passed
    assert source.check.worst > 100
    assert source.label == "wall_clock" and not source.deterministic
    plan = toy_scorer.uniform_plan("int8")
    assert source.predicted_ms(dict(plan.layers)) is None
    result = source.latency(plan)  # measured, as the fallback says
    assert result.repeats >= context.min_repeats and 0 < result.median_ms < 1000


def test_a_table_row_measured_at_another_precision_is_not_reused_for_it(
    toy_scorer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from quide_search.latency.settings import read_table_file

    layers = {n: {"float": 1.0, "int8": 0.5} for n in toy_scorer.target.layers}
    # Made where fc1 could not run int8: its int8 row holds the time of another precision.
    context = {"device": "cpu", "excluded": {"fc1": ["int8"]}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(LatencyTable(3.0, layers, context).to_dict()))
    names = list(toy_scorer.target.layers)
    with pytest.raises(ConfigError, match="must have measured fc1 under int8"):
        read_table_file(str(path), names, ("int8",))
    # Where fc1 cannot run int8 either, the row is never predicted from: the file serves.
    assert read_table_file(str(path), names, ("int8",), excluded={"fc1": ("int8",)}).layers
