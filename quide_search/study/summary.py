"""Reading a study back: its rows, its best plan, its Pareto front, and a summary of it all.

Everything here reads storage and writes nothing (except :func:`persist_front`), so ``show``,
``report``, ``export`` and ``studies`` change no file they read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import StorageError, did_you_mean
from quide_search.files import atomic_write_text, stamped
from quide_search.metric import LATENCY_UNIT
from quide_search.records import StudyKey, TrialKey, TrialRow
from quide_search.results import Confirmation, Finalist, TestResult
from quide_search.study.pareto import pareto_front
from quide_search.study.storage import open_storage, sqlite_path, study_names

if TYPE_CHECKING:
    import optuna

    from quide_search.protocol import Protocol

__all__ = [
    "SearchSummary",
    "best_row",
    "completed_rows",
    "front_path",
    "list_studies",
    "load_study",
    "persist_front",
    "read_study",
    "stored_confirmation",
    "stored_test",
    "study_baseline",
    "study_front",
    "summarize",
]


@dataclass(frozen=True)
class SearchSummary:
    """What a finished (or resumed) search reports.

    ``best`` is the recommended plan: the best feasible by confirmed I' where the study's
    finalists were confirmed, else by the search's I', among the finalists whose P also
    passes the gate on the held-out test split (``test``) where they were scored on it.
    ``keep_float`` says that the float
    model scores a higher I' than every feasible plan, so quantizing does not pay here.
    ``lost_workers`` says how each worker process of this run that did not end well ended.
    """

    study_name: str
    storage_url: str
    baseline: dict[str, Any]
    uniform: list[TrialRow]
    best: Finalist | None
    completed: int
    failed: int
    pruned: int
    running: int
    waiting: int
    distinct_plans: int
    pareto_path: Path
    pareto: list[TrialRow]
    protocol: dict[str, Any]
    keep_float: bool = False
    confirmation: Confirmation | None = None
    test: TestResult | None = None
    latency_warning: str | None = None
    early_stop: dict[str, Any] | None = None
    latency_table_check: list[dict[str, Any]] | None = None
    latency_table_schema: int | None = None
    warm_start_skipped: str | None = None
    lost_workers: tuple[str, ...] = ()

    @property
    def latency(self) -> dict[str, Any]:
        """How the study's T was obtained: its protocol's latency context, with ``source``
        ``measured`` (and ``table_rejected``) where the table's check sent it to measured T."""
        latency = dict(self.protocol.get("latency", {}))
        if self.latency_table_schema == 3 and self.latency_table_check:
            from quide_search.latency.table_check import TableCheck

            if not TableCheck.from_list(self.latency_table_check).passed:
                latency.update(source="measured", table_rejected=True)
        return latency

    def finalist(self, row: TrialRow) -> Finalist:
        """``row`` with its confirmed T and its test P where it was a finalist."""
        confirmed = self.confirmation.by_trial() if self.confirmation else {}
        tested = self.test.by_trial() if self.test else {}
        return Finalist(row, row.feasible, confirmed.get(row.trial), tested.get(row.trial))

    @property
    def tested(self) -> bool:
        """Whether the finalists were scored on the held-out test split."""
        return bool(self.test and self.test.entries)

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON types (for ``show --json``): each record as its
        ``to_dict`` gives it."""
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data["pareto_path"] = str(self.pareto_path)
        data["latency"] = self.latency
        return data


def _plain(value: Any) -> Any:
    """A field's value as plain JSON types: a record by its ``to_dict``, lists item by item."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else copy.deepcopy(value)


def load_study(*, study: str, storage: str) -> optuna.Study:
    """Load an existing study, never creating one (nor changing its file).

    Raises:
        StorageError: If the storage cannot be opened or holds no study of that name.
    """
    import optuna

    backend = open_storage(storage, must_exist=True, read_only=True)
    names = study_names(backend)
    if study not in names:
        raise StorageError(
            f"--study must name a study in {storage!r}, but {study!r} is not there."
            + did_you_mean(study, names)
            + (f" Studies: {', '.join(names)}." if names else " The storage holds no studies.")
        )
    return optuna.load_study(study_name=study, storage=backend)


def read_study(*, study: str, storage: str) -> tuple[optuna.Study, Protocol]:
    """Load a study quide-search made, read-only, with its protocol.

    Raises:
        StorageError: If the study is missing, was made by another program (it has no
            protocol) or by an earlier version of quide-search.
    """
    from quide_search.protocol import Protocol

    loaded = load_study(study=study, storage=storage)
    if not _ours(loaded):
        raise StorageError(
            f"--study must name a study quide-search created, but {study!r} in {storage!r} "
            "has no quide-search protocol (another program made it). Open it with "
            "optuna-dashboard, or name a quide-search study."
        )
    return loaded, Protocol.from_dict(loaded.user_attrs[StudyKey.PROTOCOL], study=study)


