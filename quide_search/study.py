"""Studies: create or resume, record the protocol and baseline, run the search, summarise.

This is the API the CLI calls. Everything a study needs to be understood later (protocol,
fp32 baseline, units) is stored in the study itself, so ``optuna-dashboard`` and later commands
read the same facts the search used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.config import RunConfig
from quide_search.errors import StorageError, did_you_mean
from quide_search.files import atomic_write_text, check_replaceable, is_generated_json, stamped
from quide_search.metric import LATENCY_UNIT, RECORD_KEYS
from quide_search.pareto import pareto_front
from quide_search.storage import open_storage, sqlite_path, study_names

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SearchSummary",
    "best_row",
    "completed_rows",
    "list_studies",
    "study_front",
    "load_study",
    "run_search",
    "summarize",
]


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
    pruned: int
    running: int
    distinct_plans: int
    pareto_path: Path
    pareto: list[dict[str, Any]]
    latency: dict[str, Any]
    protocol: dict[str, Any]
    latency_warning: str | None = None
    early_stop: dict[str, Any] | None = None
    latency_table_check: list[dict[str, Any]] | None = None
    warm_start_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON types (for ``show --json``)."""
        data = dataclasses.asdict(self)
        data["pareto_path"] = str(self.pareto_path)
        return data


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

    from quide_search.search import trial_plan

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "P" not in t.user_attrs:
            continue
        row = {"trial": t.number, "plan": trial_plan(t)}
        row.update({k: t.user_attrs[k] for k in RECORD_KEYS})
        # Size and latency limits join the gate (studies from before them had only the gate).
        row["feasible"] = bool(t.user_attrs.get("feasible", row["gate_passed"]))
        rows.append(row)
    return rows


