"""Before a study's first trial: the paths its settings name, checked; then what it holds
(baseline, queued plans, sensitivity).

Each stored step is stored once and reused: a process that finds one done reads it, so a resume
after a kill during set-up goes on where it stopped.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from quide_search.errors import QuideError
from quide_search.plan import FLOAT
from quide_search.records import StudyKey, TrialKey, WarmStart

if TYPE_CHECKING:
    import optuna

    from quide_search.config import RunConfig
    from quide_search.measure.scorer import Scorer
    from quide_search.protocol import Protocol
    from quide_search.search.objective import PlanObjective

__all__ = ["baseline_record", "check_paths", "prepare_queue", "study_sensitivity"]


def check_paths(config: RunConfig) -> None:
    """Check the paths ``config`` names, on this machine, before anything is written:
    ``--out-dir`` (a folder, or one that can be made), ``--storage``'s file (its kind, folder
    and permissions) and ``--latency table:PATH`` (an existing file). A RunConfig itself does
    no I/O; the entry points call this once, first.

    Raises:
        ConfigError: For a path of the wrong kind, missing or not writable.
        StorageError: For a storage file that is not what its URL says.
    """
    from quide_search.files import check_path
    from quide_search.latency._base import SourceKind
    from quide_search.latency.profiles import parse_source
    from quide_search.storage_url import check_url

    check_path(config.out_dir, kind="folder", flag="--out-dir")
    if config.storage is not None:
        check_url(config.storage, must_exist=False)
    kind, table = parse_source(config.latency)
    if kind == SourceKind.TABLE and table is not None:  # an input file: checked first
        check_path(table, kind="file", flag="--latency table:PATH", must_exist=True)


def baseline_record(scorer: Scorer, protocol: Protocol) -> dict[str, Any]:
    """Measure the float model in full; return its metrics under its own gate."""
    from quide_search.progress import phase

    samples = len(scorer.task.splits.eval)
    with phase(f"float baseline: P on {samples} eval samples and T"):
        measurement = scorer.measure(scorer.float_plan())
    gate = protocol.gate_for(measurement.P)
    metrics = measurement.metrics(baseline_bytes=scorer.baseline_bytes, gate=gate)
    return {**metrics.to_dict(), TrialKey.LATENCY_REPEATS: measurement.latency_repeats}


def prepare_queue(study: optuna.Study, objective: PlanObjective, *, warm_start: bool) -> None:
    """Queue the uniform plans and, with warm starts, the sensitivity-greedy plans, once."""
    if not study.user_attrs.get(StudyKey.UNIFORM_QUEUED):
        for precision in objective.choices:
            if precision != FLOAT:
                # The uniform rows are the protocol's reference table: always scored in full.
                study.enqueue_trial(
                    objective.uniform_params(precision),
                    user_attrs={TrialKey.WARM_START: WarmStart.UNIFORM, TrialKey.FULL_EVAL: True},
                    skip_if_exists=True,
                )
        study.set_user_attr(StudyKey.UNIFORM_QUEUED, True)
    if warm_start and not study.user_attrs.get(StudyKey.WARM_QUEUED):
        from quide_search.search.warmstart import queue_warm_starts

        try:
            sensitivity = study_sensitivity(study, objective)["groups"]
            queue_warm_starts(study, objective, sensitivity)
        except QuideError as e:
            # A layer that cannot be measured alone is a fault for its trials to meet, one by
            # one; the search goes on from the uniform plans.
            study.set_user_attr(StudyKey.WARM_START_SKIPPED, str(e))
        study.set_user_attr(StudyKey.WARM_QUEUED, True)


def study_sensitivity(study: optuna.Study, objective: PlanObjective) -> dict[str, Any]:
    """Return the study's stored sensitivity table, measuring and storing it the first time."""
    from quide_search.latency import torch_threads
    from quide_search.search.sensitivity import SENSITIVITY_SAMPLES, measure_sensitivity

    stored = study.user_attrs.get(StudyKey.SENSITIVITY)
    if stored is None:
        scorer = objective.scorer
        started = time.perf_counter()
        with torch_threads(scorer.eval_threads):
            table = measure_sensitivity(scorer, objective.groups, objective.group_choices)
        stored = {
            "split": "calib",
            "samples": len(scorer.task.splits.calib.first(SENSITIVITY_SAMPLES)),
            "measure": "KL(float || quantized) of softmax outputs, mean per sample",
            "seconds": time.perf_counter() - started,
            "groups": table,
        }
        study.set_user_attr(StudyKey.SENSITIVITY, stored)
    return dict(stored)
