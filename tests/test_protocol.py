"""The protocol: built in one place, stored as JSON, checked on resume in one place."""

from __future__ import annotations

import json

import pytest
from conftest import protocol_for

from quide_search.errors import ConfigError, StorageError
from quide_search.protocol import PROTOCOL_SCHEMA_VERSION, Protocol


def test_the_protocol_describes_the_run_as_json(toy_task) -> None:  # type: ignore[no-untyped-def]
    protocol = protocol_for(toy_task, bits=("int8", "int4"), seed=3, latency="measured")
    data = protocol.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Protocol.from_dict(data, study="s") == protocol
    assert data["schema_version"] == PROTOCOL_SCHEMA_VERSION == 2
    assert (data["task"]["model"], data["task"]["dataset"]) == ("toytask:make", "toy")
    assert data["task"]["layers"] == ["conv", "fc1", "fc2"]
    assert len(data["task"]["fingerprint"]) == 64
    assert (data["search"]["precisions"], data["seed"], data["backend"]) == (
        ["int8", "int4"], 3, "quanto",
    )  # fmt: skip
    assert data["latency"]["source"] == "measured" and data["latency"]["method"] == "wall_clock"
    assert data["evaluation"]["first_chunk"] is None  # fitted by the study's creator


def test_auto_latency_is_a_table_on_a_cpu(toy_task) -> None:  # type: ignore[no-untyped-def]
    assert protocol_for(toy_task).latency.source == "table"
    estimate = protocol_for(toy_task, latency="model:cpu-epyc-2c").latency
    assert (estimate.source, estimate.method, estimate.sample_ms) == (
        "model:cpu-epyc-2c", "analytic", None,
    )  # fmt: skip


def test_a_resume_names_the_first_field_that_differs_and_its_flag(toy_task) -> None:  # type: ignore[no-untyped-def]
    stored = protocol_for(toy_task, bits=("int8", "int4"))
    stored.check_resume(protocol_for(toy_task, bits=("int8", "int4"), seed=9), study="s")
    stored.check_resume(stored.with_chunking(32, 2), study="s")  # the creator's, not a flag
    differs = (
        r"precisions \(--bits, --activations\) .* was \['int8', 'int4'\] and is now \['int8'\]"
    )
    with pytest.raises(ConfigError, match=differs):
        stored.check_resume(protocol_for(toy_task, bits=("int8",)), study="s")
    with pytest.raises(ConfigError, match=r"same evaluation.threads \(--threads\)"):
        other = protocol_for(toy_task, bits=("int8", "int4"), threads=2, force_threads=True)
        stored.check_resume(other.model_copy(update={"evaluation": other.evaluation.model_copy(
            update={"threads": 7})}), study="s")  # fmt: skip
    # A study made before held-out test splits: its splits and float model differ from today's.
    splits = {k: v for k, v in stored.task.splits.items() if k != "test"}
    old = stored.model_copy(update={"task": stored.task.model_copy(update={"splits": splits})})
    with pytest.raises(ConfigError, match=r"made by a version of quide-search before test "
                       r"splits .* Start a new study with --study NAME"):  # fmt: skip
        old.check_resume(stored, study="s")


def test_another_model_or_other_weights_are_refused(toy_task) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    import torch

    stored = protocol_for(toy_task)
    other = toy_task.model.__class__()
    with torch.no_grad():
        other.load_state_dict(toy_task.model.state_dict())
        other.fc2.bias.add_(1e-3)
    changed = dataclasses.replace(toy_task, model=other)
    with pytest.raises(ConfigError, match=r"same task.fingerprint \(--model, --weights\)"):
        stored.check_resume(protocol_for(changed), study="s")


def test_a_protocol_of_an_earlier_version_or_not_a_protocol_is_refused(toy_task) -> None:  # type: ignore[no-untyped-def]
    data = protocol_for(toy_task).to_dict()
    with pytest.raises(StorageError, match="schema 1: an earlier version of quide-search made"):
        Protocol.from_dict({**data, "schema_version": 1}, study="old")
    with pytest.raises(StorageError, match="malformed protocol: task.layers"):
        Protocol.from_dict({**data, "task": {**data["task"], "layers": 3}}, study="x")


def test_a_layer_that_cannot_run_a_precision_takes_its_search_group_with_it() -> None:
    from quide_search.protocol import Search

    layers = ["m.layers.0.a", "m.layers.0.b", "m.layers.1.a"]
    refused = {"m.layers.0.b": {"int4": "its shape does not fit"}}
    by_layer = Search(precisions=("int8", "int4"), granularity="layer", objective="iprime",
                      excluded=refused)  # fmt: skip
    assert by_layer.uniform(layers, "int4") == {
        "m.layers.0.a": "int4", "m.layers.0.b": "int8", "m.layers.1.a": "int4"
    }  # fmt: skip
    # One choice per block: 0.a shares 0.b's, so the study's uniform int4 plan (its trial
    # parameters) and every per-layer copy of it (sweep, latency table) keep both at int8.
    by_block = by_layer.model_copy(update={"granularity": "block"})
    assert by_block.uniform(layers, "int4") == {
        "m.layers.0.a": "int8", "m.layers.0.b": "int8", "m.layers.1.a": "int4"
    }  # fmt: skip
    assert set(by_block.grouped_excluded(layers)) == {"m.layers.0.a", "m.layers.0.b"}
    line = by_block.exclusion_line()
    assert line is not None and "the layers grouped with them share it" in line
    by_block.check_groups(layers)
    only_int4 = by_block.model_copy(update={"precisions": ("int4",)})
    with pytest.raises(ConfigError, match="the layers of 'm.layers.0' share none of int4"):
        only_int4.check_groups(layers)