def study_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the Pareto front of completed rows, one point per distinct plan.

    A plan proposed again reuses its first trial's metrics, so its later trials are the same
    point; the front keeps the first trial of each plan.
    """
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(json.dumps(r["plan"], sort_keys=True), r)
    return [dict(p) for p in pareto_front(list(first.values()))]


def list_studies(storage_urls: list[str]) -> list[dict[str, Any]]:
    """Return one overview row per study in each storage: counts, best I', baseline."""
    import optuna

    rows = []
    for url in storage_urls:
        backend = open_storage(url, must_exist=True)
        for name in study_names(backend):
            study = optuna.load_study(study_name=name, storage=backend)
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            best = best_row(completed_rows(study))
            baseline = study.user_attrs.get("baseline", {})
            protocol = study.user_attrs.get("protocol", {})
            rows.append(
                {
                    "storage": url,
                    "study": name,
                    "task": f"{protocol.get('model', '?')}/{protocol.get('dataset', '?')}",
                    "complete": states.count("COMPLETE"),
                    "pruned": states.count("PRUNED"),
                    "failed": states.count("FAIL"),
                    "running": states.count("RUNNING"),
                    "best_I_prime": best["I_prime"] if best and best["feasible"] else None,
                    "best_trial": best["trial"] if best else None,
                    "baseline_P": baseline.get("P"),
                    "baseline_T_ms": baseline.get("T_ms"),
                }
            )
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the best completed row, with a ``feasible`` flag; None when there are no rows.

    The best row has the highest I' among feasible rows (passing the gate and any size or
    latency limit); when none is feasible, the highest I' (then I) among all rows, so a run
    without a feasible plan still reports its best-so-far. Ties go to the earlier trial.
    """
    feasible = [r for r in rows if r.get("feasible", r["gate_passed"])]
    pool = feasible or rows
    if not pool:
        return None
    best = max(pool, key=lambda r: (r["I_prime"], r["I"], -r["trial"]))
    return {**best, "feasible": bool(feasible)}


def run_search(
    config: RunConfig, *, progress: bool = True, echo: Callable[[str], None] = print
) -> SearchSummary:
    """Create or resume the study of ``config`` and run it until it holds ``trials`` completed.

    Running again with the same config does nothing more; a larger ``trials`` extends the study.
    With ``config.workers > 1``, that many processes (this one included) share the work.

    Raises:
        QuideError: For bad settings or an unusable storage, before anything is written.
        KeyboardInterrupt: After the running trials are recorded as failed and queued again.
    """
    import os

    from quide_search.session import open_session, optimize
    from quide_search.workers import WorkerPool

    pareto = _pareto_path(config.study_name, config.storage_url, config.out_dir)
    check_replaceable(pareto, ours=is_generated_json, flag="the Pareto front file")
    session = open_session(config)
    parallel = config.workers > 1 and config.trials > 0
    if parallel and session.objective.scorer.device.type == "cpu":
        echo(
            f"note: {config.workers} workers share {os.cpu_count()} CPU cores, so T is "
            "measured while other trials run; --threads 1 keeps them from oversubscribing."
        )
    pool: WorkerPool | None = None
    interrupted = False
    try:
        if parallel:
            pool = WorkerPool(config, config.workers - 1)
            if not pool.wait_ready():
                echo("warning: a worker failed to start; going on with those that did.")
        optimize(session, config.trials, progress=progress, echo=echo)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        for problem in pool.stop(interrupted=interrupted) if pool else []:
            echo(f"warning: {problem}")
    return summarize(session.study, storage_url=session.storage_url, out_dir=config.out_dir)


def summarize(
    study: optuna.Study, *, storage_url: str, out_dir: str | Path, persist: bool = True
) -> SearchSummary:
    """Summarise a study from storage, the Pareto front recomputed from its trials.

    With ``persist`` (after every run) the front is also written as JSON next to the study and
    stored as a study attribute; reading commands pass False and change nothing.
    """
    import optuna

    rows = completed_rows(study)
    uniform = _unique_by_plan([r for r in rows if len(set(r["plan"].values())) == 1])
    best = best_row(rows)
    front = study_front(rows)
    path = _pareto_path(study.study_name, storage_url, out_dir)
    payload = stamped(
        {
            "study": study.study_name,
            "unit": LATENCY_UNIT,
            "objectives": {"C": "max", "P": "max", "T_ms": "min"},
            "front": front,
        }
    )
    if persist:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        study.set_user_attr(
            "pareto_front", [{k: p[k] for k in ("trial", "C", "P", "T_ms")} for p in front]
        )
    states = optuna.trial.TrialState
    failed = len(study.get_trials(deepcopy=False, states=(states.FAIL,)))
    running = len(study.get_trials(deepcopy=False, states=(states.RUNNING,)))
    pruned = study.get_trials(deepcopy=False, states=(states.PRUNED,))
    return SearchSummary(
        study_name=study.study_name,
        storage_url=storage_url,
        baseline=dict(study.user_attrs.get("baseline", {})),
        uniform=uniform,
        best=best,
        completed=len(rows),
        failed=failed,
        pruned=len(pruned),
        running=running,
        distinct_plans=len({json.dumps(r["plan"], sort_keys=True) for r in rows}),
        pareto_path=path,
        pareto=front,
        latency=latency_context(study.user_attrs.get("protocol", {})),
        protocol=dict(study.user_attrs.get("protocol", {})),
        latency_warning=_latency_warnings(study),
        early_stop=_early_stop_savings(pruned),
        latency_table_check=study.user_attrs.get("latency_table_check"),
        warm_start_skipped=study.user_attrs.get("warm_start_skipped"),
    )


def _early_stop_savings(pruned: list[optuna.trial.FrozenTrial]) -> dict[str, Any] | None:
    """What early stopping saved: the evaluation share that the pruned trials spent."""
    spent = [
        t.user_attrs["samples_spent"] / t.user_attrs["eval_samples"]
        for t in pruned
        if t.user_attrs.get("eval_samples") and "samples_spent" in t.user_attrs
    ]
    if not spent:
        return None
    return {"pruned": len(spent), "mean_eval_fraction": sum(spent) / len(spent)}


def latency_context(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """Return how a study's T was obtained: its protocol's context, with the reference.

    The reference, its qtypes and the sample floor it was measured with are stored beside
    the context (``latency_reference_ms``, ``latency_reference_qtypes``,
    ``latency_sample_ms``) because the reference is measured when the study is created, not
    chosen; records show them together.
    """
    return {
        **protocol.get("latency", {}),
        "reference_ms": protocol.get("latency_reference_ms"),
        "sample_ms": protocol.get("latency_sample_ms"),
        "reference_qtypes": protocol.get("latency_reference_qtypes"),
    }


def _latency_warnings(study: optuna.Study) -> str | None:
    """What a reader of this study's T must know: fallback timed, or T that never settled."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    measured = [
        t for t in trials if not str(t.user_attrs.get("latency_source", "")).startswith("model:")
    ]
    latency = latency_context(study.user_attrs.get("protocol", {}))
    found = [w for w in (_fallback_warning(measured), _unsettled_warning(measured, latency)) if w]
    return "\n".join(found) if found else None


