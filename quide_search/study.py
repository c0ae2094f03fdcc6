"""Studies: create or resume, record the protocol and baseline, run the search, summarise.

This is the API the CLI calls. Everything a study needs to be understood later (protocol,
fp32 baseline, units) is stored in the study itself, so ``optuna-dashboard`` and later commands
read the same facts the search used.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.config import RunConfig
from quide_search.errors import ConfigError, StorageError, did_you_mean
from quide_search.metric import LATENCY_UNIT, RECORD_KEYS, Gate
from quide_search.pareto import pareto_front
from quide_search.plan import FLOAT, atomic_write_text
from quide_search.storage import open_storage, sqlite_path, study_names

if TYPE_CHECKING:
    import optuna

    from quide_search.scorer import Scorer

__all__ = [
    "PROTOCOL_SCHEMA_VERSION",
    "SearchSummary",
    "best_row",
    "completed_rows",
    "load_study",
    "run_search",
    "summarize",
]

PROTOCOL_SCHEMA_VERSION = 1
# The protocol fields that must match for a resume: anything that changes what a number means.
_PROTOCOL_KEYS = ("model", "dataset", "splits", "bits", "gate", "latency", "eval_batch_size")


@dataclass(frozen=True)
class SearchSummary:
    """What a finished (or resumed) search reports."""

    study_name: str
    storage_url: str
    baseline: dict[str, Any]
    uniform: list[dict[str, Any]]
    best: dict[str, Any] | None
    completed: int
    failed: int
    distinct_plans: int
    pareto_path: Path
    pareto: list[dict[str, Any]]
    latency: dict[str, Any]


def load_study(*, study: str, storage: str) -> optuna.Study:
    """Load an existing study, never creating one.

    Raises:
        StorageError: If the storage cannot be opened or holds no study of that name.
    """
    import optuna

    backend = open_storage(storage, must_exist=True)
    names = study_names(backend)
    if study not in names:
        raise StorageError(
            f"--study must name a study in {storage!r}, but {study!r} is not there."
            + did_you_mean(study, names)
            + (f" Studies: {', '.join(names)}." if names else " The storage holds no studies.")
        )
    return optuna.load_study(study_name=study, storage=backend)


def completed_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Return one row per completed trial: trial number, plan (params) and its metrics."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "P" not in t.user_attrs:
            continue
        row = {"trial": t.number, "plan": dict(t.params)}
        row.update({k: t.user_attrs[k] for k in RECORD_KEYS})
        rows.append(row)
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the best completed row, with a ``feasible`` flag; None when there are no rows.

    The best row has the highest I' among rows passing the gate; when none passes, the highest
    I' (then I) among all rows, so a run without a feasible plan still reports its best-so-far.
    Ties go to the earlier trial.
    """
    feasible = [r for r in rows if r["gate_passed"]]
    pool = feasible or rows
    if not pool:
        return None
    best = max(pool, key=lambda r: (r["I_prime"], r["I"], -r["trial"]))
    return {**best, "feasible": bool(feasible)}


def _protocol(config: RunConfig, scorer: Scorer) -> dict[str, Any]:
    import optimum.quanto
    import optuna
    import torch

    from quide_search import __version__

    return {
        "schema_version": PROTOCOL_SCHEMA_VERSION,
        "model": config.model,
        "dataset": config.dataset,
        "splits": scorer.task.splits.describe(),
        "bits": list(config.bits),
        "gate": config.gate_settings(),
        "latency": {k: v for k, v in scorer.context.to_dict().items() if k != "torch_version"},
        "eval_batch_size": config.eval_batch_size,
        "seed": config.seed,
        "unit": LATENCY_UNIT,
        "versions": {
            "quide_search": __version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "optimum_quanto": getattr(optimum.quanto, "__version__", "unknown"),
        },
    }


