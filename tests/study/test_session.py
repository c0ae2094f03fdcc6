"""Kill, Ctrl-C and resume, with real processes: nothing completed is lost or duplicated."""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from _procs import (
    ATTRS,
    STUDY,
    by_state,
    counted,
    finish,
    run_args,
    signal_mid_trial,
    start,
    trials,
)

from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.measure.evaluator import Evaluator
from quide_search.study import load_study, open_session, run_search
from quide_search.study.retry import INTERRUPTED, NO_HEARTBEAT, TERMINATED

TARGET = 12


def _running_with_plan(all_trials):  # type: ignore[no-untyped-def]
    return len(counted(all_trials)) >= 4 and any(
        t.state.name == "RUNNING" and len(t.params) == 3 for t in all_trials
    )


def _completed_values(all_trials):  # type: ignore[no-untyped-def]
    return {t.number: (t.params, t.value, t.state.name) for t in counted(all_trials)}


def test_sigkill_mid_trial_then_same_command_finishes(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    # Every trial scores all samples (no early stop), so each runs long enough to be caught
    # RUNNING on a loaded machine; with the early stop some last one 25-ms forward call.
    argv = run_args(tmp_path, TARGET, "--heartbeat", "1", "--early-stop", "off")
    process = start(argv)
    seen = signal_mid_trial(storage, _running_with_plan, process, signal.SIGKILL)
    process.wait()
    before = _completed_values(trials(storage))
    assert set(_completed_values(seen)) <= set(before)
    killed = [t for t in trials(storage) if t.state.name == "RUNNING"]
    assert len(killed) == 1  # the trial in hand when the process died
    time.sleep(2.5)  # past the heartbeat grace period (2 x 1 s): it is a crash, not a pause

    done = finish(argv)
    assert done.returncode == 0, done.stderr
    after = trials(storage)
    done_trials = counted(after)
    assert len(done_trials) == TARGET
    # Nothing completed before the kill was lost, changed or measured again.
    assert {n: v for n, v in _completed_values(after).items() if n in before} == before
    measured = [t for t in done_trials if "duplicate_of" not in t.user_attrs]
    plans = [tuple(sorted(t.params.items())) for t in measured]
    assert len(plans) == len(set(plans))
    # The killed trial failed on its stale heartbeat; its plan ran again exactly once.
    stale = next(t for t in after if t.number == killed[0].number)
    assert stale.state.name == "FAIL" and stale.user_attrs["fail_reason"] == NO_HEARTBEAT
    retries = [t for t in after if t.user_attrs.get("retry_of") == stale.number]
    assert len(retries) == 1
    # A waiting trial has no params yet: Optuna keeps the queued ones in a system attribute.
    queued = retries[0].params or retries[0].system_attrs.get("fixed_params")
    assert queued == stale.params
    assert retries[0] in done_trials or retries[0].state.name == "WAITING"
    assert retries[0].user_attrs["retry_reason"] == NO_HEARTBEAT
    assert not by_state(after, "RUNNING")
    # Optuna runs queued plans oldest first, and the run stops at the target: the retry ran,
    # or it waits behind warm-start plans (path refinement, climbing) queued before it. A
    # later run with a larger --trials uses what waits. Nothing else waits.
    waiting = [t for t in by_state(after, "WAITING") if t.number != retries[0].number]
    assert all(t.user_attrs.get("warm_start") in ("path", "neighbour") for t in waiting)
    assert all(set(t.user_attrs) >= ATTRS for t in by_state(after, "COMPLETE"))
    assert all(t.user_attrs["samples_spent"] < 384 for t in by_state(after, "PRUNED"))


@pytest.mark.parametrize(
    ("sig", "code", "reason"),
    [(signal.SIGINT, 130, INTERRUPTED), (signal.SIGTERM, 143, TERMINATED)],
    ids=["sigint", "sigterm"],
)
def test_a_signal_records_the_trial_and_exits(  # type: ignore[no-untyped-def]
    tmp_path: Path, digits_task, sig: signal.Signals, code: int, reason: str
) -> None:
    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    # With every sample scored, each trial runs six slow forward calls: the signal lands in one.
    argv = run_args(tmp_path, TARGET, "--early-stop", "off")
    process = start(argv)
    signal_mid_trial(storage, _running_with_plan, process, sig)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 5  # within the forward pass in hand, not tens of s
    assert process.returncode == code
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"stopped by {sig.name}" in err
    after = trials(storage)
    assert not by_state(after, "RUNNING")
    failed = by_state(after, "FAIL")
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == reason
    # Queued again once; the warm-start plans not reached yet wait beside it.
    queued = [t for t in by_state(after, "WAITING") if "retry_of" in t.user_attrs]
    assert [t.user_attrs["retry_of"] for t in queued] == [failed[0].number]
    assert queued[0].system_attrs["fixed_params"] == failed[0].params  # how Optuna queues
    if sig == signal.SIGTERM:
        return  # the same resume as after SIGINT, below
    done = finish(argv)
    assert done.returncode == 0, done.stderr
    final = trials(storage)
    assert len(by_state(final, "COMPLETE")) == TARGET
    retry = next(t for t in final if t.user_attrs.get("retry_of") == failed[0].number)
    assert retry.state.name == "COMPLETE" and retry.params == failed[0].params


def test_same_seed_proposes_same_plans_and_scores(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    # With measured T, only the part of the sequence that does not depend on T must repeat;
    # P must repeat for every plan that both runs measured.
    def sequence(folder: Path) -> list[tuple[dict[str, str], float, str | None]]:
        # The first chunk is pinned: fitted, it follows this machine's call cost, which can
        # differ between the two runs (and with it which failing plans stop early).
        config = RunConfig(
            out_dir=str(folder), device="cpu", trials=16, seed=3, threads=1, eval_chunk=32,
            confirm_top=0, latency_sample_ms=1.0,
        )  # fmt: skip
        run_search(config, progress=False)
        study = load_study(study=config.study_name, storage=config.storage_url)
        ordered = sorted(counted(study.trials), key=lambda t: t.number)
        # P, or for a trial stopped early the bound that proved it fails the gate.
        return [
            (
                t.params,
                t.user_attrs.get("P", t.user_attrs.get("P_reachable")),
                t.user_attrs.get("warm_start"),
            )
            for t in ordered
        ]

    first = sequence(tmp_path / "a")
    second = sequence(tmp_path / "b")
    assert len(first) == len(second) == 16
    # The uniform plans come first, in the same order, in both runs. The sensitivity-greedy
    # plans after them are priced by stored bytes and by T from each study's own measured
    # latency table, and TPE's proposals follow I', so they are not compared here; every
    # plan both runs scored got the same P.
    uniform = [(p, score) for p, score, kind in first if kind == "uniform"]
    assert uniform == [(p, score) for p, score, kind in second if kind == "uniform"]
    assert [set(p.values()) for p, _ in uniform] == [{"int8"}, {"int4"}, {"int2"}]
    p_of = {tuple(sorted(p.items())): score for p, score, _ in first}
    for plan, score, _ in second:
        assert p_of.get(tuple(sorted(plan.items())), score) == score


def test_with_model_latency_the_whole_search_repeats(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    # The analytic T is deterministic, so every proposal, P, T and I' repeats exactly.
    def sequence(folder: Path) -> list[tuple[dict[str, str], float, float, float]]:
        config = RunConfig(
            out_dir=str(folder),
            device="cpu",
            trials=20,
            seed=5,
            latency="model:cpu-epyc-2c",
            eval_chunk=32,  # fitted, it follows this machine's call cost: pinned to repeat
        )
        run_search(config, progress=False)
        study = load_study(study=config.study_name, storage=config.storage_url)
        ordered = sorted(counted(study.trials), key=lambda t: t.number)
        assert {t.user_attrs.get("latency_source") for t in ordered} <= {
            "model:cpu-epyc-2c",
            None,  # stopped early: never timed
        }
        return [
            (t.params, t.state, t.user_attrs.get("P"), t.user_attrs.get("T_ms"), t.value)
            for t in ordered
        ]

    first = sequence(tmp_path / "a")
    assert len(first) == 20
    assert sequence(tmp_path / "b") == first
    assert len({tuple(sorted(p.items())) for p, *_ in first}) >= 12


def test_joining_a_study_scores_with_its_stored_first_chunk(  # type: ignore[no-untyped-def]
    tmp_path: Path, digits_task, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits: list[int] = []
    real_fit = Evaluator.fit_chunking

    def counted_fit(self: Evaluator, model: torch.nn.Module) -> Evaluator:
        fits.append(1)
        return real_fit(self, model)

    monkeypatch.setattr(Evaluator, "fit_chunking", counted_fit)
    model_latency = {"device": "cpu", "latency": "model:cpu-epyc-2c"}
    created = open_session(RunConfig(out_dir=str(tmp_path), eval_chunk=7, **model_latency))
    assert created.study.user_attrs["protocol"]["evaluation"]["first_chunk"] == 7
    assert created.objective.scorer.evaluator.chunk == 7
    # Another process (or a resume) given, or not given, another value uses the study's.
    for chunk in (50, None):
        joined = open_session(RunConfig(out_dir=str(tmp_path), eval_chunk=chunk, **model_latency))
        assert joined.objective.scorer.evaluator.chunk == 7
        assert joined.protocol.evaluation.first_chunk == 7
    assert fits == []  # nothing was timed
    # Without --eval-chunk a new study stores the value fitted on this machine; a process
    # that joins it reads the value and times nothing.
    fitted = open_session(RunConfig(out_dir=str(tmp_path / "fit"), **model_latency))
    evaluation = fitted.study.user_attrs["protocol"]["evaluation"]
    stored = (evaluation["first_chunk"], evaluation["probes"])
    assert stored == fitted.objective.scorer.chunking
    assert 13 <= stored[0] <= 256 and len(fits) == 1
    joined = open_session(RunConfig(out_dir=str(tmp_path / "fit"), **model_latency)).objective
    assert joined.scorer.chunking == stored and len(fits) == 1


def test_trials_zero_only_prepares_the_study(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(out_dir=str(tmp_path), device="cpu", trials=0, latency="model:cpu-epyc-2c")
    run_search(config, progress=False)
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert "baseline" in study.user_attrs and "protocol" in study.user_attrs
    queued = [t.user_attrs["warm_start"] for t in study.trials if t.state.name == "WAITING"]
    assert len(queued) == len(study.trials)  # nothing ran
    # The uniform plans, then the sensitivity-greedy plans, built from the stored table.
    assert queued[:3] == ["uniform"] * 3 and set(queued[3:]) == {"greedy"} and len(queued) > 3
    assert "sensitivity" in study.user_attrs and "confirmation" not in study.user_attrs


def test_only_the_creator_measures_the_latency_table(
    tmp_path: Path, digits_task, any_error
) -> None:  # type: ignore[no-untyped-def]
    from quide_search.latency import TableLatency

    config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0,
                       latency_sample_ms=1.0, warm_start=False)  # fmt: skip
    created = open_session(config)
    protocol = created.study.user_attrs["protocol"]
    assert protocol["latency"]["source"] == "table"  # auto, on a CPU
    table = created.study.user_attrs["latency_table"]
    check = created.study.user_attrs["latency_table_check"]
    mixed = [f"mixed {i}" for i in range(1, 5)]
    assert [c["plan"] for c in check] == ["float", *config.bits, *mixed]
    assert isinstance(created.objective.scorer.latency, TableLatency)
    # A joiner reads the table: it measures nothing, and predicts the same T.
    measured: list[int] = []
    real = TableLatency.measure
    TableLatency.measure = classmethod(lambda cls, *a: measured.append(1) or real(*a))  # type: ignore[method-assign, assignment]
    try:
        joined = open_session(config)
    finally:
        TableLatency.measure = real  # type: ignore[method-assign]
    assert measured == [] and joined.study.user_attrs["latency_table"] == table
    plan = joined.objective.scorer.uniform_plan("int4")
    assert joined.objective.scorer.measure(plan).T_ms == (
        created.objective.scorer.measure(plan).T_ms
    )


def test_latency_threads_time_t_alone_and_are_stored(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(
        out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0, threads=2,
        latency_threads=1, latency="measured", warm_start=False,
    )  # fmt: skip
    session = open_session(config)
    protocol = session.study.user_attrs["protocol"]
    assert protocol["latency"]["threads"] == 1 and protocol["evaluation"]["threads"] == 2
    assert session.objective.scorer.latency.context.threads == 1
    # Evaluation's threads are part of the protocol: a joiner must use the same.
    with pytest.raises(ConfigError, match=r"same evaluation.threads \(--threads\)"):
        open_session(dataclasses.replace(config, threads=1))


def test_a_study_quide_search_did_not_create_is_never_written(tmp_path: Path) -> None:
    import optuna

    from quide_search.errors import StorageError
    from quide_search.study.storage import open_storage

    config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0)
    foreign = optuna.create_study(
        study_name=config.study_name, storage=open_storage(config.storage_url)
    )
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    started = time.monotonic()
    with pytest.raises(StorageError, match="has no quide-search protocol.*choose another name"):
        open_session(config)
    assert time.monotonic() - started < 15  # says so at once, not after minutes
    again = load_study(study=config.study_name, storage=config.storage_url)
    assert len(again.trials) == 2 and again.user_attrs == {}


def test_the_protocol_is_written_once_by_the_creator(
    tmp_path: Path,
    digits_task,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    import quide_search.study.session as session_module

    config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0,
                       latency="model:cpu-epyc-2c")  # fmt: skip
    created = open_session(config)
    protocol = dict(created.study.user_attrs["protocol"])
    baseline = dict(created.study.user_attrs["baseline"])
    # A process that lost the race to create the study measures, finds it created and joins:
    # it writes neither the protocol nor the baseline.
    real_join = session_module._join
    calls: list[int] = []

    def late(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return None if len(calls) == 1 else real_join(*args, **kwargs)

    monkeypatch.setattr(session_module, "_join", late)
    writes: list[str] = []
    import optuna

    original = optuna.Study.set_user_attr

    def recorded(self, key, value):  # type: ignore[no-untyped-def]
        writes.append(key)
        return original(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", recorded)
    joined = open_session(config)
    assert len(calls) == 2 and "protocol" not in writes and "baseline" not in writes
    assert joined.study.user_attrs["protocol"] == protocol
    assert joined.study.user_attrs["baseline"] == baseline


def test_each_long_phase_draws_a_bar_and_no_progress_draws_none(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from quide_search.config import RunConfig
    from quide_search.study import run_search

    def run(name: str, progress: bool) -> str:
        config = RunConfig(model="toytask:make", out_dir=str(tmp_path), device="cpu", trials=4,
                           study=name, latency_sample_ms=1.0)  # fmt: skip
        capfd.readouterr()
        run_search(config, progress=progress)
        return capfd.readouterr().err

    err = run("drawn", True)
    for phase in (
        "evaluation order and chunks: the float model on 384 samples",
        "latency table: 4 uniform plans profiled whole, rounds: 100%",
        "float baseline: P on 384 eval samples and T",
        "latency table check: 8 plans timed whole side by side, rounds: ",
        "sensitivity: each layer group quantized alone, on 64 calibration samples: 100%",
        "confirmation: ",
        "trials: 100%",
    ):
        assert phase in err, phase
    assert run("silent", False) == ""


def test_training_draws_one_step_per_batch(capfd: pytest.CaptureFixture[str]) -> None:
    import torch

    from quide_search.progress import shown
    from quide_search.tasks.data import Split
    from quide_search.tasks.models._train import train_classifier

    split = Split(torch.randn(100, 4), torch.randint(0, 2, (100,)))
    with shown():
        train_classifier(torch.nn.Linear(4, 2), split, epochs=3, seed=0, batch_size=32,
                         desc="training toy")  # fmt: skip
    err = capfd.readouterr().err
    assert "training toy: 100%" in err and "12/12" in err  # 4 batches (32, 32, 32, 4) x 3


def test_a_resume_with_other_flags_is_refused_before_the_model_loads(
    tmp_path: Path,
    digits_task,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from quide_search.tasks import resolver

    config = RunConfig(out_dir=str(tmp_path), device="cpu", trials=0, latency="model:cpu-epyc-2c")
    run_search(config, progress=False)

    def no_model(**kwargs: object) -> None:
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(resolver, "load_task", no_model)
    for changed, field in (
        ({"bits": ("int8", "int4")}, "search.precisions (--bits, --activations)"),
        ({"max_accuracy_drop": 0.05}, "gate (--max-accuracy-drop, --min-accuracy)"),
        ({"granularity": "type"}, "search.granularity (--granularity)"),
    ):
        other = dataclasses.replace(config, **changed)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=re.escape(f"needs the same {field} as when")):
            open_session(other)
    # The same flags pass the early check and go on to load the model.
    with pytest.raises(AssertionError, match="the model was loaded"):
        open_session(config)


def test_settings_do_no_io_and_the_paths_are_checked_at_the_entry(tmp_path: Path) -> None:
    from quide_search.config import RunConfig
    from quide_search.errors import ConfigError, StorageError
    from quide_search.study import run_search
    from quide_search.study.setup import check_paths

    (tmp_path / "notes.txt").write_text("mine\n")
    # Built without touching the filesystem: a path that cannot be used is not an error yet.
    config = RunConfig(out_dir=str(tmp_path / "notes.txt"), device="cpu", trials=1,
                       latency=f"table:{tmp_path / 'missing.json'}")  # fmt: skip
    with pytest.raises(ConfigError, match="--out-dir must name a folder"):
        check_paths(config)
    with pytest.raises(ConfigError, match="--out-dir must name a folder"):
        run_search(config, progress=False)
    journal = RunConfig(storage=f"journal:{tmp_path / 'notes.txt'}", out_dir=str(tmp_path))
    with pytest.raises(StorageError, match="must name an Optuna journal file"):
        check_paths(journal)
    table = RunConfig(out_dir=str(tmp_path), latency=f"table:{tmp_path / 'missing.json'}")
    with pytest.raises(ConfigError, match="--latency table:PATH must name an existing file"):
        check_paths(table)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
