"""The terminal summary of a study: what ``run`` prints at its end and ``show`` prints later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quide_search.metric import metric_value
from quide_search.output.text import (
    METRIC_COLUMNS,
    excluded_text,
    format_table,
    kept_float_text,
    latency_text,
    metric_headers,
    metric_row,
    plan_text,
)

if TYPE_CHECKING:
    from quide_search.records import TrialRow
    from quide_search.results import TestResult
    from quide_search.study.summary import SearchSummary

__all__ = ["format_study", "format_summary", "gate_text", "verdict_lines"]


def verdict_lines(summary: SearchSummary) -> list[str]:
    """What to deploy: the recommended plan, or the float model when quantizing loses."""
    best = summary.best
    if best is None:
        return ["no trial completed yet."]
    if summary.keep_float:
        from quide_search.study.summary import float_score

        score = float_score(summary.baseline)
        return [
            f"keep the model in float for this target: its I' ({score:.4f}) is higher "
            f"than every feasible plan's (best: trial {best.trial}, {best.I_prime:.4f}).",
        ]
    lines = []
    tested = summary.tested
    if not best.feasible and tested:
        lines.append("no finalist passes the gate on both the search split and the held-out "
                     "test split (and the size and latency limits); the best-so-far by I' "
                     "then I is shown.")  # fmt: skip
    elif not best.feasible:
        lines.append("no trial is feasible (accuracy gate, size and latency limits); the "
                     "best-so-far by I' then I is shown.")  # fmt: skip
    by = "confirmed I'" if best.confirmed else "I'"
    if tested and best.feasible:
        by += ", passing the gate on the test split too"
    lines.append(f"recommended plan (trial {best.trial}, best by {by}): {plan_text(best.plan)}")
    if best.p_test is not None:
        lines.append(
            f"its P: {best.row.P:.4f} on the search split it was selected on, "
            f"{best.p_test:.4f} on the held-out test split ({_held_out(summary)})."
        )
    return lines


def _held_out(summary: SearchSummary) -> str:
    """What the test split is held out from: the search always; the float model's training
    only for a built-in classifier whose weights quide-search trained or ships (weights
    given with --weights, a factory's and a pretrained language model's may have seen it)."""
    task = summary.protocol.get("task", {})
    origin = task.get("weights_origin")
    trained_here = (
        str(origin).startswith("trained:")
        if origin is not None  # studies before weights_origin was recorded: the old rule
        else task.get("kind") == "classifier" and not task.get("weights")
    )
    if trained_here:
        return "held out from the search and the float model's training: the unbiased estimate"
    return "held out from the search; whether the float weights were trained on it is not known"


def format_summary(summary: SearchSummary) -> str:
    """Return the end-of-run table: float baseline, best uniform plan, recommended plan."""
    uniform = []
    if summary.uniform:
        from quide_search.metric import knee

        best_uniform = knee(summary.uniform)
        uniform.append((f"best uniform ({_precision(best_uniform)})", best_uniform))
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"{_count(summary.completed, 'completed trial')} "
        f"({_count(summary.distinct_plans, 'distinct plan')}), "
        f"{summary.pruned} stopped early, {summary.failed} failed"
        + (f", {summary.waiting} queued and not run" if summary.waiting else "")
        + f"; {latency_text(summary.latency)}",
        "",
        _plans_table(summary, uniform),
        "",
        *verdict_lines(summary),
    ]
    lines += _notes(summary)
    if summary.running:
        lines.append(
            f"\n{summary.running} trial(s) still marked RUNNING: other workers' trials, or those "
            "of a worker killed recently; once their heartbeat is stale the next run fails them "
            "and retries their plans once."
        )
    lines.append(f"Pareto front ({_count(len(summary.pareto), 'point')}): {summary.pareto_path}")
    return "\n".join(lines)


def format_study(summary: SearchSummary) -> str:
    """Return ``show``: protocol, baseline, uniform rows, the recommendation and the front."""
    protocol = summary.protocol
    task = protocol.get("task", {})
    uniform = [(f"uniform {_precision(r)}", r) for r in summary.uniform]
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"task {task.get('model')}/{task.get('dataset')}, backend {protocol.get('backend')}, "
        f"bits {','.join(protocol.get('search', {}).get('precisions', []))}, gate "
        f"{gate_text(summary)}, {latency_text(summary.latency)}",
        f"{summary.completed} completed, {summary.pruned} stopped early, {summary.failed} "
        f"failed, {summary.running} running, {summary.waiting} queued and not run",
        "",
        _plans_table(summary, uniform),
        "",
        *verdict_lines(summary),
    ]
    for note in (kept_float_text(protocol), excluded_text(protocol)):
        if note:
            lines += ["", note]
    lines += _test_notes(summary.test)
    front = [
        [p.trial, *(metric_value(p, c) for c in METRIC_COLUMNS), p.gate_passed, plan_text(p.plan)]
        for p in sorted(summary.pareto, key=lambda p: -p.C)
    ]
    lines += ["", f"Pareto front over (C max, P max, T min): {_count(len(front), 'point')}", ""]
    lines.append(format_table(["trial", *METRIC_COLUMNS, "gate", "plan"], front))
    return "\n".join(lines)


def gate_text(summary: SearchSummary) -> str:
    """Return the study's gate as ``P >= threshold`` with how the threshold was set."""
    from quide_search.metric import Gate

    settings = summary.protocol.get("gate") or {}
    if "P" not in summary.baseline:
        return str(settings)
    gate = Gate(baseline_P=summary.baseline["P"], **settings)
    parts = []
    if settings.get("max_drop") is not None:
        parts.append(f"float P - {settings['max_drop']}")
    if settings.get("min_accuracy") is not None:
        parts.append(f"floor {settings['min_accuracy']}")
    return f"P >= {gate.threshold:.4f} ({', '.join(parts)})"


