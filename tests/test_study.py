from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from _procs import stored_digest

from quide_search.config import RunConfig
from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.plan import BitPlan
from quide_search.quantize import apply_plan, model_bytes
from quide_search.search import GATE_CONSTRAINT
from quide_search.study import load_study, run_search, summarize

ATTRS = {"C", "P", "T_ms", "I", "I_prime", "gate_passed", "avg_weight_bits", "stored_bytes"}


def _config(tmp_path: Path, **kw: object) -> RunConfig:
    return RunConfig(out_dir=str(tmp_path), device="cpu", **kw)  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return stored_digest(path)


@pytest.fixture(scope="module")
def ten_trials(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, object]:
    tmp = tmp_path_factory.mktemp("study")
    config = _config(tmp, trials=10, early_stop="off")  # every trial scored in full
    return config, run_search(config, progress=False)


def test_ten_trial_study_records_every_metric(ten_trials, digits_task) -> None:  # type: ignore[no-untyped-def]
    config, summary = ten_trials
    assert summary.completed == 10 and summary.failed == 0
    study = load_study(study=config.study_name, storage=config.storage_url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 10
    for t in trials:
        assert set(t.user_attrs) >= ATTRS
        assert t.value == t.user_attrs["I_prime"]
        expected = t.user_attrs["I"] if t.user_attrs["gate_passed"] else 0.0
        assert t.user_attrs["I_prime"] == expected
        assert GATE_CONSTRAINT in t.constraints
        assert (t.constraints[GATE_CONSTRAINT] <= 0) == t.user_attrs["gate_passed"]
        assert t.user_attrs["unit"] == "ms"
    baseline = study.user_attrs["baseline"]
    assert baseline["C"] == 1.0 and baseline["P"] >= 0.97
    assert study.user_attrs["protocol"]["gate"] == {"max_drop": 0.01, "min_accuracy": None}


def test_uniform_plans_come_first_with_real_byte_counts(ten_trials, digits_task) -> None:  # type: ignore[no-untyped-def]
    config, _ = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    first = sorted(study.trials, key=lambda t: t.number)[:3]
    assert [set(t.params.values()) for t in first] == [{"qint8"}, {"qint4"}, {"qint2"}]
    float_bytes = model_bytes(digits_task.model)
    for t in first:
        plan = BitPlan(model="simplecnn", dataset="digits", layers=t.params)
        stored = model_bytes(apply_plan(digits_task.model, plan))
        assert t.user_attrs["stored_bytes"] == stored
        assert t.user_attrs["C"] == pytest.approx(float_bytes / stored)


def test_pareto_json_written_next_to_study(ten_trials) -> None:  # type: ignore[no-untyped-def]
    config, summary = ten_trials
    data = json.loads(summary.pareto_path.read_text())
    assert summary.pareto_path.parent == Path(config.out_dir)
    assert data["objectives"] == {"C": "max", "P": "max", "T_ms": "min"}
    front = data["front"]
    assert front and all({"trial", "plan", "C", "P", "T_ms"} <= set(p) for p in front)
    for p in front:  # no front point is dominated by any completed trial
        for q in front:
            assert not (
                q["C"] >= p["C"]
                and q["P"] >= p["P"]
                and q["T_ms"] <= p["T_ms"]
                and (q["C"], q["P"], q["T_ms"]) != (p["C"], p["P"], p["T_ms"])
            )


def test_resume_does_nothing_more_then_extends(tmp_path: Path) -> None:
    config = _config(tmp_path, trials=4, early_stop="off")
    run_search(config, progress=False)
    db = tmp_path / "simplecnn-digits.db"
    study = load_study(study=config.study_name, storage=config.storage_url)
    before = {t.number: (t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"}
    summary = run_search(config, progress=False)
    assert summary.completed == 4
    trials = load_study(study=config.study_name, storage=config.storage_url).trials
    # Nothing more ran; the warm-start plans not reached yet stay queued.
    assert [t.state.name for t in trials].count("COMPLETE") == 4
    assert {t.state.name for t in trials} == {"COMPLETE", "WAITING"}
    run_search(_config(tmp_path, trials=7, early_stop="off"), progress=False)
    after = load_study(study=config.study_name, storage=config.storage_url).trials
    assert len([t for t in after if t.state == optuna.trial.TrialState.COMPLETE]) == 7
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before
    # A resume with a different protocol stops before writing anything.
    digest = _sha(db)
    with pytest.raises(ConfigError, match="same bits"):
        run_search(_config(tmp_path, trials=9, bits=("qint8", "qint4")), progress=False)
    assert _sha(db) == digest


def test_no_feasible_trial_reports_best_so_far(tmp_path: Path) -> None:
    summary = run_search(
        _config(tmp_path, trials=3, bits=("qint2",), max_accuracy_drop=0.0, min_accuracy=None),
        progress=False,
    )
    assert summary.best is not None and summary.best["feasible"] is False


def test_failed_trials_are_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quide_search.scorer import Scorer

    real = Scorer.measure

    def flaky(self: Scorer, plan: BitPlan, **kw):  # type: ignore[no-untyped-def]
        if plan.layers.get("fc2") == "qint2":
            raise TrialEvaluationError("model output contains NaN or inf")
        return real(self, plan, **kw)

    monkeypatch.setattr(Scorer, "measure", flaky)
    summary = run_search(_config(tmp_path, trials=5), progress=False)
    assert (
        summary.completed + summary.pruned == 5 and summary.failed >= 1
    )  # the uniform int2 plan fails
    study = load_study(
        study="simplecnn-digits", storage=f"sqlite:///{tmp_path}/simplecnn-digits.db"
    )
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"] == "model output contains NaN or inf"


def test_thread_count_is_fixed_and_recorded(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        run_search(_config(tmp_path, trials=3, threads=1), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    study = load_study(
        study="simplecnn-digits", storage=f"sqlite:///{tmp_path}/simplecnn-digits.db"
    )
    latency = study.user_attrs["protocol"]["latency"]
    assert latency["threads"] == 1 and latency["batch_size"] == 1 and latency["unit"] == "ms"


def test_protocol_records_the_latency_source_and_requested_weights(
    tmp_path: Path, digits_task
) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path, trials=1, latency="model:cpu-epyc-2c")
    run_search(config, progress=False)
    protocol = load_study(study=config.study_name, storage=config.storage_url).user_attrs[
        "protocol"
    ]
    assert protocol["latency_source"] == "model:cpu-epyc-2c"
    assert protocol["weights"] is None  # the trained default was asked for
    assert protocol["weights_path"] == str(digits_task.weights_path)


def _copy_with(study: optuna.Study, **attrs: object) -> optuna.Study:
    """An in-memory copy of ``study`` whose trials carry ``attrs`` over their own."""
    copy = optuna.create_study(directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    for t in study.trials:
        copy.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                params=t.params,
                distributions=t.distributions,
                values=t.values,
                user_attrs={**t.user_attrs, **attrs},
                system_attrs=t.system_attrs,
                intermediate_values=t.intermediate_values,
            )
        )
    return copy


def test_latency_that_never_settled_is_said(ten_trials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, _ = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    timed = [t for t in study.trials if t.user_attrs.get("latency_repeats")]
    noisy = summarize(
        _copy_with(study, latency_spread=0.09, latency_repeats=200),
        storage_url=config.storage_url,
        out_dir=tmp_path,
        persist=False,
    )
    assert noisy.latency_warning is not None
    assert f"T did not settle in {len(timed)} of {len(timed)} measured trials" in (
        noisy.latency_warning
    )
    assert "(median spread 9%)" in noisy.latency_warning
    # T was paired with the study's choices dealt out over the layers: the 200-sample cap
    # counts both models' samples.
    stored = study.user_attrs["protocol"]
    mix = "/".join(stored["bits"])
    assert f"after 100 pairs of samples with a {mix} mix" in noisy.latency_warning
    advice = "time T on one thread (--latency-threads 1; T is then one-thread latency)"
    for threads, method, advised in (
        (1, "wall_clock", False),
        (2, "wall_clock", True),
        (2, "cuda_events", False),
    ):
        copy = _copy_with(study, latency_spread=0.09, latency_repeats=200)
        latency = {**stored["latency"], "threads": threads, "method": method}
        copy.set_user_attr("protocol", {**stored, "latency": latency})
        said = summarize(copy, storage_url=config.storage_url, out_dir=tmp_path, persist=False)
        assert (advice in (said.latency_warning or "")) is advised
    plain = _copy_with(study, latency_spread=0.09, latency_repeats=200)
    protocol = {
        **study.user_attrs["protocol"],
        "latency_reference_ms": None,
        "latency_sample_ms": None,
    }
    plain.set_user_attr("protocol", protocol)
    unpaired = summarize(plain, storage_url=config.storage_url, out_dir=tmp_path, persist=False)
    assert "after 200 passes the middle half" in (unpaired.latency_warning or "")
    quiet = summarize(
        _copy_with(study, latency_spread=0.01, latency_repeats=20),
        storage_url=config.storage_url,
        out_dir=tmp_path,
        persist=False,
    )
    assert "did not settle" not in (quiet.latency_warning or "")
