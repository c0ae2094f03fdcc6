"""One worker's session on a study: open or create it safely, then run trials until the target.

Every process that works on a study (the first, the ``--workers`` it spawns, or one started by
hand on another host) goes through :func:`open_session`, so all of them check the same protocol,
use the same stored baseline and gate, and count the same completed trials.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from optuna.trial import TrialState

from quide_search.config import RunConfig
from quide_search.errors import QuideError, StorageError
from quide_search.metric import Gate
from quide_search.plan import FLOAT
from quide_search.protocol import check_resume, study_protocol
from quide_search.storage import open_storage, study_names, supports_heartbeat

if TYPE_CHECKING:
    import optuna

    from quide_search.scorer import Scorer
    from quide_search.search import PlanObjective

__all__ = [
    "COUNTED",
    "DEFAULT_HEARTBEAT_S",
    "Session",
    "open_session",
    "optimize",
    "study_sensitivity",
]

DEFAULT_HEARTBEAT_S = 60
"""Heartbeat interval of RDB storages when --heartbeat is not given."""
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
"""Trial states that count towards --trials: scored in full, or proved to fail the gate."""
# How long a process that finds a study without an attribute waits for its creator to store it:
# creators store them right after create_study, so this only covers that moment.
_CREATOR_WAIT_S = 5.0


@dataclass(frozen=True)
class Session:
    """A study ready for trials, and the objective that scores them in this process."""

    study: optuna.Study
    objective: PlanObjective
    storage_url: str


def open_session(config: RunConfig, *, sampler_seed: int | None = None) -> Session:
    """Create or join the study of ``config``: protocol checked, baseline measured once.

    A process that finds no study measures everything the study fixes (chunk schedule,
    latency reference, latency table, fp32 baseline) first, then creates the study and stores
    them at once: only the process whose ``create_study`` succeeded writes the protocol, and
    nothing ever overwrites it. A process that finds the study reads them.

    Args:
        config: The run settings.
        sampler_seed: Seed of this process's sampler (default ``config.seed``); parallel
            workers use distinct seeds so they do not propose the same plans.

    Raises:
        QuideError: For bad settings, an unusable storage, a protocol that differs from the
            stored one, or a study without quide-search's protocol; nothing is written then.
    """
    import torch

    from quide_search.latency import resolve_device
    from quide_search.scorer import Scorer
    from quide_search.search import PlanObjective, requeue_stale
    from quide_search.task import load_task

    device = resolve_device(config.device)
    # The task first: an unknown model or dataset must fail before any storage file exists.
    task = load_task(**config.task_options(), device_type=device.type)
    torch.manual_seed(config.seed)
    # The chunk schedule and the latency reference are measured only by the study's creator.
    scorer = Scorer.for_config(task, config, device=device, calibrate=False)
    protocol = study_protocol(config, scorer)
    if config.latency.startswith("table:"):  # a bad file must fail before any study exists
        scorer.prepare_table(config.bits)
    url = config.storage_url
    if config.storage is None:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    heartbeat = 0
    if supports_heartbeat(url):
        heartbeat = DEFAULT_HEARTBEAT_S if config.heartbeat is None else config.heartbeat
    backend = open_storage(url, heartbeat=heartbeat, on_stale=requeue_stale)
    seed = config.seed if sampler_seed is None else sampler_seed
    objective = PlanObjective(
        scorer=scorer,
        gate=Gate(baseline_P=1.0, **config.gate_settings()),  # replaced below
        choices=config.bits,
        granularity=config.granularity,
        settings=config.search_settings(),
    )
    study = _join(config, backend, protocol, seed)
    if study is None:
        study = _create(config, backend, protocol, seed, objective)
    _use_stored(study, objective, config)
    _prepare_queue(study, objective, config)
    return Session(study=study, objective=objective, storage_url=url)


def _sampler(config: RunConfig, seed: int) -> Any:
    from quide_search.sampler import make_sampler

    return make_sampler(config.sampler, seed=seed)


def _join(
    config: RunConfig, backend: Any, protocol: dict[str, Any], seed: int
) -> optuna.Study | None:
    """Return the study of ``config`` checked against ``protocol``; None if there is none."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name = config.study_name
    if name not in study_names(backend):
        return None
    study = optuna.load_study(study_name=name, storage=backend, sampler=_sampler(config, seed))
    stored = _wait_for(study, "protocol")
    if stored is None:
        raise StorageError(
            f"--study must name a study quide-search created, but {name!r} in "
            f"{config.storage_url!r} has no quide-search protocol: another program made it, or "
            "its creator stopped before storing one. Nothing was written to it; choose another "
            "name with --study NAME."
        )
    check_resume(stored, protocol, name)
    return study


