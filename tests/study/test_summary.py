"""A study read back: its rows, the recommended plan, the front, and what must be said."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from _procs import stored_digest

from quide_search.backends import get_backend, model_bytes
from quide_search.config import RunConfig
from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.output.summary_text import format_summary
from quide_search.plan import BitPlan
from quide_search.search.objective import GATE_CONSTRAINT
from quide_search.study import load_study, run_search, summarize

ATTRS = {"C", "P", "T_ms", "I", "I_prime", "gate_passed", "avg_weight_bits", "stored_bytes"}
QUANTO = get_backend("quanto")


def _config(tmp_path: Path, **kw: object) -> RunConfig:
    kw.setdefault("latency", "model:cpu-epyc-2c")
    return RunConfig(out_dir=str(tmp_path), device="cpu", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ten_trials(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, object]:
    tmp = tmp_path_factory.mktemp("study")
    config = _config(tmp, trials=10, early_stop="off")  # every trial scored in full
    return config, run_search(config, progress=False)


def test_ten_trial_study_records_every_metric(ten_trials) -> None:  # type: ignore[no-untyped-def]
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
    assert summary.confirmation is None  # an analytic T is for another device: not re-timed


def test_uniform_plans_come_first_with_real_byte_counts(ten_trials, digits_task) -> None:  # type: ignore[no-untyped-def]
    config, _ = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    first = sorted(study.trials, key=lambda t: t.number)[:3]
    assert [set(t.params.values()) for t in first] == [{"int8"}, {"int4"}, {"int2"}]
    float_bytes = model_bytes(digits_task.model)
    for t in first:
        plan = BitPlan(model="simplecnn", dataset="digits", layers=t.params)
        stored = model_bytes(QUANTO.apply(digits_task.model, plan))
        assert t.user_attrs["stored_bytes"] == stored
        assert t.user_attrs["C"] == pytest.approx(float_bytes / stored)


def test_pareto_json_written_next_to_study(ten_trials) -> None:  # type: ignore[no-untyped-def]
    config, summary = ten_trials
    data = json.loads(summary.pareto_path.read_text())
    assert summary.pareto_path.parent == Path(config.out_dir)
    assert data["generator"] == "quide-search"
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
    assert summary.completed == 4 and summary.waiting > 0
    trials = load_study(study=config.study_name, storage=config.storage_url).trials
    # Nothing more ran; the warm-start plans not reached yet stay queued, and are counted.
    assert [t.state.name for t in trials].count("COMPLETE") == 4
    assert {t.state.name for t in trials} == {"COMPLETE", "WAITING"}
    assert f"{summary.waiting} queued and not run" in format_summary(summary)
    run_search(_config(tmp_path, trials=7, early_stop="off"), progress=False)
    after = load_study(study=config.study_name, storage=config.storage_url).trials
    assert len([t for t in after if t.state == optuna.trial.TrialState.COMPLETE]) == 7
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before
    # A resume with a different protocol stops before writing anything.
    digest = stored_digest(db)
    with pytest.raises(ConfigError, match=r"same search.precisions \(--bits, --activations\)"):
        run_search(_config(tmp_path, trials=9, bits=("int8", "int4")), progress=False)
    assert stored_digest(db) == digest


def test_the_same_command_again_keeps_the_stored_confirmation(tmp_path: Path) -> None:
    config = _config(tmp_path, model="toytask:make", trials=4, latency="table",
                     latency_sample_ms=1.0)  # fmt: skip
    first = run_search(config, progress=False).confirmation
    assert first is not None and first.entries
    stored = load_study(study=config.study_name, storage=config.storage_url).user_attrs
    assert first.to_dict() == stored["confirmation"]  # stored as before the typed records
    again = run_search(config, progress=False).confirmation
    assert again == first  # not re-timed: nothing ran, the finalists are the same
    fewer = run_search(_config(tmp_path, model="toytask:make", trials=4, latency="table",
                               latency_sample_ms=1.0, confirm_top=1), progress=False)  # fmt: skip
    assert fewer.confirmation is not None and fewer.confirmation.top == 1  # other finalists


def test_no_feasible_trial_reports_best_so_far(tmp_path: Path) -> None:
    summary = run_search(
        _config(tmp_path, trials=3, bits=("int2",), max_accuracy_drop=0.0, min_accuracy=None),
        progress=False,
    )
    assert summary.best is not None and summary.best.feasible is False
    assert not summary.keep_float


def test_failed_trials_are_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quide_search.measure.scorer import Scorer

    real = Scorer.measure

    def flaky(self: Scorer, plan: BitPlan, **kw):  # type: ignore[no-untyped-def]
        if plan.layers.get("fc2") == "int2":
            raise TrialEvaluationError("model output contains NaN or inf")
        return real(self, plan, **kw)

    monkeypatch.setattr(Scorer, "measure", flaky)
    summary = run_search(_config(tmp_path, trials=5), progress=False)
    assert summary.completed + summary.pruned == 5 and summary.failed >= 1  # uniform int2
    study = load_study(
        study="simplecnn-digits", storage=f"sqlite:///{tmp_path}/simplecnn-digits.db"
    )
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"] == "model output contains NaN or inf"


def test_threads_are_recorded_and_the_process_keeps_its_own(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(2)  # conftest restores torch's
    config = _config(tmp_path, trials=2, threads=1)
    run_search(config, progress=False)
    assert torch.get_num_threads() == 2
    protocol = load_study(study=config.study_name, storage=config.storage_url).user_attrs[
        "protocol"
    ]
    assert protocol["evaluation"]["threads"] == 1 and protocol["latency"]["threads"] == 1
    assert protocol["latency"]["batch_size"] == 1 and protocol["latency"]["unit"] == "ms"


def test_protocol_records_the_latency_source_and_requested_weights(
    ten_trials, digits_task
) -> None:  # type: ignore[no-untyped-def]
    config, _ = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    protocol = study.user_attrs["protocol"]
    assert protocol["latency"]["source"] == "model:cpu-epyc-2c"
    assert protocol["task"]["weights"] is None  # the trained default was asked for
    # How the weights were made, not where this machine cached them (a path names nothing on
    # another machine); the fingerprint is their hash.
    assert protocol["task"]["weights_path"] is None
    assert protocol["task"]["weights_origin"] == f"trained:{digits_task.weights_path.stem}"


def _copy_with(study: optuna.Study, **attrs: object) -> optuna.Study:
    """An in-memory copy of ``study`` whose trials carry ``attrs`` over their own."""
    copy = optuna.create_study(directions=study.directions)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    for t in study.trials:
        copy.add_trial(
            optuna.trial.create_trial(
                state=t.state, params=t.params, distributions=t.distributions, values=t.values,
                user_attrs={**t.user_attrs, **attrs}, system_attrs=t.system_attrs,
                intermediate_values=t.intermediate_values,
            )
        )  # fmt: skip
    return copy


def test_measured_latency_that_never_settled_is_said(ten_trials, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, _ = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    stored = study.user_attrs["protocol"]
    measured = {**stored, "latency": {**stored["latency"], "source": "measured",
                                      "method": "wall_clock"}}  # fmt: skip
    noisy = _copy_with(study, latency_spread=0.09, latency_repeats=200)
    noisy.set_user_attr("protocol", measured)
    said = summarize(noisy, storage_url=config.storage_url, out_dir=tmp_path).latency_warning
    assert said is not None and "T did not settle in 10 of 10 measured trials" in said
    assert "after 200 samples" in said and "(median spread 9%)" in said
    quiet = _copy_with(study, latency_spread=0.01, latency_repeats=20)
    quiet.set_user_attr("protocol", measured)
    assert "did not settle" not in (
        summarize(quiet, storage_url=config.storage_url, out_dir=tmp_path).latency_warning or ""
    )


def test_the_recommendation_uses_confirmed_t_and_can_be_the_float_model(
    ten_trials, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    config, summary = ten_trials
    study = load_study(study=config.study_name, storage=config.storage_url)
    best = [summary.best.row] if summary.best else []
    rows = sorted((r for r in [*best, *summary.pareto] if r.feasible), key=lambda r: -r.I_prime)
    assert len(rows) >= 2
    first, second = rows[0].trial, rows[1].trial

    def entry(trial: int | str, i_prime: float) -> dict:
        return {"trial": trial, "T_confirmed_ms": 1.0, "I_confirmed": i_prime,
                "I_prime_confirmed": i_prime, "feasible_confirmed": True,
                "confirm_spread": 0.01, "confirm_rounds": 10}  # fmt: skip

    copy = _copy_with(study)
    copy.set_user_attr("test", None)  # the confirmation alone decides here
    floats = entry("float", 1.0)
    copy.set_user_attr("confirmation", {"rounds": 10, "seconds": 0.1, "top": 5, "failed": {},
                                        "entries": [floats, entry(first, 2.0),
                                                    entry(second, 3.0)]})  # fmt: skip
    confirmed = summarize(copy, storage_url=config.storage_url, out_dir=tmp_path)
    # The search ranked ``first`` higher; the confirmed T ranks ``second`` higher.
    assert confirmed.best is not None and confirmed.best.trial == second
    assert confirmed.best.I_prime == 3.0 and not confirmed.keep_float
    assert confirmed.best.to_dict()["I_prime_confirmed"] == 3.0
    assert "best by confirmed I'" in format_summary(confirmed)
    from quide_search.output.export import select_trial

    assert select_trial(copy, "best").number == second
    # When the float model's confirmed I' beats every feasible plan, the summary says so.
    floats["I_prime_confirmed"] = 10.0
    copy.set_user_attr("confirmation", {**copy.user_attrs["confirmation"],
                                        "entries": [floats, entry(first, 2.0)]})  # fmt: skip
    keep = summarize(copy, storage_url=config.storage_url, out_dir=tmp_path)
    assert keep.keep_float
    assert "keep the model in float for this target: its I' (10.0000)" in format_summary(keep)


def test_show_writes_the_latency_table_only_of_a_study_that_has_one(
    ten_trials, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from quide_search.cli import main

    config, _ = ten_trials
    show = ["show", "--study", config.study_name, "--storage", config.storage_url]
    assert main([*show, "--latency-table", str(tmp_path / "t.json")]) == 2
    assert "--latency-table needs a study run with --latency table" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_layers_left_in_float_are_named_in_the_summary_show_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quide_search.cli import main

    config = _config(tmp_path, model="toytask:make_mixed", trials=3)
    summary = run_search(config, progress=False)
    assert summary.protocol["task"]["layers"] == ["head"]
    assert summary.protocol["task"]["kept_float"] == {"Conv1d": 1, "ConvTranspose2d": 1}
    line = ("kept in float: 1 Conv1d, 1 ConvTranspose2d (the quanto backend, "
            f"{QUANTO.version()}, has no quantized version of them)")  # fmt: skip
    assert line in format_summary(summary)
    capsys.readouterr()
    study = ["--study", config.study_name, "--storage", config.storage_url]
    assert main(["show", *study]) == 0
    assert line in capsys.readouterr().out
    assert main(["report", *study, "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert line in page and "toytask:make_mixed/toy; backend quanto; bits int8, int4" in page


def test_a_model_without_a_quantizable_layer_is_refused_before_a_study_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quide_search.cli import main

    args = ["run", "--model", "toytask:make_unquantizable", "--out-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "at least one layer the quanto backend quantizes (Linear, Conv2d" in err
    assert "its other layers with weights: 1 Conv1d, 1 ConvTranspose2d" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("wrong_shape", "must run on its eval inputs (shape (5,) per sample), but its forward "
                        "raised RuntimeError"),
        ("bad_labels", "eval and test labels must be class indices in [0, 2] (the model has 3 "
                       "outputs), but they range over [0, 7]"),
        ("bare_linear", "is itself a Linear, which a plan cannot name. Wrap it"),
    ],
)  # fmt: skip
def test_a_task_the_model_cannot_score_is_refused_before_a_study_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str, message: str
) -> None:
    from quide_search.cli import main

    module = tmp_path / "badtasks.py"
    module.write_text(
        "import numpy as np\nimport torch\nfrom quide_search import CustomTask\n\n"
        "def _task(model, inputs, labels):\n"
        "    return CustomTask(model=model, eval_inputs=inputs, eval_labels=labels)\n\n"
        "def wrong_shape():\n"
        "    return _task(torch.nn.Sequential(torch.nn.Linear(4, 3)),\n"
        "                 np.zeros((10, 5), np.float32), np.zeros(10, np.int64))\n\n"
        "def bad_labels():\n"
        "    return _task(torch.nn.Sequential(torch.nn.Linear(4, 3)),\n"
        "                 np.zeros((10, 4), np.float32), np.arange(10) % 8)\n\n"
        "def bare_linear():\n"
        "    return _task(torch.nn.Linear(4, 3), np.zeros((10, 4), np.float32),\n"
        "                 np.zeros(10, np.int64))\n"
    )
    out = tmp_path / "studies"
    args = ["run", "--model", f"badtasks:{factory}", "--out-dir", str(out), "--trials", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
