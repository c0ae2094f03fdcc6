from __future__ import annotations

import json
from pathlib import Path

import pytest

from quide_search.errors import ConfigError, PlanError
from quide_search.plan import BitPlan, normalize_qtype, parse_bits, read_plan_file


def test_normalize_accepts_aliases_and_quanto_names() -> None:
    assert normalize_qtype("8") == "qint8"
    assert normalize_qtype("INT4") == "qint4"
    assert normalize_qtype("fp") == "none"
    assert normalize_qtype("qfloat8_e4m3fn") == "qfloat8"
    from optimum.quanto import qint4

    assert normalize_qtype(qint4) == "qint4"


def test_normalize_unknown_lists_allowed_and_suggests() -> None:
    with pytest.raises(
        PlanError,
        match=r"must be one of qint8, qint4, qint2, qfloat8, none.*"
        r"Did you mean: .*'qint4'",
    ):
        normalize_qtype("qint5")


def test_parse_bits() -> None:
    assert parse_bits("8,4,2") == ("qint8", "qint4", "qint2")
    assert parse_bits("fp32, 8 ,f8") == ("none", "qint8", "qfloat8")
    with pytest.raises(ConfigError, match=r"--bits must be a subset.*unknown: 3"):
        parse_bits("3,8")
    with pytest.raises(ConfigError, match="must not repeat"):
        parse_bits("8,int8")
    with pytest.raises(ConfigError, match="at least one"):
        parse_bits(" , ")


def test_plan_round_trip_and_quantization_map() -> None:
    plan = BitPlan(model="m", dataset="d", layers={"b": "4", "a": "none", "c": "qfloat8"})
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["quantization_map"] == {
        "b": {"weights": "qint4", "activations": "none"},
        "c": {"weights": "qfloat8", "activations": "none"},
    }
    assert BitPlan.from_dict(data) == plan
    # The map alone is enough: absent layers are float.
    del data["layers"]
    assert BitPlan.from_dict(data).quantized_layers() == {"b": "qint4", "c": "qfloat8"}


def test_a_mixed_plan_deals_the_qtypes_out_in_model_order() -> None:
    layers = ["conv1", "conv2", "fc1", "fc2", "head"]
    plan = BitPlan.mixed(model="m", dataset="d", layers=layers, qtypes=("qint8", "none", "4"))
    assert dict(plan.layers) == {
        "conv1": "qint8", "conv2": "none", "fc1": "qint4", "fc2": "qint8", "head": "none"
    }  # fmt: skip
    with pytest.raises(ConfigError, match="at least one qtype"):
        BitPlan.mixed(model="m", dataset="d", layers=layers, qtypes=())


def test_average_bits_weights_by_element_count() -> None:
    plan = BitPlan(model="m", dataset="d", layers={"a": "qint4", "b": "none"})
    assert plan.average_bits({"a": 300, "b": 100}) == pytest.approx((300 * 4 + 100 * 32) / 400)


def test_validate_layers_suggests_close_names() -> None:
    plan = BitPlan(model="simplecnn", dataset="d", layers={"fc3": "qint8"})
    with pytest.raises(
        PlanError, match=r"'fc3' is not a quantizable layer.*Did you mean: 'fc2', 'fc1'"
    ):
        plan.validate_layers(["conv1", "conv2", "fc1", "fc2"])


def _valid() -> dict:
    return BitPlan(model="m", dataset="d", layers={"fc1": "qint8"}).to_dict()


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(schema_version=2), "schema_version must be 1"),
        (lambda d: d.pop("schema_version"), "schema_version must be 1"),
        (lambda d: d.update(model=""), "'model' must be a non-empty string"),
        (lambda d: d.pop("quantization_map"), "'quantization_map' must be an object"),
        (
            lambda d: d["quantization_map"].update(
                fc1={"weights": "qint5", "activations": "none"}
            ),
            "must be one of",
        ),
        (lambda d: d["quantization_map"].update(fc1="qint8"), "with a 'weights' key"),
        (
            lambda d: d["quantization_map"]["fc1"].update(activations="qint8"),
            "activations'] must be 'none'",
        ),
        (lambda d: d["layers"].update(fc1="qint4"), "disagree"),
    ],
    ids=["version", "no-version", "model", "no-map", "qtype", "entry", "activations", "disagree"],
)
def test_from_dict_rejects(mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    data = _valid()
    mutate(data)
    with pytest.raises(PlanError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        BitPlan.from_dict(data)


def test_read_plan_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        read_plan_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match="is not valid JSON"):
        read_plan_file(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(PlanError, match="must be a JSON object"):
        read_plan_file(arr)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({**_valid(), "metrics": {"P": 0.5}}), encoding="utf-8")
    plan, record = read_plan_file(good)
    assert plan.quantized_layers() == {"fc1": "qint8"} and record["metrics"]["P"] == 0.5