def _unsettled_warning(
    measured: list[optuna.trial.FrozenTrial], latency: dict[str, Any]
) -> str | None:
    """Say so when many measurements hit the pass cap with their passes still spread out.

    The median of such passes moves with the machine's load of the moment (on this
    project's 2-core VM, a pure-Python loop's median swings 1.7x within seconds), so T
    differences of a few percent between plans mean nothing there.
    """
    target = latency.get("target_spread")
    timed = [t for t in measured if t.user_attrs.get("latency_repeats")]
    if target is None or not timed:
        return None
    loose = sorted(float(t.user_attrs.get("latency_spread", 0.0)) for t in timed)
    unsettled = [x for x in loose if x > target]
    if 4 * len(unsettled) <= len(timed):
        return None
    return (
        f"warning: T did not settle in {len(unsettled)} of {len(timed)} measured trials: "
        f"after {_cap_text(latency)} the middle half still spread "
        f"by more than {target:.0%} of the median (median spread "
        f"{loose[len(loose) // 2]:.0%}). This machine's timing is noisy, so T differences "
        "of a few percent between plans are not significant. Keep other work off the "
        f"machine, {_threads_advice(latency)}or use --latency table or model:PROFILE."
    )


def _threads_advice(latency: Mapping[str, Any]) -> str:
    """Suggest one thread where T was timed on several CPU threads.

    On a shared CPU a pass on several threads waits for whichever core is slowed at the
    moment, and a slow spell slows a plan and its reference unequally, so pairing cannot
    cancel it all; on one thread, paired T repeated more closely
    (``benchmarks/timer_noise.py --threads 1,2``, benchmarks/RESULTS.md). Evaluation keeps
    its threads.
    """
    if latency.get("method") != "wall_clock" or int(latency.get("threads") or 1) <= 1:
        return ""
    return "time T on one thread (--latency-threads 1; T is then one-thread latency), "


def _cap_text(latency: Mapping[str, Any]) -> str:
    from quide_search.latency import max_pairs, reference_label

    cap = latency.get("max_repeats")
    unit = "samples" if latency.get("sample_ms") else "passes"
    if cap is None:
        return f"the most {unit}"
    if latency.get("reference_ms") is not None:
        pairs = max_pairs(int(latency["min_repeats"]), int(cap))
        return f"{pairs} pairs of {unit} with {reference_label(latency.get('reference_qtypes'))}"
    return f"{cap} {unit}"


def _fallback_warning(measured: list[optuna.trial.FrozenTrial]) -> str | None:
    """Say so when measured T mostly times optimum-quanto's dequantize fallback."""
    fallback = sum(len(t.user_attrs.get("fallback_layers", [])) for t in measured)
    kernel = sum(len(t.user_attrs.get("kernel_layers", [])) for t in measured)
    if fallback <= kernel:
        return None
    share = fallback / (fallback + kernel)
    return (
        f"warning: {share:.0%} of the quantized layers timed in this study ran no low-bit "
        "kernel (optimum-quanto dequantized their weights), so T mostly measures that "
        "overhead, not a speed-up. Use --latency model:PROFILE for a target device's estimate."
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