def _create(
    config: RunConfig,
    backend: Any,
    protocol: dict[str, Any],
    seed: int,
    objective: PlanObjective,
) -> optuna.Study:
    """Measure what the study fixes, then create it and store them; join if another won.

    The measurements come first, so the study exists without its protocol only for the
    moment between ``create_study`` and the next write.
    """
    import optuna

    scorer = objective.scorer
    calibration = _calibrate(scorer, config)
    table = _latency_table(scorer, config) if config.latency.startswith("table") else None
    baseline, objective.gate = _measure_baseline(objective, config)
    pareto = config.objective == "pareto"
    directions: list[Literal["minimize", "maximize"]] = (
        ["maximize", "maximize", "minimize"] if pareto else ["maximize"]
    )
    try:
        study = optuna.create_study(
            study_name=config.study_name,
            storage=backend,
            directions=directions,
            sampler=_sampler(config, seed),
        )
    except optuna.exceptions.DuplicatedStudyError:
        # Another process created it meanwhile: its measurements hold, not these.
        joined = _join(config, backend, protocol, seed)
        assert joined is not None  # a study that exists is never removed here
        return joined
    study.set_user_attr("protocol", {**protocol, **calibration})
    if table is not None:
        study.set_user_attr("latency_table", table[0])
        study.set_user_attr("latency_table_check", table[1])
    study.set_user_attr("baseline", baseline)
    with warnings.catch_warnings():
        # set_metric_names is marked experimental but has been stable since Optuna 3.2.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["C", "P", "T_ms"] if pareto else ["I_prime"])
    return study


def _calibrate(scorer: Scorer, config: RunConfig) -> dict[str, Any]:
    """Measure what the creator of a study fixes for every process that joins it.

    The chunk schedule (--eval-chunk's, or one fitted to this machine's call cost) and the
    latency reference (see :meth:`Scorer.calibrate_latency`: the study's choices dealt out
    over the layers) both depend on timing, so they are measured once and stored in the
    protocol rather than re-measured by each process.
    """
    if config.eval_chunk is None:
        scorer.fit_eval_chunk()
    reference = scorer.calibrate_latency(config.bits)
    # None where the mix could not run and the float model is the reference.
    qtypes = scorer.context.reference_qtypes
    return {
        "eval_first_chunk": scorer.evaluator.chunk,
        "eval_probes": scorer.evaluator.probes,
        "latency_sample_ms": scorer.context.sample_ms,
        "latency_reference_ms": reference,
        "latency_reference_qtypes": None if qtypes is None else list(qtypes),
    }


def _wait_for(study: optuna.Study, key: str) -> Any:
    """Return the study attribute ``key``, waiting briefly if its creator is writing it now.

    A creator stores its attributes right after creating the study, so a few seconds cover
    that moment; a study still without them after that never had a quide-search creator
    that finished, or had one that was killed at that moment.
    """
    deadline = time.monotonic() + _CREATOR_WAIT_S
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _measure_baseline(objective: PlanObjective, config: RunConfig) -> tuple[dict[str, Any], Gate]:
    """Measure the fp32 baseline; return its record and the gate built from it."""
    scorer = objective.scorer
    measurement = scorer.measure(scorer.float_plan())
    gate = Gate(baseline_P=measurement.P, **config.gate_settings())
    metrics = measurement.metrics(baseline_bytes=scorer.baseline_bytes, gate=gate)
    return {**metrics.to_dict(), "latency_repeats": measurement.latency_repeats}, gate


def _use_stored(study: optuna.Study, objective: PlanObjective, config: RunConfig) -> None:
    """Score as the study was created: its chunking, latency reference, table and gate.

    A study whose creator was killed between creating it and storing its baseline or table
    gets them from this process (measured now, stored once).
    """
    scorer = objective.scorer
    stored = study.user_attrs["protocol"]
    scorer.use_eval_chunk(stored.get("eval_first_chunk"), stored.get("eval_probes"))
    scorer.use_latency_reference(
        stored.get("latency_reference_ms"), stored.get("latency_reference_qtypes")
    )
    scorer.use_sample_floor(stored.get("latency_sample_ms"))
    if config.latency.startswith("table"):
        table = _wait_for(study, "latency_table")
        if table is None:
            table, check = _latency_table(scorer, config)
            study.set_user_attr("latency_table", table)
            study.set_user_attr("latency_table_check", check)
        from quide_search.latency_table import LatencyTable

        scorer.use_table(LatencyTable.from_dict(table))
    baseline = _wait_for(study, "baseline")
    if baseline is None:
        baseline = _measure_baseline(objective, config)[0]
        study.set_user_attr("baseline", baseline)
    objective.gate = Gate(baseline_P=baseline["P"], **config.gate_settings())


def _prepare_queue(study: optuna.Study, objective: PlanObjective, config: RunConfig) -> None:
    """Queue the uniform plans and, with warm starts, the sensitivity-greedy plans, once."""
    _enqueue_uniform(study, list(objective.groups), config.bits)
    if config.warm_start:
        _enqueue_warm(study, objective)