def _notes(summary: SearchSummary) -> list[str]:
    lines = []
    for note in (kept_float_text(summary.protocol), excluded_text(summary.protocol)):
        if note:
            lines.append("\n" + note)
    if summary.confirmation:
        c = summary.confirmation
        lines.append(
            f"\nconfirmation: {len(c.entries)} finalists re-timed by measurement in "
            f"{c.rounds} interleaved rounds ({c.seconds:.1f} s); T_conf and I'_conf "
            "are theirs, and the recommendation uses them."
        )
        for key, reason in c.failed.items():
            lines.append(f"  finalist {key} could not be re-timed: {reason}")
    lines += _test_notes(summary.test)
    if summary.warm_start_skipped:
        lines.append(f"\nno warm-start plans: {summary.warm_start_skipped}")
    if summary.early_stop:
        lines.append(
            f"\nearly stopping: {summary.early_stop['pruned']} trial(s) proved to fail the gate "
            f"spent {summary.early_stop['mean_eval_fraction']:.0%} of a full evaluation on "
            "average."
        )
    if summary.latency_table_check:
        lines.append("\n" + _table_check_text(summary))
    if summary.latency_warning:
        lines.append("\n" + summary.latency_warning)
    return lines


def _table_check_text(summary: SearchSummary) -> str:
    """The latency table's errors on the plans its check timed whole, and whether it was used.

    Studies made before tables were checked (schema 2) stored the uniform plans' errors alone.
    """
    rows = summary.latency_table_check or []
    errors = ", ".join(f"{c['plan']} {c['error']:+.0%}" for c in rows)
    if summary.latency_table_schema != 3:
        return f"latency table vs measured T on the uniform plans: {errors}"
    from quide_search.latency.table_check import TableCheck

    verdict = TableCheck.from_list(rows).verdict(summary.latency.get("threads"))
    return f"latency table vs T timed whole, interleaved: {errors}\n{verdict}"


def _test_notes(test: TestResult | None) -> list[str]:
    """What the held-out test step did, in a line (and one per failed finalist)."""
    if not test:
        return []
    lines = []
    if test.entries and test.gate:
        lines.append(
            f"\ntest split: {len(test.entries)} finalists (float included) scored on "
            f"{test.samples} held-out samples the search never saw ({test.seconds:.2f} s); "
            f"its gate is P_test >= {test.gate.threshold:.4f} (around the float model's "
            f"{test.gate.baseline_P:.4f}). The recommendation must pass it too."
        )
    if "float" in test.failed:
        lines.append("\ntest gate not applied: the float model could not be scored on the test "
                     "split, so the recommendation rests on the search split alone.")  # fmt: skip
    for key, reason in test.failed.items():
        lines.append(f"  finalist {key} could not be scored on the test split: {reason}")
    return lines


def _plans_table(summary: SearchSummary, uniform: list[tuple[str, TrialRow]]) -> str:
    """The float baseline, the labelled uniform rows and the recommended plan, with the
    confirmed and test columns the study has."""
    if summary.best is not None:
        uniform = [*uniform, ("recommended", summary.best.row)]
    labelled: list[tuple[str, Mapping[str, Any]]] = [("float baseline", summary.baseline)]
    labelled += [(label, summary.finalist(row).to_dict()) for label, row in uniform]
    confirmed = summary.confirmation is not None
    rows = [
        metric_row(label, row, confirmed, [row.get("trial", "-")], tested=summary.tested)
        for label, row in labelled
    ]
    return format_table(metric_headers("plan", confirmed, "trial", tested=summary.tested), rows)


def _precision(row: TrialRow) -> str:
    """The precision of a uniform plan's row."""
    return str(next(iter(row.plan.values())))


def _count(n: int, noun: str) -> str:
    """``1 point``, ``2 points``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
