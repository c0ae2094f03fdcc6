"""Kill, Ctrl-C and resume, with real processes: nothing completed is lost or duplicated."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from _procs import ATTRS, STUDY, by_state, counted, run_args, signal_mid_trial, start, trials

from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.evaluator import Evaluator
from quide_search.latency import SAMPLE_MS
from quide_search.scorer import Scorer
from quide_search.search import INTERRUPTED, NO_HEARTBEAT
from quide_search.session import open_session
from quide_search.study import load_study, run_search

TARGET = 12


def _running_with_plan(all_trials):  # type: ignore[no-untyped-def]
    return len(counted(all_trials)) >= 4 and any(
        t.state.name == "RUNNING" and len(t.params) == 4 for t in all_trials
    )


def _completed_values(all_trials):  # type: ignore[no-untyped-def]
    return {t.number: (t.params, t.value, t.state.name) for t in counted(all_trials)}


def test_sigkill_mid_trial_then_same_command_finishes(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    argv = run_args(tmp_path, TARGET, "--heartbeat", "1")
    process = start(argv)
    seen = signal_mid_trial(storage, _running_with_plan, process, signal.SIGKILL)
    process.wait()
    before = _completed_values(trials(storage))
    assert set(_completed_values(seen)) <= set(before)
    killed = [t for t in trials(storage) if t.state.name == "RUNNING"]
    assert len(killed) == 1  # the trial in hand when the process died
    time.sleep(2.5)  # past the heartbeat grace period (2 x 1 s): it is a crash, not a pause

    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
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
    assert stale.state.name == "FAIL"
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
    assert all(t.user_attrs["samples_spent"] < 500 for t in by_state(after, "PRUNED"))


def test_sigint_records_the_trial_and_exits_130(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    storage = f"sqlite:///{tmp_path}/{STUDY}.db"
    # Batch-1 evaluation makes each trial long, so the interrupt lands inside one.
    argv = run_args(tmp_path, TARGET, "--eval-batch-size", "1", "--early-stop", "off")
    process = start(argv)
    signal_mid_trial(storage, _running_with_plan, process, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "interrupted" in err
    after = trials(storage)
    assert not by_state(after, "RUNNING")
    failed = by_state(after, "FAIL")
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == INTERRUPTED
    # Queued again once; the warm-start plans not reached yet wait beside it.
    queued = [t for t in by_state(after, "WAITING") if "retry_of" in t.user_attrs]
    assert [t.user_attrs["retry_of"] for t in queued] == [failed[0].number]
    assert queued[0].system_attrs["fixed_params"] == failed[0].params  # how Optuna queues

    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
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
            out_dir=str(folder), device="cpu", trials=16, seed=3, threads=1, eval_chunk=32
        )
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
    # The uniform plans, the sensitivity-greedy plans (priced by bytes under measured T) and
    # the greedy path's refinement around the gate (which depends on P only) are queued in
    # the same order by both runs. Climbing from the best plan and TPE's proposals depend on
    # the measured I', so on T's noise, and are not compared here.
    t_free = [(p, score) for p, score, kind in first if kind in ("uniform", "greedy", "path")]
    assert t_free == [
        (p, score) for p, score, kind in second if kind in ("uniform", "greedy", "path")
    ]
    assert len({tuple(sorted(p.items())) for p, _ in t_free}) >= 7
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
    created = open_session(RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=7))
    assert created.study.user_attrs["protocol"]["eval_first_chunk"] == 7
    assert created.objective.scorer.evaluator.chunk == 7
    # Another process (or a resume) given, or not given, another value uses the study's.
    for chunk in (50, None):
        config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=chunk)
        joined = open_session(config)
        assert joined.objective.scorer.evaluator.chunk == 7
        assert joined.study.user_attrs["protocol"]["eval_first_chunk"] == 7
    assert fits == []  # nothing was timed
    # Without --eval-chunk a new study stores the value fitted on this machine; a process
    # that joins it reads the value and times nothing.
    fitted = open_session(RunConfig(out_dir=str(tmp_path / "fit"), device="cpu"))
    protocol = fitted.study.user_attrs["protocol"]
    stored = (protocol["eval_first_chunk"], protocol["eval_probes"])
    evaluator = fitted.objective.scorer.evaluator
    assert stored == (evaluator.chunk, evaluator.probes)
    assert 13 <= stored[0] <= 256 and len(fits) == 1
    joined = open_session(RunConfig(out_dir=str(tmp_path / "fit"), device="cpu")).objective
    assert (joined.scorer.evaluator.chunk, joined.scorer.evaluator.probes) == stored
    assert len(fits) == 1


def test_trials_zero_only_prepares_the_study(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(run_args(tmp_path, 0), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    study = load_study(study=STUDY, storage=f"sqlite:///{tmp_path}/{STUDY}.db")
    assert "baseline" in study.user_attrs and "protocol" in study.user_attrs
    queued = [t.user_attrs["warm_start"] for t in study.trials if t.state.name == "WAITING"]
    assert len(queued) == len(study.trials)  # nothing ran
    # The uniform plans, then the sensitivity-greedy plans, built from the stored table.
    assert queued[:3] == ["uniform"] * 3 and set(queued[3:]) == {"greedy"} and len(queued) > 3
    assert "sensitivity" in study.user_attrs


def test_only_the_creator_measures_the_latency_reference(  # type: ignore[no-untyped-def]
    tmp_path: Path, digits_task, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[float | None] = []
    real = Scorer.calibrate_latency

    def counted_calibration(self: Scorer, qtypes: Sequence[str] | None = None) -> float | None:
        measured.append(real(self, qtypes))
        return measured[-1]

    monkeypatch.setattr(Scorer, "calibrate_latency", counted_calibration)
    config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=32)
    created = open_session(config)
    stored = created.study.user_attrs["protocol"]["latency_reference_ms"]
    assert len(measured) == 1 and stored == measured[0] and stored is not None and stored > 0
    assert created.objective.scorer.context.reference_ms == stored
    # The sample floor the reference was measured with is stored beside it, and so are the
    # qtypes it deals out over the layers: the study's choices.
    assert created.study.user_attrs["protocol"]["latency_sample_ms"] == SAMPLE_MS
    assert created.study.user_attrs["protocol"]["latency_reference_qtypes"] == list(config.bits)
    assert created.objective.scorer.context.reference_qtypes == config.bits
    # The baseline's T was paired with it, and so is every trial's.
    created.study.optimize(created.objective, n_trials=1)
    trial = created.study.trials[0].user_attrs
    assert trial["T_ms"] > 0 and trial["T_raw_ms"] > 0
    assert trial["latency_passes"] > 1  # SimpleCNN's pass is far shorter than the floor
    joined = open_session(config)
    assert joined.objective.scorer.context.reference_ms == stored and len(measured) == 1
    assert joined.objective.scorer.context.sample_ms == SAMPLE_MS
    assert joined.objective.scorer.context.reference_qtypes == config.bits
    # A study whose reference was the float model (before it was a mix) keeps it.
    protocol = dict(created.study.user_attrs["protocol"])
    del protocol["latency_reference_qtypes"]
    created.study.set_user_attr("protocol", protocol)
    older = open_session(config).objective.scorer
    assert older.context.reference_ms == stored and older.context.reference_qtypes is None
    assert older.latency_reference() is older.model and len(measured) == 1
    # A study stored before the reference and the floor existed keeps timing plain medians
    # of single passes when resumed.
    protocol = dict(created.study.user_attrs["protocol"])
    del protocol["latency_reference_ms"], protocol["latency_sample_ms"]
    created.study.set_user_attr("protocol", protocol)
    resumed = open_session(config)
    context = resumed.objective.scorer.context
    assert context.reference_ms is None and context.sample_ms is None and len(measured) == 1
    plain = resumed.objective.scorer.measure(resumed.objective.scorer.uniform_plan("qint8"))
    assert plain.T_ms == plain.T_raw_ms and plain.latency_passes == 1


def test_a_study_without_a_sample_floor_times_single_passes(  # type: ignore[no-untyped-def]
    tmp_path: Path, digits_task
) -> None:
    config = RunConfig(
        out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0, latency_sample_ms=0.0
    )
    session = open_session(config)
    assert session.study.user_attrs["protocol"]["latency_sample_ms"] is None
    scorer = session.objective.scorer
    assert scorer.context.sample_ms is None
    assert scorer.time_plan(scorer.uniform_plan("qint8")).passes == 1
    # Resumed with the default floor, the study keeps the one it was created with.
    resumed = open_session(dataclasses.replace(config, latency_sample_ms=SAMPLE_MS))
    assert resumed.objective.scorer.context.sample_ms is None


def test_latency_threads_time_t_alone_and_are_stored(tmp_path: Path, digits_task) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(
        out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0, threads=2,
        latency_threads=1,
    )  # fmt: skip
    session = open_session(config)
    protocol = session.study.user_attrs["protocol"]
    assert protocol["latency"]["threads"] == 1 and protocol["eval_threads"] == 2
    assert session.objective.scorer.context.threads == 1 and torch.get_num_threads() == 2
    # Evaluation's threads are part of the protocol: a joiner must use the same.
    with pytest.raises(ConfigError, match="needs the same eval_threads as when it was created"):
        open_session(dataclasses.replace(config, threads=1))
    # A study stored before eval_threads existed does not ask for them.
    session.study.set_user_attr(
        "protocol", {k: v for k, v in protocol.items() if k != "eval_threads"}
    )
    assert (
        open_session(dataclasses.replace(config, threads=1)).objective.scorer.context.threads == 1
    )


def test_a_study_quide_search_did_not_create_is_never_written(tmp_path: Path) -> None:
    import optuna

    from quide_search.errors import StorageError
    from quide_search.storage import open_storage

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
    import quide_search.session as session_module

    config = RunConfig(out_dir=str(tmp_path), device="cpu", eval_chunk=32, trials=0)
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
