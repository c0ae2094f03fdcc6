"""Property tests: the plan loader returns a valid plan or raises PlanError, nothing else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quide_search.errors import PlanError
from quide_search.plan import BitPlan, read_plan_file

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_qtypes = st.sampled_from(["qint8", "qint4", "qint2", "qfloat8", "none", "8", "qint5", "", "x"])
_valid_like = st.fixed_dictionaries(
    {
        "schema_version": st.sampled_from([1, 1, 1, 2, "1", None]),
        "model": st.sampled_from(["simplecnn", "", 3]),
        "dataset": st.sampled_from(["digits", None]),
        "quantization_map": st.dictionaries(
            st.text(min_size=1, max_size=6),
            st.fixed_dictionaries(
                {"weights": _qtypes, "activations": st.sampled_from(["none", "none", "qint8"])}
            )
            | _json,
            max_size=4,
        )
        | _json,
    }
)


def _check(data: object) -> None:
    try:
        plan = BitPlan.from_dict(data)
    except PlanError:
        return
    assert isinstance(plan, BitPlan)
    assert BitPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@given(_json)
@settings(max_examples=300, deadline=None)
def test_random_json_gives_plan_or_plan_error(data: object) -> None:
    _check(data)


@given(_valid_like)
@settings(max_examples=300, deadline=None)
def test_mutated_plans_give_plan_or_plan_error(data: dict) -> None:
    _check(data)


@given(st.binary(max_size=64))
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_file_gives_plan_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    with contextlib.suppress(PlanError):
        read_plan_file(path)
