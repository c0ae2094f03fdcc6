"""One process's way into a study: create it, or join (resume) it, then score as it says.

Every process that works on a study (the first, the ``--workers`` it spawns, a resume, one
started by hand on another host) goes through :func:`open_session`. A process that finds no
study measures what the study fixes first (the evaluation's chunk schedule, the latency table,
the float baseline), then creates the study and stores them at once: only the process whose
``create_study`` succeeds writes them, and nothing overwrites them later. A process that finds
the study checks its own settings against the stored protocol and scores with the stored one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from quide_search.config import RunConfig
from quide_search.errors import StorageError
from quide_search.metric import Gate
from quide_search.protocol import Protocol
from quide_search.protocol_builder import build_protocol
from quide_search.records import StudyKey, TrialKey
from quide_search.study.storage import open_storage, study_names, supports_heartbeat

if TYPE_CHECKING:
    import optuna
    import torch

    from quide_search.measure.scorer import Scorer
    from quide_search.search.objective import PlanObjective
    from quide_search.tasks.task import Task

__all__ = ["DEFAULT_HEARTBEAT_S", "Session", "open_session"]

DEFAULT_HEARTBEAT_S = 60
"""Heartbeat interval of RDB storages when --heartbeat is not given."""
# How long a process that finds a study without an attribute waits for its creator to store it:
# creators store them right after create_study, so this only covers that moment.
_CREATOR_WAIT_S = 5.0


@dataclass(frozen=True)
class Session:
    """A study ready for trials, and the objective that scores them in this process."""

    study: optuna.Study
    objective: PlanObjective
    storage_url: str
    protocol: Protocol

    def latency_fallback(self) -> str | None:
        """Why the study's T is measured though it asked for a table (its check failed)."""
        from quide_search.latency import TableLatency

        source = self.objective.scorer.latency
        if isinstance(source, TableLatency) and source.fallback is not None:
            return source.check.verdict(source.context.threads)
        return None


def open_session(config: RunConfig, *, sampler_seed: int | None = None) -> Session:
    """Create or join the study of ``config``; return it with this process's objective.

    Args:
        config: The run settings.
        sampler_seed: Seed of this process's sampler (default ``config.seed``); parallel
            workers use distinct seeds so they do not propose the same plans.

    Raises:
        QuideError: For bad settings, an unusable storage, a protocol that differs from the
            stored one, or a study without quide-search's protocol; nothing is written then.
    """
    import torch

    from quide_search.measure.device import resolve_device
    from quide_search.measure.evaluator import check_task_runs
    from quide_search.study.retry import requeue_stale
    from quide_search.study.setup import prepare_queue
    from quide_search.tasks.resolver import load_task

    device = resolve_device(config.device)
    _check_stored_settings(config)
    # The task first: an unknown model or dataset must fail before any storage file exists.
    task = load_task(**config.task_options(), device_type=device.type)
    check_task_runs(task)
    torch.manual_seed(config.seed)
    draft = build_protocol(config, task, device=device)
    if draft.latency.table_file is not None:  # a bad file must fail before any study exists
        from quide_search.latency.settings import read_table_file

        search, layers = draft.search, draft.task.layers
        read_table_file(draft.latency.table_file, layers, search.precisions,
                        excluded=search.grouped_excluded(layers))  # fmt: skip
    url = config.storage_url
    if config.storage is None:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    heartbeat = 0
    if supports_heartbeat(url):
        heartbeat = DEFAULT_HEARTBEAT_S if config.heartbeat is None else config.heartbeat
    storage = open_storage(url, heartbeat=heartbeat, on_stale=requeue_stale)
    seed = config.seed if sampler_seed is None else sampler_seed
    study = _join(config, storage, draft, seed)
    scorer = None
    if study is None:
        study, scorer = _create(config, storage, draft, seed, task, device)
    protocol = Protocol.from_dict(study.user_attrs[StudyKey.PROTOCOL], study=study.study_name)
    if scorer is None:
        scorer = _stored_scorer(study, task, protocol, device, config.cache_mb)
    objective = _objective(scorer, protocol, _baseline(study, scorer, protocol))
    prepare_queue(study, objective, warm_start=config.warm_start)
    return Session(study=study, objective=objective, storage_url=url, protocol=protocol)