def completed_rows(study: optuna.Study) -> list[TrialRow]:
    """Return one row per completed trial: its number, per-layer plan and metrics."""
    import optuna

    from quide_search.search.space import trial_plan

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [
        TrialRow.from_attrs(t.number, trial_plan(t), t.user_attrs)
        for t in trials
        if TrialKey.P in t.user_attrs
    ]


def study_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Return the Pareto front of completed rows, one point per distinct plan.

    A plan proposed again reuses its first trial's metrics, so its later trials are the same
    point; the front keeps the first trial of each plan.
    """
    first: dict[str, TrialRow] = {}
    for r in rows:
        first.setdefault(r.plan_key, r)
    return pareto_front(list(first.values()))


def stored_confirmation(study: optuna.Study) -> Confirmation | None:
    """The study's stored confirmation record, if it has one."""
    data = study.user_attrs.get(StudyKey.CONFIRMATION)
    return Confirmation.from_dict(data) if data else None


def stored_test(study: optuna.Study) -> TestResult | None:
    """The study's stored test-split record, if it has one."""
    data = study.user_attrs.get(StudyKey.TEST)
    return TestResult.from_dict(data) if data else None


def study_baseline(
    study: optuna.Study,
    confirmation: Confirmation | None = None,
    test: TestResult | None = None,
) -> dict[str, Any]:
    """The float model's stored metrics, with its confirmed T and its test P where the study
    has them (``confirmation`` and ``test``: the study's records, read here if not given)."""
    baseline = dict(study.user_attrs.get(StudyKey.BASELINE, {}))
    confirmation = confirmation or stored_confirmation(study)
    test = test or stored_test(study)
    for record in (confirmation, test):
        entry = record.of_float() if record else None
        baseline.update(entry.values() if entry else {})
    return baseline


def list_studies(storage_urls: list[str]) -> list[dict[str, Any]]:
    """Return one overview row per study in each storage: counts, best I', baseline.

    Storages are opened read-only. A study without quide-search's protocol is listed with
    its counts and the task ``(not a quide-search study)``.
    """
    import optuna

    rows = []
    for url in storage_urls:
        backend = open_storage(url, must_exist=True, read_only=True)
        for name in study_names(backend):
            study = optuna.load_study(study_name=name, storage=backend)
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            summary = summarize(study, storage_url=url, out_dir=".") if _ours(study) else None
            best = summary.best if summary else None
            task = summary.protocol.get("task", {}) if summary else {}
            rows.append(
                {
                    "storage": url,
                    "study": name,
                    "task": f"{task.get('model')}/{task.get('dataset')}"
                    if summary
                    else "(not a quide-search study)",
                    "complete": states.count("COMPLETE"),
                    "pruned": states.count("PRUNED"),
                    "failed": states.count("FAIL"),
                    "running": states.count("RUNNING"),
                    "best_I_prime": best.I_prime if best and best.feasible else None,
                    "best_trial": best.trial if best else None,
                    "baseline_P": summary.baseline.get("P") if summary else None,
                    "baseline_T_ms": summary.baseline.get("T_ms") if summary else None,
                }
            )
    return rows


def _ours(study: optuna.Study) -> bool:
    return StudyKey.PROTOCOL in study.user_attrs


def best_row(rows: list[TrialRow]) -> Finalist | None:
    """Return the best completed trial by the search's I', as a :class:`Finalist` whose
    ``feasible`` says whether any trial was.

    The highest I' among feasible rows (passing the gate and any size or latency limit);
    when none is feasible, the highest I' (then I) among all rows, so a run without a
    feasible plan still reports its best-so-far. Ties go to the earlier trial.
    """
    feasible = [r for r in rows if r.feasible]
    pool = feasible or rows
    if not pool:
        return None
    return Finalist(max(pool, key=rank), bool(feasible))


def rank(scored: TrialRow | Finalist) -> tuple[float, float, int]:
    """The order plans are recommended in: I' (a finalist's by its confirmed T where
    confirmed), then I, then the earlier trial."""
    return scored.I_prime, scored.I, -scored.trial


