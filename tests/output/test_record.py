"""Plan files: validated as one document; a malformed field is one PlanError naming it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quide_search.errors import PlanError
from quide_search.output.record import load_plan
from quide_search.plan import BitPlan


def _valid() -> dict:
    metrics = {"C": 3.5, "P": 0.9, "T_ms": 1.0, "I": 3.15, "I_prime": 3.15, "gate_passed": True}
    return {**BitPlan(model="m", dataset="d", layers={"fc1": "int8"}).to_dict(),
            "metrics": metrics, "baseline": dict(metrics)}  # fmt: skip


def _write(tmp_path: Path, data: object, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_plan_reads_json_and_yaml(tmp_path: Path) -> None:
    import yaml

    plan, record = load_plan(_write(tmp_path, _valid()))
    assert plan.quantized_layers() == {"fc1": "int8"} and record["metrics"]["P"] == 0.9
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(_valid()), encoding="utf-8")
    assert load_plan(tmp_path / "plan.yaml")[0] == plan


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(baseline="0.97"), "field 'baseline' is wrong"),
        (lambda d: d["metrics"].update(P="high"), "field 'metrics.P' is wrong"),
        (lambda d: d["metrics"].pop("gate_passed"), "field 'metrics.gate_passed' is wrong"),
        (lambda d: d.update(source={"study": "s", "trial": "x"}), "field 'source.trial'"),
        (lambda d: d.update(surprise=1), "field 'surprise' is wrong: Extra inputs"),
        (lambda d: d.update(protocol=[1]), "field 'protocol' is wrong"),
    ],
    ids=["baseline-string", "metric-string", "metric-missing", "source", "extra", "protocol"],
)
def test_a_malformed_document_is_one_plan_error(tmp_path: Path, mutate, fragment: str) -> None:  # type: ignore[no-untyped-def]
    data = _valid()
    mutate(data)
    with pytest.raises(PlanError, match=fragment):
        load_plan(_write(tmp_path, data))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match="is not valid JSON"):
        load_plan(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="must be a JSON object"):
        load_plan(_write(tmp_path, [1, 2], "arr.json"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_valid_like = st.fixed_dictionaries(
    {
        "schema_version": st.sampled_from([2, 2, 2, 1, "2", None]),
        "backend": st.sampled_from(["quanto", "", None]),
        "model": st.sampled_from(["simplecnn", "", 3]),
        "dataset": st.sampled_from(["digits", None]),
        "layers": st.dictionaries(
            st.text(min_size=1, max_size=6),
            st.sampled_from(["int8", "4", "fp", "qint5", "", "x"]) | _json,
            max_size=4,
        )
        | _json,
        "metrics": _json,
        "baseline": _json,
    }
)


def _check(tmp_path: Path, data: object) -> None:
    try:
        plan, _ = load_plan(_write(tmp_path, data))
    except PlanError:
        return
    assert BitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@given(data=_json)
@_SETTINGS
def test_random_json_gives_a_plan_or_a_plan_error(tmp_path: Path, data: object) -> None:
    _check(tmp_path, data)


@given(data=_valid_like)
@_SETTINGS
def test_mutated_plans_give_a_plan_or_a_plan_error(tmp_path: Path, data: dict) -> None:
    _check(tmp_path, data)


@given(raw=st.binary(max_size=64))
@_SETTINGS
def test_random_bytes_give_a_plan_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    with contextlib.suppress(PlanError):
        load_plan(path)