def _check_stored_settings(config: RunConfig) -> None:
    """Refuse a resume whose flags contradict the stored protocol before any model loads.

    Only what the flags alone fix is compared here (backend, precisions, grouping, objective,
    limits, gate, evaluation batch and early stop); the rest is compared once the model is
    loaded (:meth:`Protocol.check_resume`). Nothing is created: a storage file that does not
    exist yet is left alone.

    Raises:
        ConfigError: Naming the first setting that differs.
    """
    from quide_search.protocol import GateRule
    from quide_search.study.storage import storage_file

    path = storage_file(config.storage_url)
    if path is not None and (not path.is_file() or path.stat().st_size == 0):
        return
    try:
        stored = _stored_protocol(config)
    except StorageError:
        return  # the storage is opened again below, and says what is wrong then
    if stored is None:
        return
    gate = GateRule(max_drop=config.max_accuracy_drop, min_accuracy=config.min_accuracy)
    stored.check_fields(
        {
            "backend": config.backend,
            "search": {"precisions": list(config.bits), "granularity": config.granularity,
                       "objective": config.objective, "max_size_mb": config.max_size_mb,
                       "max_latency_ms": config.max_latency_ms},
            "gate": gate.model_dump(mode="json"),
            "evaluation": {"batch_size": config.eval_batch_size,
                           "early_stop": config.early_stop},
        },
        study=config.study_name,
    )  # fmt: skip


def _stored_protocol(config: RunConfig) -> Protocol | None:
    """The stored protocol of ``config``'s study, read without writing; None if none."""
    import optuna

    storage = open_storage(config.storage_url, read_only=True)
    try:
        if config.study_name not in study_names(storage):
            return None
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(study_name=config.study_name, storage=storage)
        stored = study.user_attrs.get(StudyKey.PROTOCOL)
    finally:
        engine = getattr(storage, "engine", None)  # an RDB storage's connections
        if engine is not None:
            engine.dispose()
    return None if stored is None else Protocol.from_dict(stored, study=config.study_name)


def _sampler(config: RunConfig, seed: int) -> Any:
    from quide_search.search.samplers import make_sampler

    return make_sampler(config.sampler, seed=seed)


