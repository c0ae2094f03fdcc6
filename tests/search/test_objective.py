"""Search features at the study level: warm starts, early stopping, constraints, objectives,
samplers and the latency table."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fakes import FakeLatency

from quide_search.cli import main
from quide_search.config import RunConfig
from quide_search.latency import LatencyTable
from quide_search.measure.scorer import Scorer
from quide_search.plan import BitPlan
from quide_search.protocol import Protocol
from quide_search.study import load_study, run_search

_STATES = optuna.trial.TrialState


def _config(tmp_path: Path, **kw: object) -> RunConfig:
    # The first chunk is pinned (fitted, it follows the machine's call cost), so that two
    # studies here stop the same failing plans early and repeat each other exactly. T is
    # the analytic estimate unless a test is about T: deterministic, and no timing.
    kw.setdefault("eval_chunk", 32)
    kw.setdefault("latency", "model:cpu-epyc-2c")
    kw.setdefault("confirm_top", 0)
    return RunConfig(out_dir=str(tmp_path), device="cpu", **kw)  # type: ignore[arg-type]


def _study(config: RunConfig) -> optuna.Study:
    return load_study(study=config.study_name, storage=config.storage_url)


@pytest.fixture(scope="module", autouse=True)
def _tables_always_used() -> Iterator[None]:
    """The studies here use their table, and every prediction > 0, whatever this machine's
    noise: they test how a search uses one (tests/latency/test_table.py tests the bounds)."""
    from quide_search.latency import table_check

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table_check, "TABLE_ERROR_BOUND", math.inf)
        patch.setattr(table_check, "RANGE_FACTOR", math.inf)  # and predict any T > 0
        yield


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One measured latency table for SimpleCNN/digits, shared so values are deterministic."""
    tmp = tmp_path_factory.mktemp("table")
    config = _config(tmp, trials=0, latency="table", bits=("float", "int8", "int4", "int2"),
                     latency_sample_ms=1.0)  # fmt: skip
    run_search(config, progress=False)
    path = tmp / "table.json"
    show = ["show", "--study", config.study_name, "--storage", config.storage_url]
    assert main([*show, "--latency-table", str(path)]) == 0
    saved = json.loads(path.read_text())
    assert saved == {"generator": "quide-search", **_study(config).user_attrs["latency_table"]}
    return path


@pytest.fixture(scope="module")
def engine_study(tmp_path_factory: pytest.TempPathFactory, table_path: Path) -> RunConfig:
    config = _config(
        tmp_path_factory.mktemp("engine"),
        trials=16,
        latency=f"table:{table_path}",
        bits=("float", "int8", "int4", "int2"),
    )
    run_search(config, progress=False)
    return config


def test_warm_starts_follow_the_uniform_plans(engine_study: RunConfig) -> None:
    study = _study(engine_study)
    trials = sorted(study.trials, key=lambda t: t.number)
    kinds = [t.user_attrs.get("warm_start") for t in trials]
    assert kinds[:3] == ["uniform"] * 3
    greedy = [t for t in trials if t.user_attrs.get("warm_start") == "greedy"]
    assert greedy and kinds.index("greedy") == 3
    for t in greedy:
        assert len(set(t.params.values())) > 1  # mixed plans, not uniform ones again
    # Once the greedy plans are scored, the path around the gate crossing was queued too.
    assert study.user_attrs["path_refined"] is True
    path = [tuple(p) for p in study.user_attrs["greedy_path"]]
    for t in trials:
        if t.user_attrs.get("warm_start") in ("greedy", "path"):
            assert tuple(t.params.values()) in path
    stored = study.user_attrs["sensitivity"]
    assert set(stored["groups"]) == {"conv1", "conv2", "fc1", "fc2"}
    # The first 128 of the 200 calibration samples (SENSITIVITY_SAMPLES).
    assert stored["samples"] == 128 and stored["split"] == "calib"


def test_resume_reuses_the_sensitivity_and_queues_nothing_again(
    engine_study: RunConfig,
) -> None:
    before = _study(engine_study).user_attrs["sensitivity"]
    queued = sum(t.user_attrs.get("warm_start") is not None for t in _study(engine_study).trials)
    from dataclasses import replace

    run_search(replace(engine_study, trials=18), progress=False)
    study = _study(engine_study)
    assert study.user_attrs["sensitivity"] == before  # same seconds too: not measured again
    assert sum(t.user_attrs.get("warm_start") is not None for t in study.trials) == queued
    assert len(study.get_trials(states=(_STATES.COMPLETE, _STATES.PRUNED))) == 18