def _enqueue_uniform(study: optuna.Study, params: list[str], bits: tuple[str, ...]) -> None:
    if study.user_attrs.get("uniform_enqueued"):
        return
    from quide_search.search import uniform_params

    for qtype in bits:
        if qtype != FLOAT:
            # The uniform rows are the protocol's reference table: always scored in full.
            study.enqueue_trial(
                uniform_params(params, qtype),
                user_attrs={"warm_start": "uniform", "full_eval": True},
                skip_if_exists=True,
            )
    study.set_user_attr("uniform_enqueued", True)


def study_sensitivity(study: optuna.Study, objective: PlanObjective) -> dict[str, Any]:
    """Return the study's stored sensitivity table, measuring and storing it the first time."""
    from quide_search.sensitivity import measure_sensitivity

    stored = study.user_attrs.get("sensitivity")
    if stored is None:
        started = time.perf_counter()
        table = measure_sensitivity(objective.scorer, objective.groups, objective.choices)
        stored = {
            "split": "calib",
            "samples": len(objective.scorer.task.splits.calib),
            "measure": "KL(float || quantized) of softmax outputs, mean per sample",
            "seconds": time.perf_counter() - started,
            "groups": table,
        }
        study.set_user_attr("sensitivity", stored)
    return dict(stored)


def _enqueue_warm(study: optuna.Study, objective: PlanObjective) -> None:
    if study.user_attrs.get("warm_enqueued"):
        return
    from quide_search.warmstart import queue_warm_starts

    try:
        sensitivity = study_sensitivity(study, objective)["groups"]
        queue_warm_starts(study, objective, sensitivity)
    except QuideError as e:
        # A layer that cannot be measured alone is a fault for its trials to meet, one by one;
        # the search goes on from the uniform plans.
        study.set_user_attr("warm_start_skipped", str(e))
    study.set_user_attr("warm_enqueued", True)


def _latency_table(scorer: Scorer, config: RunConfig) -> tuple[dict[str, Any], list[Any]]:
    """Read ``table:PATH`` or measure the latency table; check it on the uniform plans.

    Returns the table as stored and its predictions beside a measured T for each uniform
    plan. The scorer predicts T from the table from then on.
    """
    table = scorer.table or scorer.prepare_table(config.bits)
    check = []
    for qtype in config.bits:
        plan = scorer.uniform_plan(qtype)
        predicted = table.predict(plan.layers)
        measured = scorer.measured_ms(plan)
        check.append(
            {"plan": qtype, "predicted_ms": predicted, "measured_ms": measured,
             "error": predicted / measured - 1.0}
        )  # fmt: skip
    return table.to_dict(), check


def optimize(
    session: Session,
    target: int,
    *,
    progress: bool,
    echo: Callable[[str], None] = print,
) -> None:
    """Run trials in this process until the study holds ``target`` completed trials.

    Other processes may be adding trials to the same study; each stops once the shared count
    reaches the target, so a study can end up to (workers - 1) over it, by the trials that
    were already running then.
    """
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm import tqdm

    from quide_search.errors import TrialEvaluationError
    from quide_search.warmstart import refine_on_path

    study = session.study
    done = _completed(study)
    if target - done <= 0:
        return
    bar = tqdm(total=target, initial=done, desc="trials", unit="trial", disable=not progress)
    best = [float("-inf")]

    def _report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in COUNTED:
            best[0] = max(best[0], float(trial.user_attrs.get("I_prime", 0.0)))
            bar.n = min(target, _completed(study))
            bar.set_postfix(best_I_prime=f"{best[0]:.3f}")
        elif trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "unexpected error")
            (bar.write if progress else echo)(f"trial {trial.number} failed: {reason}")

    def _stop_if_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if session.objective.interrupt_pending:
            study.stop()

    try:
        with _sigint_between_trials(session.objective):
            # Failed trials do not count towards the target: allow as many again, then stop.
            study.optimize(
                session.objective,
                n_trials=2 * (target - done) + 10,
                catch=(TrialEvaluationError,),
                callbacks=[
                    MaxTrialsCallback(target, states=COUNTED),
                    refine_on_path(session.objective),
                    _report,
                    _stop_if_interrupted,
                ],
            )
    finally:
        bar.close()
    if session.objective.interrupt_pending:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_between_trials(objective: PlanObjective) -> Iterator[None]:
    """Make Ctrl-C interrupt a running trial, but never in the middle of a storage call.

    While a plan is being measured, SIGINT raises KeyboardInterrupt at once (the objective
    records the trial as failed and queues its plan again). During the trial's storage I/O it
    sets a flag, and the trial fails the same way at its next check. Between trials it only
    sets the flag: the study stops after the trial in hand is stored, so no trial is left
    RUNNING by the interrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        objective.interrupt_pending = True
        if objective.interruptible:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))