def _join(config: RunConfig, storage: Any, draft: Protocol, seed: int) -> optuna.Study | None:
    """Return the study of ``config`` checked against ``draft``; None if there is none."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name = config.study_name
    if name not in study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(config, seed))
    # A study being created holds no trial yet; one with trials and no protocol never will.
    stored = study.user_attrs.get(StudyKey.PROTOCOL)
    if stored is None and not study.get_trials(deepcopy=False):
        stored = wait_for(study, StudyKey.PROTOCOL)
    if stored is None:
        raise StorageError(
            f"--study must name a study quide-search created, but {name!r} in "
            f"{config.storage_url!r} has no quide-search protocol: another program made it, or "
            "its creator stopped before storing one. Nothing was written to it; choose another "
            "name with --study NAME."
        )
    Protocol.from_dict(stored, study=name).check_resume(draft, study=name)
    return study


def _create(
    config: RunConfig,
    storage: Any,
    draft: Protocol,
    seed: int,
    task: Task,
    device: torch.device,
) -> tuple[optuna.Study, Scorer | None]:
    """Measure what the study fixes, then create it and store them; join if another won.

    Returns the study, and the scorer that measured them (None when another process created
    the study first: its measurements hold, not these).
    """
    import optuna

    from quide_search.measure.scorer import Scorer
    from quide_search.study.setup import baseline_record

    scorer = Scorer.build(task, draft, device=device, cache_mb=config.cache_mb)
    protocol = draft.with_chunking(*scorer.chunking)
    baseline = baseline_record(scorer, protocol)
    pareto = protocol.search.objective == "pareto"
    directions: list[Literal["minimize", "maximize"]] = (
        ["maximize", "maximize", "minimize"] if pareto else ["maximize"]
    )
    try:
        study = optuna.create_study(
            study_name=config.study_name,
            storage=storage,
            directions=directions,
            sampler=_sampler(config, seed),
        )
    except optuna.exceptions.DuplicatedStudyError:
        joined = _join(config, storage, draft, seed)
        if joined is None:  # pragma: no cover - a study that exists is never removed here
            raise
        return joined, None
    study.set_user_attr(StudyKey.PROTOCOL, protocol.to_dict())
    _store_table(study, scorer)
    study.set_user_attr(StudyKey.BASELINE, baseline)
    with warnings.catch_warnings():
        # set_metric_names is marked experimental but has been stable since Optuna 3.2.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["C", "P", "T_ms"] if pareto else [TrialKey.I_PRIME])
    return study, scorer


def _stored_scorer(
    study: optuna.Study, task: Task, protocol: Protocol, device: torch.device, cache_mb: float
) -> Scorer:
    """The scorer of a study that exists: its protocol, and its latency table if it has one.

    A table study whose creator was killed before storing the table (or its check) gets one
    measured (or checked) now.
    """
    from quide_search.latency import SourceKind
    from quide_search.measure.scorer import Scorer

    table = check = None
    if protocol.latency.kind is SourceKind.TABLE:
        table = wait_for(study, StudyKey.LATENCY_TABLE)
        check = wait_for(study, StudyKey.LATENCY_TABLE_CHECK) if table is not None else None
    scorer = Scorer.build(task, protocol, device=device, cache_mb=cache_mb, stored_table=table,
                          stored_check=check)  # fmt: skip
    if check is None:
        _store_table(study, scorer)
    return scorer


def _store_table(study: optuna.Study, scorer: Scorer) -> None:
    """Store the scorer's latency table and its check, where T comes from a table."""
    from quide_search.latency import TableLatency

    source = scorer.latency
    if isinstance(source, TableLatency):
        study.set_user_attr(StudyKey.LATENCY_TABLE, source.table.to_dict())
        study.set_user_attr(StudyKey.LATENCY_TABLE_CHECK, source.check.to_list())


def _baseline(study: optuna.Study, scorer: Scorer, protocol: Protocol) -> Gate:
    """The study's gate, from its stored baseline (measured and stored now if it has none)."""
    from quide_search.study.setup import baseline_record

    baseline = wait_for(study, StudyKey.BASELINE)
    if baseline is None:
        baseline = baseline_record(scorer, protocol)
        study.set_user_attr(StudyKey.BASELINE, baseline)
    return protocol.gate_for(float(baseline["P"]))


def _objective(scorer: Scorer, protocol: Protocol, gate: Gate) -> PlanObjective:
    from quide_search.search.objective import PlanObjective, SearchSettings

    search = protocol.search
    return PlanObjective(
        scorer=scorer,
        gate=gate,
        choices=search.precisions,
        granularity=search.granularity,
        settings=SearchSettings(
            objective=search.objective,
            early_stop=protocol.evaluation.early_stop,
            max_size_mb=search.max_size_mb,
            max_latency_ms=search.max_latency_ms,
        ),
    )


def wait_for(study: optuna.Study, key: str) -> Any:
    """Return the study attribute ``key``, waiting briefly if its creator is writing it now.

    A creator stores its attributes right after creating the study, so a few seconds cover
    that moment; a study still without them after that never had a creator that finished.
    """
    deadline = time.monotonic() + _CREATOR_WAIT_S
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.2)