def test_pruned_trials_really_fail_the_gate(engine_study: RunConfig, digits_task) -> None:  # type: ignore[no-untyped-def]
    study = _study(engine_study)
    pruned = study.get_trials(states=(_STATES.PRUNED,))
    assert pruned, "expected some plans to be stopped early"
    protocol = Protocol.from_dict(study.user_attrs["protocol"], study="s")
    scorer = Scorer.build(digits_task, protocol, device=_cpu(), latency=FakeLatency())
    threshold = study.user_attrs["baseline"]["P"] - 0.01
    for t in pruned:
        attrs = t.user_attrs
        assert attrs["samples_spent"] < attrs["eval_samples"] == 500
        assert attrs["P_reachable"] < threshold and attrs["gate_passed"] is False
        assert t.constraints["accuracy_gate"] > 0
        assert t.intermediate_values[attrs["samples_spent"]] == attrs["P_reachable"]
        plan = BitPlan(model="simplecnn", dataset="digits", layers=dict(t.params))
        full = scorer.measure(plan).P  # scored in full: below the gate, as the bound proved
        assert full <= attrs["P_reachable"] and full < threshold


def test_latency_table_predicts_every_trial(engine_study: RunConfig, table_path: Path) -> None:
    study = _study(engine_study)
    table = LatencyTable.from_dict(json.loads(table_path.read_text()))
    assert study.user_attrs["latency_table"] == table.to_dict()
    assert study.user_attrs["protocol"]["latency"]["source"] == "table"
    check = study.user_attrs["latency_table_check"]
    mixed = [f"mixed {i}" for i in range(1, 5)]
    assert [c["plan"] for c in check] == ["float", "int8", "int4", "int2", *mixed]
    for c in check:
        assert c["measured_ms"] > 0
        assert c["error"] == pytest.approx(c["predicted_ms"] / c["measured_ms"] - 1)
    for t in study.get_trials(states=(_STATES.COMPLETE,)):
        assert t.user_attrs["latency_source"] == "table"
        assert t.user_attrs["T_ms"] == table.predict(t.params)
    assert study.user_attrs["baseline"]["T_ms"] == table.base_ms


def test_same_seed_and_table_repeat_the_search_exactly(
    tmp_path: Path, table_path: Path, engine_study: RunConfig
) -> None:
    config = _config(
        tmp_path,
        trials=16,
        latency=f"table:{table_path}",
        bits=("float", "int8", "int4", "int2"),
    )
    run_search(config, progress=False)

    def trace(study: optuna.Study) -> list[tuple[object, ...]]:
        first = sorted(study.trials, key=lambda t: t.number)[:16]
        return [(t.state, tuple(t.params.values()), t.user_attrs.get("I_prime")) for t in first]

    assert trace(_study(config)) == trace(_study(engine_study))


def test_size_limit_makes_big_plans_infeasible(tmp_path: Path) -> None:
    config = _config(tmp_path, trials=12, max_size_mb=0.03)
    summary = run_search(config, progress=False)
    study = _study(config)
    for t in study.get_trials(states=(_STATES.COMPLETE,)):
        over = t.user_attrs["stored_bytes"] / 2**20 - 0.03
        assert t.constraints["size_mb"] == pytest.approx(over)
        assert t.user_attrs["feasible"] == (over <= 0 and t.user_attrs["gate_passed"])
    assert summary.best is not None and summary.best.feasible
    assert summary.best.row.stored_bytes <= 0.03 * 2**20
    assert summary.best.plan != dict.fromkeys(summary.best.plan, "int8")


def test_no_feasible_plan_is_said_and_best_so_far_kept(tmp_path: Path) -> None:
    from quide_search.output.summary_text import format_summary

    config = _config(tmp_path, trials=5, max_latency_ms=1e-6)
    summary = run_search(config, progress=False)
    assert summary.best is not None and not summary.best.feasible
    assert "no finalist passes the gate on both the search split and the held-out" in (
        format_summary(summary)
    )


def test_pareto_objective_optimises_three_values(tmp_path: Path) -> None:
    config = _config(tmp_path, trials=12, objective="pareto", sampler="nsga2")
    summary = run_search(config, progress=False)
    study = _study(config)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert study.metric_names == ["C", "P", "T_ms"]
    for t in study.get_trials(states=(_STATES.COMPLETE,)):
        assert t.values == [t.user_attrs["C"], t.user_attrs["P"], t.user_attrs["T_ms"]]
    assert summary.best is not None and summary.pareto
    front = {p.trial for p in summary.pareto}
    assert front <= {t.number for t in study.get_trials(states=(_STATES.COMPLETE,))}


@pytest.mark.parametrize("sampler", ["random", "gp", "nsga2"])
def test_each_sampler_runs_seeded(tmp_path: Path, sampler: str) -> None:
    def params(seed_dir: Path) -> list[tuple[str, ...]]:
        config = _config(seed_dir, trials=12, sampler=sampler, warm_start=False, early_stop="off")
        run_search(config, progress=False)
        trials = sorted(_study(config).trials, key=lambda t: t.number)
        return [tuple(t.params.values()) for t in trials]

    first, second = params(tmp_path / "a"), params(tmp_path / "b")
    assert first == second and len(first) == 12
    assert len(set(first)) > 3  # it explores, not only the queued uniform plans


def _cpu():  # type: ignore[no-untyped-def]
    import torch

    return torch.device("cpu")
