"""A run with a latency table that cannot be trusted: never an absurd I', always said."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from quide_search.cli import main
from quide_search.latency import LatencyTable
from quide_search.metric import intelligence_index
from quide_search.study import load_study

_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _table(path: Path, change: float, *, only: tuple[str, str] | None = None) -> Path:
    """A SimpleCNN table in which each quantized layer changes T by ``change`` ms (only the
    (layer, precision) ``only``, when given; the others cost a plausible 0.02 ms more)."""
    layers = {}
    for name in _LAYERS:
        row = {"float": 0.01}
        for q in ("int8", "int4", "int2"):
            hit = only is None or only == (name, q)
            row[q] = 0.01 + (change if hit else 0.02)
        layers[name] = row
    path.write_text(json.dumps(LatencyTable(0.1, layers, {"device": "cpu"}).to_dict()))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def _run(study: str, table: Path) -> int:
    return main(["run", "--trials", "5", "--no-progress", "--device", "cpu", "--study", study,
                 "--latency", f"table:{table}", "--latency-sample-ms", "1"])  # fmt: skip


def test_a_table_with_large_negative_changes_is_not_used_and_the_run_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("negative", _table(workdir / "neg.json", -50.0)) == 0
    out = capsys.readouterr().out
    assert out.count("latency table not used: it missed the 8 plans timed whole by up to") == 2
    # The summary's header says how T was really taken.
    header = "on cpu (measured, wall_clock, samples of >= 1 ms, as the latency table failed"
    assert header in out
    study = load_study(study="negative", storage="sqlite:///studies/negative.db")
    check = study.user_attrs["latency_table_check"]
    assert min(c["predicted_ms"] for c in check) < -100  # the table's sums, stored as they were
    float_ms = study.user_attrs["baseline"]["T_ms"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) >= 3 and not study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    for t in done:
        attrs = t.user_attrs
        assert attrs["latency_source"] == "wall_clock" and attrs["latency_repeats"] >= 20
        # Measured, not the table's sum (which the old clamp turned into 1e-6 ms): a pass of
        # SimpleCNN takes tens of microseconds at least, on any CPU and any load.
        assert attrs["T_ms"] > 0.01 and float_ms > 0.01
        index = intelligence_index(C=attrs["C"], P=attrs["P"], T_ms=attrs["T_ms"])
        assert attrs["I"] == pytest.approx(index)
        assert attrs["I_prime"] == (attrs["I"] if attrs["gate_passed"] else 0.0)


def test_a_prediction_outside_the_checked_range_fails_that_trial_only(
    workdir: Path, any_error: None, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _table(workdir / "one.json", -50.0, only=("fc1", "int2"))
    assert _run("guarded", table) == 0
    study = load_study(study="guarded", storage="sqlite:///studies/guarded.db")
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.params["fc1"] for t in failed] == ["int2"] * len(failed) and failed
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("the latency table predicts T = -")
    assert done and all(t.params["fc1"] != "int2" for t in done)
    assert all(t.user_attrs["latency_source"] == "table" for t in done)
    assert all(t.user_attrs["T_ms"] > 0 for t in done)
    # The refused plan ranks last when warm starts are priced; they are queued all the same.
    assert "warm_start_skipped" not in study.user_attrs and study.user_attrs["warm_enqueued"]
