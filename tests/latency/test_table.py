"""The per-layer table: prediction, its file, and a table measured on the toy model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from quide_search.errors import ConfigError
from quide_search.latency import LatencyTable, TableLatency, make_source, read_table


def _table() -> LatencyTable:
    layers = {"a": {"float": 1.0, "int8": 0.5, "int4": 0.75}, "b": {"float": 2.0, "int8": 3.0}}
    return LatencyTable(base_ms=5.0, layers=layers, context={"device": "cpu"})


def test_a_plan_is_float_t_plus_each_layers_change() -> None:
    table = _table()
    assert table.predict({"a": "int8", "b": "int8"}) == 5.0 - 0.5 + 1.0
    assert table.predict({"a": "float", "b": "float"}) == 5.0
    assert LatencyTable(0.1, {"a": {"float": 1.0, "int8": 0.0}}, {}).predict({"a": "int8"}) > 0
    with pytest.raises(ConfigError, match="must hold layer 'b' under 'int4'"):
        table.predict({"b": "int4"})


def test_a_table_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table().to_dict()))
    assert read_table(path) == _table()
    with pytest.raises(ConfigError, match="must name a readable JSON file"):
        read_table(tmp_path / "missing.json")
    (tmp_path / "plan.json").write_text(json.dumps({"schema_version": 2, "model": "m"}))
    with pytest.raises(ConfigError, match="reading it failed: KeyError"):
        read_table(tmp_path / "plan.json")
    (tmp_path / "old.json").write_text(json.dumps({**_table().to_dict(), "schema_version": 1}))
    with pytest.raises(ConfigError, match="must be the JSON quide-search writes"):
        read_table(tmp_path / "old.json")


def test_a_table_measured_on_the_toy_model(toy_scorer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = toy_scorer.latency.context
    context = dataclasses.replace(base, source="table", method="wall_clock", sample_ms=0.2,
                                  device="cpu", max_repeats=40)  # fmt: skip
    source = TableLatency.measure(context, toy_scorer.target, ("int8", "int2"))
    assert set(source.table.layers) == {"conv", "fc1", "fc2"}
    assert all(set(row) == {"float", "int8", "int2"} for row in source.table.layers.values())
    assert all(ms > 0 for row in source.table.layers.values() for ms in row.values())
    plan = toy_scorer.uniform_plan("int8")
    assert source.latency(plan).median_ms == source.table.predict(plan.layers)
    assert source.predicted_ms(dict(plan.layers)) == source.latency(plan).median_ms
    # The stored table makes the same source in another process.
    again = make_source(context, toy_scorer.target, precisions=("int8",), stored=source.stored())
    assert again.latency(plan) == source.latency(plan)
    # A saved table must cover every choice of every layer.
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(source.stored()))
    from_file = dataclasses.replace(context, table_file=str(saved))
    assert make_source(from_file, toy_scorer.target, precisions=("int8",)).latency(plan) == (
        source.latency(plan)
    )
    with pytest.raises(ConfigError, match="under 'int4'"):
        make_source(from_file, toy_scorer.target, precisions=("int8", "int4"))
