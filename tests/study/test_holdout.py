"""The test step: finalists scored on the held-out test split decide the recommendation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from quide_search.backends import get_backend
from quide_search.config import RunConfig
from quide_search.output.export import export_plan
from quide_search.output.replay import evaluate_plan
from quide_search.output.summary_text import format_study, format_summary
from quide_search.plan import BitPlan
from quide_search.records import TrialRow
from quide_search.results import TestEntry, TestResult
from quide_search.study import load_study, run_search
from quide_search.study.confirm import finalists
from quide_search.study.summary import completed_rows, recommended, summarize

QUANTO = get_backend("quanto")


@pytest.fixture(scope="module")
def tested(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Any]:
    tmp = tmp_path_factory.mktemp("holdout")
    config = RunConfig(out_dir=str(tmp), device="cpu", latency="model:cpu-epyc-2c", trials=8)
    return config, run_search(config, progress=False)


def _accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model(inputs).argmax(-1) == labels).sum()) / len(labels)


def test_finalists_and_float_are_scored_on_the_test_split(tested, digits_task) -> None:  # type: ignore[no-untyped-def]
    config, summary = tested
    study = load_study(study=config.study_name, storage=config.storage_url)
    rows = completed_rows(study)
    record = summary.test
    assert record is not None and record.samples == len(digits_task.splits.test) == 300
    assert record.to_dict() == study.user_attrs["test"]  # stored as it was before the records
    by_trial = {e.trial: e for e in record.entries}
    assert set(by_trial) == {"float", *finalists(rows, top=config.confirm_top)}
    test = digits_task.splits.test
    float_p = _accuracy(digits_task.model, test.inputs, test.labels)
    assert by_trial["float"].P_test == float_p
    assert record.gate is not None and record.gate.threshold == pytest.approx(float_p - 0.01)
    plans = {r.trial: r.plan for r in rows}
    for trial, entry in by_trial.items():
        if trial == "float":
            continue
        plan = BitPlan(model="simplecnn", dataset="digits", layers=plans[trial])
        quantized = QUANTO.apply(digits_task.model, plan)
        # Scored again from scratch: quanto's model, plain top-1, every test sample.
        assert entry.P_test == pytest.approx(_accuracy(quantized, test.inputs, test.labels))
        assert entry.gate_passed_test == (entry.P_test >= float_p - 0.01 - 1e-12)
    assert summary.baseline["P_test"] == float_p


def test_the_recommendation_is_the_best_finalist_passing_both_gates(tested) -> None:  # type: ignore[no-untyped-def]
    config, summary = tested
    rows = {r.trial: r for r in completed_rows(
        load_study(study=config.study_name, storage=config.storage_url))}  # fmt: skip
    assert summary.test is not None
    passing = [
        (rows[e.trial], e)
        for e in summary.test.entries
        if e.trial != "float" and e.gate_passed_test and rows[e.trial].feasible
    ]
    assert passing, "the digits study must have a finalist that passes both gates"
    row, entry = max(passing, key=lambda p: (p[0].I_prime, p[0].I, -p[0].trial))
    assert summary.best is not None
    assert summary.best.trial == row.trial and summary.best.feasible is True
    assert summary.best.p_test == entry.P_test
    text = format_summary(summary)
    assert "P_search" in text and "P_test" in text and "gate_test" in text
    unbiased = "held out from the search and the float model's training: the unbiased estimate"
    assert f"{entry.P_test:.4f} on the held-out test split ({unbiased})" in text
    assert "300 held-out samples the search never saw" in text
    assert "P_search" in format_study(summary) and "recommended" in format_study(summary)


def test_a_finalist_failing_the_test_gate_is_never_recommended() -> None:
    def row(trial: int, i_prime: float) -> TrialRow:
        return TrialRow(trial=trial, plan={"a": "int4"}, C=4.0, P=0.95, T_ms=1.0, I=i_prime,
                        I_prime=i_prime, gate_passed=True, avg_weight_bits=4.0, stored_bytes=10,
                        feasible=True)  # fmt: skip

    rows = [row(0, 9.0), row(1, 8.0), row(2, 7.0)]
    entries = (TestEntry("float", 0.96, True), TestEntry(0, 0.93, False),
               TestEntry(1, 0.955, True), TestEntry(2, 0.958, True))  # fmt: skip
    best = recommended(rows, None, TestResult(entries=entries))
    assert best is not None and best.trial == 1 and best.p_test == 0.955 and best.feasible
    no_test = recommended(rows, None, None)
    assert no_test is not None and no_test.trial == 0
    nobody = TestResult(entries=tuple(dataclasses.replace(e, gate_passed_test=e.trial == "float")
                                      for e in entries))  # fmt: skip
    fallback = recommended(rows, None, nobody)
    assert fallback is not None and fallback.feasible is False and fallback.trial == 0
    assert fallback.p_test == 0.93


def test_export_carries_both_p_and_evaluate_reproduces_both(tested, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, summary = tested
    out = export_plan(study=config.study_name, storage=config.storage_url,
                      out=tmp_path / "best.json")  # fmt: skip
    record = json.loads(out.read_text())
    assert summary.best is not None
    assert record["source"]["trial"] == summary.best.trial
    assert record["metrics"]["P"] == summary.best.row.P
    assert record["metrics"]["P_test"] == summary.best.p_test
    assert record["metrics"]["test_samples"] == 300
    assert record["baseline"]["P_test"] == summary.baseline["P_test"]
    replay = evaluate_plan(out, device="cpu")
    assert record["metrics"]["P"] == replay.measured.P
    assert replay.p_test == record["metrics"]["P_test"]
    assert replay.gate_passed_test is record["metrics"]["gate_passed_test"] is True
    assert replay.reproduced is True
    # The test gate is the study's gate (a drop of at most 0.01) around the float model's P
    # on the test split: against a float model that scored 1.0 there, this plan fails it.
    assert replay.p_test < 0.99
    record["baseline"]["P_test"] = 1.0
    out.write_text(json.dumps(record))
    assert evaluate_plan(out, device="cpu").gate_passed_test is False
    record["metrics"]["P_test"] = replay.p_test - 1 / 300
    out.write_text(json.dumps(record))
    assert evaluate_plan(out, device="cpu").reproduced is False


def test_the_same_command_again_keeps_the_stored_test_scores(tested) -> None:  # type: ignore[no-untyped-def]
    config, summary = tested
    again = run_search(config, progress=False)
    assert again.test == summary.test  # nothing ran: the same finalists, not scored again
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert summarize(study, storage_url=config.storage_url, out_dir=".").test == summary.test
