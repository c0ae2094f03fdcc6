"""Plans: one vocabulary of precisions, normalised once; schema 2 round trips."""

from __future__ import annotations

import json

import pytest

from quide_search.errors import ConfigError, PlanError
from quide_search.plan import (
    PRECISIONS,
    BitPlan,
    activation_precision,
    normalize_precision,
    parse_activations,
    parse_bits,
    weight_bits,
    weight_precision,
    with_activations,
)


def test_every_spelling_normalises_to_one_name() -> None:
    assert [normalize_precision(v) for v in ("8", "INT4", "qint2", "f8", "qfloat8_e4m3fn")] == [
        "int8", "int4", "int2", "fp8", "fp8",
    ]  # fmt: skip
    assert {normalize_precision(v) for v in ("fp", "fp32", "float", "none")} == {"float"}
    from optimum.quanto import qint4

    assert normalize_precision(qint4) == "int4"  # a backend's own object, by its name
    assert dict(PRECISIONS) == {
        "int8": 8, "int4": 4, "int2": 2, "fp8": 8, "w8a8": 8, "w4a8": 4, "w2a8": 2, "wf8a8": 8,
        "w8af8": 8, "w4af8": 4, "w2af8": 2, "wf8af8": 8, "float": 0,
    }  # fmt: skip
    parts = [(weight_precision(p), activation_precision(p)) for p in ("w4a8", "wf8af8", "int4")]
    assert parts == [("int4", "int8"), ("fp8", "fp8"), ("int4", None)]
    assert normalize_precision("W8A8") == "w8a8"
    assert weight_bits("float") == 32 and weight_bits("float", float_bits=16) == 16


def test_an_unknown_precision_lists_the_names_and_suggests() -> None:
    expected = (
        r"must be one of int8 \(8\), .*float \(fp\), or weights and activations .* but got "
        r"'int5'\. Did you mean: .*'int4'"
    )
    with pytest.raises(PlanError, match=expected):
        normalize_precision("int5")


def test_activations_pair_with_each_weight_precision() -> None:
    assert parse_activations("none, INT8,f8") == ("none", "int8", "fp8")
    assert with_activations(("float", "int8", "int4", "w2a8"), ("none", "int8")) == (
        "float", "int8", "w8a8", "int4", "w4a8", "w2a8",
    )  # fmt: skip
    assert with_activations(("int8", "fp8"), ("fp8",)) == ("w8af8", "wf8af8")
    for bad, why in (("", "must list"), ("int4", "must list"), ("int8,8", "must not repeat")):
        with pytest.raises(ConfigError, match=f"--activations {why}"):
            parse_activations(bad)


def test_parse_bits() -> None:
    assert parse_bits("8,4,2") == ("int8", "int4", "int2")
    assert parse_bits("fp32, 8 ,f8") == ("float", "int8", "fp8")
    with pytest.raises(ConfigError, match=r"--bits must list precisions among .*unknown: 3"):
        parse_bits("3,8")
    with pytest.raises(ConfigError, match="must not repeat"):
        parse_bits("8,int8")
    with pytest.raises(ConfigError, match="at least one"):
        parse_bits(" , ")


def test_plan_round_trip() -> None:
    plan = BitPlan(model="m", dataset="d", layers={"b": "4", "a": "fp", "c": "qfloat8"})
    data = json.loads(json.dumps(plan.to_dict()))
    assert data == {"schema_version": 2, "backend": "quanto", "model": "m", "dataset": "d",
                    "layers": {"a": "float", "b": "int4", "c": "fp8"}}  # fmt: skip
    assert BitPlan.from_dict(data) == plan
    assert plan.quantized_layers() == {"b": "int4", "c": "fp8"}


def test_average_bits_weights_by_element_count() -> None:
    plan = BitPlan(model="m", dataset="d", layers={"a": "int4", "b": "float"})
    assert plan.average_bits({"a": 300, "b": 100}) == pytest.approx((300 * 4 + 100 * 32) / 400)


def test_validate_layers_suggests_close_names() -> None:
    plan = BitPlan(model="simplecnn", dataset="d", layers={"fc3": "int8"})
    with pytest.raises(
        PlanError, match=r"'fc3' is not a quantizable layer.*Did you mean: 'fc2', 'fc1'"
    ):
        plan.validate_layers(["conv1", "conv2", "fc1", "fc2"])


def _valid() -> dict:
    return BitPlan(model="m", dataset="d", layers={"fc1": "int8"}).to_dict()


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(schema_version=1), "schema_version must be 2, but got 1: it was "
                                               "written by an earlier version"),
        (lambda d: d.pop("schema_version"), "schema_version must be 2, but got None"),
        (lambda d: d.update(model=""), "'model' must be a non-empty string"),
        (lambda d: d.update(backend=None), "'backend' must be a non-empty string"),
        (lambda d: d.pop("layers"), "'layers' must be an object"),
        (lambda d: d["layers"].update(fc1="int5"), "must be one of"),
    ],
    ids=["version-1", "no-version", "model", "backend", "no-layers", "precision"],
)  # fmt: skip
def test_from_dict_rejects(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    data = _valid()
    mutate(data)
    with pytest.raises(PlanError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        BitPlan.from_dict(data)


def test_layers_at_groups_the_quantized_layers_by_precision_in_plan_order() -> None:
    plan = BitPlan(model="m", dataset="d",
                   layers={"c": "int4", "a": "int8", "b": "float", "d": "int4"})  # fmt: skip
    assert plan.layers_at() == {"int8": ["a"], "int4": ["c", "d"]}
    assert list(plan.layers_at()) == ["int8", "int4"]  # the plan orders layers by name
