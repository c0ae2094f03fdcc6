"""Property tests end to end: evaluate and export give a result or one QuideError, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quide_search.config import RunConfig
from quide_search.errors import QuideError
from quide_search.output.export import export_plan
from quide_search.output.replay import evaluate_plan
from quide_search.study import run_search

MODEL = "toytask:make"
_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, dict]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = RunConfig(model=MODEL, out_dir=str(tmp), device="cpu", trials=4,
                       latency="model:cpu-epyc-2c")  # fmt: skip
    run_search(config, progress=False)
    out = export_plan(study=config.study_name, storage=config.storage_url, out=tmp / "p.json")
    return config, json.loads(out.read_text())


_values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.text(max_size=6)
    | st.floats(allow_nan=True)
)
_paths = st.sampled_from([
    ("layers",), ("layers", "conv"), ("baseline",), ("baseline", "P"), ("metrics", "P"),
    ("protocol",), ("protocol", "task", "layers"), ("protocol", "evaluation", "threads"),
    ("protocol", "latency", "batch_size"), ("schema_version",), ("backend",), ("dataset",),
])  # fmt: skip


@given(path=_paths, value=_values)
@example(path=("protocol", "evaluation", "threads"), value=0)  # found by CI: torch refused 0
@example(path=("protocol", "latency", "batch_size"), value=-1)
@example(path=("protocol", "latency", "batch_size"), value=3.0e6)  # found by CI: out of memory
@example(path=("protocol", "evaluation", "threads"), value=1.0e6)
@_SETTINGS
def test_evaluate_of_a_mutated_plan_measures_or_says_why(
    exported: tuple[RunConfig, dict], tmp_path: Path, path: tuple[str, ...], value: object
) -> None:
    _, record = exported
    data = json.loads(json.dumps(record))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    plan = tmp_path / "mutated.json"
    plan.write_text(json.dumps(data))
    try:
        replay = evaluate_plan(plan, device="cpu", model=MODEL)
    except QuideError:
        return
    assert 0.0 <= replay.measured.P <= 1.0


@given(
    trial=st.sampled_from(["best", "pareto", "0", "2", "99", "-1", "x", ""]),
    fmt=st.sampled_from(["json", "yaml", "xml"]),
    name=st.sampled_from(["a.json", "sub/b.yaml", "", "."]),
)
@_SETTINGS
def test_export_writes_a_plan_or_says_why(
    exported: tuple[RunConfig, dict], tmp_path: Path, trial: str, fmt: str, name: str
) -> None:
    config, _ = exported
    out = tmp_path / "out" / name
    try:
        path = export_plan(study=config.study_name, storage=config.storage_url, trial=trial,
                           out=out, fmt=fmt)  # fmt: skip
    except QuideError:
        return
    assert path.exists()