def _check_protocol(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    for key in _PROTOCOL_KEYS:
        if stored.get(key) != current.get(key):
            raise ConfigError(
                f"resuming study {name!r} needs the same {key} as when it was created, but it "
                f"was {stored.get(key)!r} and is now {current.get(key)!r}. Use the original "
                "flags, or start a new study with --study NAME."
            )


def _baseline(study: optuna.Study, scorer: Scorer, gate_settings: dict[str, Any]) -> Gate:
    """Measure the fp32 baseline once per study and return the gate built from it."""
    stored = study.user_attrs.get("baseline")
    if stored is None:
        measurement = scorer.measure(scorer.float_plan())
        provisional = Gate(baseline_P=measurement.P, **gate_settings)
        metrics = measurement.metrics(baseline_bytes=scorer.baseline_bytes, gate=provisional)
        stored = {**metrics.to_dict(), "latency_repeats": measurement.latency_repeats}
        study.set_user_attr("baseline", stored)
    return Gate(baseline_P=stored["P"], **gate_settings)


def _enqueue_uniform(study: optuna.Study, layers: list[str], bits: tuple[str, ...]) -> None:
    if study.user_attrs.get("uniform_enqueued"):
        return
    for qtype in bits:
        if qtype != FLOAT:
            study.enqueue_trial({name: qtype for name in layers}, skip_if_exists=True)
    study.set_user_attr("uniform_enqueued", True)


def run_search(
    config: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print
) -> SearchSummary:
    """Create or resume the study of ``config`` and run it until it holds ``trials`` completed.

    Running again with the same config does nothing more; a larger ``trials`` extends the study.

    Raises:
        QuideError: For bad settings or an unusable storage, before anything is written.
    """
    import optuna
    import torch

    from quide_search.latency import resolve_device
    from quide_search.scorer import Scorer
    from quide_search.search import PlanObjective
    from quide_search.task import load_task

    device = resolve_device(config.device)
    # The task first: an unknown model or dataset must fail before any storage file exists.
    task = load_task(model=config.model, dataset=config.dataset)
    storage_url = config.storage_url
    if config.storage is None:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    backend = open_storage(storage_url)
    torch.manual_seed(config.seed)
    scorer = Scorer.for_config(task, config, device=device)
    protocol = _protocol(config, scorer)
    existing = config.study_name in study_names(backend)
    if existing:
        stored = optuna.load_study(study_name=config.study_name, storage=backend)
        _check_protocol(stored.user_attrs.get("protocol", {}), protocol, config.study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=config.study_name,
        storage=backend,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        load_if_exists=True,
    )
    if not existing:
        study.set_user_attr("protocol", protocol)
        with warnings.catch_warnings():
            # set_metric_names is marked experimental but has been stable since Optuna 3.2.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["I_prime"])
    gate = _baseline(study, scorer, config.gate_settings())
    _enqueue_uniform(study, list(task.layers), config.bits)
    objective = PlanObjective(scorer=scorer, gate=gate, choices=config.bits)
    _optimize(study, objective, config.trials, progress=progress, echo=echo)
    return summarize(study, storage_url=storage_url, out_dir=config.out_dir)


def _optimize(
    study: optuna.Study,
    objective: Any,
    target: int,
    *,
    progress: bool,
    echo: Callable[[str], None],
) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from tqdm import tqdm

    from quide_search.errors import TrialEvaluationError

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    remaining = target - done
    if remaining <= 0:
        return
    bar = tqdm(total=target, initial=done, desc="trials", unit="trial", disable=not progress)

    best = [float("-inf")]

    def _report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            best[0] = max(best[0], float(trial.value or 0.0))
            bar.update(1)
            bar.set_postfix(best_I_prime=f"{best[0]:.3f}")
        elif trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "unexpected error")
            (bar.write if progress else echo)(f"trial {trial.number} failed: {reason}")

    try:
        # Failed trials do not count towards the target, so allow as many again before giving up.
        study.optimize(
            objective,
            n_trials=2 * remaining + 10,
            catch=(TrialEvaluationError,),
            callbacks=[MaxTrialsCallback(target, states=(TrialState.COMPLETE,)), _report],
        )
    finally:
        bar.close()


def summarize(study: optuna.Study, *, storage_url: str, out_dir: str | Path) -> SearchSummary:
    """Summarise a study from storage and persist its Pareto front as JSON next to it."""
    import optuna

    rows = completed_rows(study)
    uniform = _unique_by_plan([r for r in rows if len(set(r["plan"].values())) == 1])
    best = best_row(rows)
    front = [dict(p) for p in pareto_front(rows)]
    path = _pareto_path(study.study_name, storage_url, out_dir)
    payload = {
        "study": study.study_name,
        "unit": LATENCY_UNIT,
        "objectives": {"C": "max", "P": "max", "T_ms": "min"},
        "front": front,
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    study.set_user_attr(
        "pareto_front", [{k: p[k] for k in ("trial", "C", "P", "T_ms")} for p in front]
    )
    failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    return SearchSummary(
        study_name=study.study_name,
        storage_url=storage_url,
        baseline=dict(study.user_attrs.get("baseline", {})),
        uniform=uniform,
        best=best,
        completed=len(rows),
        failed=failed,
        distinct_plans=len({json.dumps(r["plan"], sort_keys=True) for r in rows}),
        pareto_path=path,
        pareto=front,
        latency=dict(study.user_attrs.get("protocol", {}).get("latency", {})),
    )


def _unique_by_plan(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(next(iter(r["plan"].values())), r)
    return sorted(seen.values(), key=lambda r: -r["avg_weight_bits"])


def _pareto_path(study: str, storage_url: str, out_dir: str | Path) -> Path:
    db = sqlite_path(storage_url)
    folder = db.parent if db is not None else Path(out_dir)
    return folder / f"{study}.pareto.json"