def recommended(
    rows: list[TrialRow],
    confirmation: Confirmation | None,
    test: TestResult | None = None,
) -> Finalist | None:
    """Return the recommended plan.

    Among the finalists (those confirmed, else those scored on the test split), the best
    by confirmed I' (else the search's I') that is feasible on the search split (by its
    confirmed T where confirmed) and whose P on the held-out test split passes the gate
    around the float model's test P. Without finalists, the best row by the search's I'
    (:func:`best_row`). When no finalist qualifies, :func:`best_row`'s choice with
    ``feasible`` False (and its test P where it has one).
    """
    confirmed = confirmation.by_trial() if confirmation else {}
    tested = test.by_trial() if test else {}
    by_number = {r.trial: r for r in rows}
    pool = [
        Finalist(by_number[n], False, confirmed.get(n), tested.get(n))
        for n in (confirmed or tested)
        if n in by_number
    ]
    if not pool:
        return best_row(rows)
    qualifying = [f for f in pool if _qualifies(f, tested=bool(tested))]
    if not qualifying:
        best = best_row(rows)
        return None if best is None else Finalist(best.row, False, tested=tested.get(best.trial))
    return dataclasses.replace(max(qualifying, key=rank), feasible=True)


def _qualifies(finalist: Finalist, *, tested: bool) -> bool:
    """Feasible on the search split (confirmed where confirmed) and, where the finalists were
    scored on the test split, passing its gate too."""
    confirmed = finalist.confirmed
    feasible = confirmed.feasible_confirmed if confirmed else finalist.row.feasible
    passed_test = finalist.tested is not None and finalist.tested.gate_passed_test
    return feasible and (not tested or passed_test)


def summarize(study: optuna.Study, *, storage_url: str, out_dir: str | Path) -> SearchSummary:
    """Summarise a study from storage, the Pareto front recomputed from its trials."""
    import optuna

    from quide_search.study.warnings import early_stop_savings, latency_warnings

    rows = completed_rows(study)
    attrs = study.user_attrs
    confirmation = stored_confirmation(study)
    test = stored_test(study)
    baseline = study_baseline(study, confirmation, test)
    best = recommended(rows, confirmation, test)
    states = optuna.trial.TrialState
    by_state = {s: study.get_trials(deepcopy=False, states=(s,)) for s in states}
    return SearchSummary(
        study_name=study.study_name,
        storage_url=storage_url,
        baseline=baseline,
        uniform=_uniform(rows),
        best=best,
        completed=len(rows),
        failed=len(by_state[states.FAIL]),
        pruned=len(by_state[states.PRUNED]),
        running=len(by_state[states.RUNNING]),
        waiting=len(by_state[states.WAITING]),
        distinct_plans=len({r.plan_key for r in rows}),
        pareto_path=front_path(study.study_name, storage_url, out_dir),
        pareto=study_front(rows),
        protocol=dict(attrs.get(StudyKey.PROTOCOL, {})),
        keep_float=_keep_float(baseline, best),
        confirmation=confirmation,
        test=test,
        latency_warning=latency_warnings(study),
        early_stop=early_stop_savings(by_state[states.PRUNED]),
        latency_table_check=attrs.get(StudyKey.LATENCY_TABLE_CHECK),
        latency_table_schema=(attrs.get(StudyKey.LATENCY_TABLE) or {}).get("schema_version"),
        warm_start_skipped=attrs.get(StudyKey.WARM_START_SKIPPED),
    )


def persist_front(study: optuna.Study, summary: SearchSummary) -> None:
    """Write the Pareto front as JSON beside the study and store it as a study attribute."""
    payload = stamped({
        "study": study.study_name,
        "unit": LATENCY_UNIT,
        "objectives": {"C": "max", "P": "max", "T_ms": "min"},
        "front": [p.to_dict() for p in summary.pareto],
    })  # fmt: skip
    atomic_write_text(summary.pareto_path, json.dumps(payload, indent=2) + "\n")
    study.set_user_attr(
        StudyKey.PARETO_FRONT,
        [{"trial": p.trial, "C": p.C, "P": p.P, "T_ms": p.T_ms} for p in summary.pareto],
    )


def _keep_float(baseline: Mapping[str, Any], best: Finalist | None) -> bool:
    """Whether the float model's I' beats the recommended plan's (both confirmed if they were)."""
    if not baseline or best is None or not best.feasible:
        return False
    return bool(float_score(baseline) > best.I_prime)


def float_score(baseline: Mapping[str, Any]) -> float:
    """The float model's I': by its confirmed T where confirmed, else as stored."""
    return float(baseline.get("I_prime_confirmed", baseline.get(TrialKey.I_PRIME, 0.0)))


def _uniform(rows: list[TrialRow]) -> list[TrialRow]:
    seen: dict[str, TrialRow] = {}
    for r in rows:
        if r.uniform:
            seen.setdefault(next(iter(r.plan.values())), r)
    return sorted(seen.values(), key=lambda r: -r.avg_weight_bits)


def front_path(study: str, storage_url: str, out_dir: str | Path) -> Path:
    """Where a study's Pareto front JSON goes: beside its SQLite file, or under ``out_dir``."""
    db = sqlite_path(storage_url)
    folder = db.parent if db is not None else Path(out_dir)
    return folder / f"{study}.pareto.json"
