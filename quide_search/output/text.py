"""Plain-text tables for the terminal: search summaries, studies, sweeps and replays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quide_search.output.replay import Replay
    from quide_search.study.summary import SearchSummary
    from quide_search.study.sweep import SweepResult

__all__ = [
    "cell_text",
    "format_budget",
    "format_replay",
    "format_sensitivity",
    "format_studies",
    "format_study",
    "format_summary",
    "format_sweep",
    "format_table",
    "gate_text",
    "kept_float_text",
    "latency_text",
    "plan_text",
    "verdict_lines",
]

_COLUMNS = ("C", "P", "T_ms", "I", "I_prime")
_CONFIRMED = ("T_confirmed_ms", "I_prime_confirmed")


def cell_text(value: Any) -> str:
    """Return one table cell: pass/FAIL for the gate, 4 decimals for numbers below 1000."""
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    if value is None:
        return "-"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a fixed-width text table (right-aligned numbers, left-aligned first column)."""
    cells = [[cell_text(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [values[0].ljust(widths[0])]
        parts += [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _row(
    label: str,
    m: Mapping[str, Any],
    confirmed: bool,
    extra: Sequence[Any] = (),
    *,
    tested: bool = False,
) -> list[Any]:
    """One table row; ``tested`` adds P and the gate on the held-out test split."""
    row = [label, m["C"], m["P"], *((m.get("P_test"),) if tested else ()), m["T_ms"], m["I"]]
    row += [m["I_prime"], m["gate_passed"], *((m.get("gate_passed_test"),) if tested else ())]
    if confirmed:
        row += [m.get(c) for c in _CONFIRMED]
    return [*row, *extra]


def _headers(first: str, confirmed: bool, *extra: str, tested: bool = False) -> list[str]:
    """The headers of :func:`_row`'s columns; with a test split, P is labelled by split."""
    p = ("P_search", "P_test") if tested else ("P",)
    gate = ("gate", "gate_test") if tested else ("gate",)
    conf = ("T_conf", "I'_conf") if confirmed else ()
    return [first, "C", *p, "T_ms", "I", "I_prime", *gate, *conf, *extra]


def latency_text(latency: Mapping[str, Any]) -> str:
    """Say what T is: unit, batch, threads, device, and where it comes from."""
    threads = latency.get("threads")
    source = str(latency.get("source", "measured"))
    how = {
        "measured": f"measured, {latency.get('method')}",
        "table": "per-layer table, each layer timed once and summed",
    }.get(source, f"analytic estimate for {latency.get('device')}")
    text = (
        f"T in ms at batch {latency.get('batch_size')}, {threads} "
        f"thread{'' if threads == 1 else 's'} on {latency.get('device')} ({how}"
    )
    if latency.get("decode"):
        text += ", per generated token"
    sample = latency.get("sample_ms")
    if sample is not None and source == "measured":
        text += f", samples of >= {sample:g} ms"
    return text + ")"


def kept_float_text(protocol: Mapping[str, Any]) -> str | None:
    """Say which layers no plan quantizes and why, or None when every layer is searched.

    E.g. ``kept in float: 3 ConvTranspose2d, 1 Conv1d (the quanto backend, 0.2.7, has no
    quantized version of them); lm_head (left out of the search: --include-head adds it)``.
    """
    task = protocol.get("task", {})
    kinds = dict(task.get("kept_float") or {})
    excluded = list(task.get("excluded") or ())
    if not kinds and not excluded:
        return None
    parts = []
    if kinds:
        parts.append(
            ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            + f" (the {protocol.get('backend')} backend, {protocol.get('backend_version')}, "
            "has no quantized version of them)"
        )
    if excluded:
        how = (
            " (left out of the search: --include-head adds it)"
            if excluded == ["lm_head"]
            else (" (left out of the search by the task)")
        )
        parts.append(", ".join(excluded) + how)
    return "kept in float: " + "; ".join(parts)


def plan_text(plan: Mapping[str, str]) -> str:
    """Return a plan as ``layer=precision, ...``."""
    return ", ".join(f"{k}={v}" for k, v in plan.items())


def verdict_lines(summary: SearchSummary) -> list[str]:
    """What to deploy: the recommended plan, or the float model when quantizing loses."""
    best = summary.best
    if best is None:
        return ["no trial completed yet."]
    if summary.keep_float:
        float_score = summary.baseline.get("I_prime_confirmed", summary.baseline.get("I_prime"))
        plan_score = best.get("I_prime_confirmed", best["I_prime"])
        return [
            f"keep the model in float for this target: its I' ({float_score:.4f}) is higher "
            f"than every feasible plan's (best: trial {best['trial']}, {plan_score:.4f}).",
        ]
    lines = []
    tested = bool((summary.test or {}).get("entries"))
    if not best["feasible"]:
        where = " on the search split and the held-out test split" if tested else ""
        lines.append(f"no trial is feasible{where} (accuracy gate, size and latency limits); "
                     "the best-so-far by I' then I is shown.")  # fmt: skip
    by = "confirmed I'" if "I_prime_confirmed" in best else "I'"
    if tested and best["feasible"]:
        by += ", passing the gate on the test split too"
    lines.append(
        f"recommended plan (trial {best['trial']}, best by {by}): {plan_text(best['plan'])}"
    )
    if best.get("P_test") is not None:
        lines.append(
            f"its P: {best['P']:.4f} on the search split it was selected on, "
            f"{best['P_test']:.4f} on the held-out test split (the unbiased estimate)."
        )
    return lines


def format_summary(summary: SearchSummary) -> str:
    """Return the end-of-run table: float baseline, best uniform plan, recommended plan."""
    confirmed = summary.confirmation is not None
    tested = _tested(summary)
    rows = [_row("float baseline", summary.baseline, confirmed, ["-"], tested=tested)]
    if summary.uniform:
        from quide_search.metric import knee

        best_uniform = knee(summary.uniform)
        label = "best uniform (" + next(iter(best_uniform["plan"].values())) + ")"
        rows.append(_row(label, _with_confirmed(summary, best_uniform), confirmed,
                         [best_uniform["trial"]], tested=tested))  # fmt: skip
    if summary.best is not None:
        rows.append(_row("recommended", summary.best, confirmed, [summary.best["trial"]],
                         tested=tested))  # fmt: skip
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"{_count(summary.completed, 'completed trial')} "
        f"({_count(summary.distinct_plans, 'distinct plan')}), "
        f"{summary.pruned} stopped early, {summary.failed} failed"
        + (f", {summary.waiting} queued and not run" if summary.waiting else "")
        + f"; {latency_text(summary.latency)}",
        "",
        format_table(_headers("plan", confirmed, "trial", tested=tested), rows),
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


def _count(n: int, noun: str) -> str:
    """``1 point``, ``2 points``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _tested(summary: SearchSummary) -> bool:
    """Whether the study's finalists were scored on the held-out test split."""
    return bool((summary.test or {}).get("entries"))


def _with_confirmed(summary: SearchSummary, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its confirmed T and its test P, where it was a finalist."""
    merged = dict(row)
    for record in (summary.confirmation, summary.test):
        entries = (record or {}).get("entries", [])
        entry: dict[str, Any] = next((e for e in entries if e["trial"] == row["trial"]), {})
        merged.update(entry)
    return merged


def _notes(summary: SearchSummary) -> list[str]:
    lines = []
    kept = kept_float_text(summary.protocol)
    if kept:
        lines.append("\n" + kept)
    if summary.confirmation:
        c = summary.confirmation
        lines.append(
            f"\nconfirmation: {len(c['entries'])} finalists re-timed by measurement in "
            f"{c['rounds']} interleaved rounds ({c['seconds']:.1f} s); T_conf and I'_conf "
            "are theirs, and the recommendation uses them."
        )
        for key, reason in c.get("failed", {}).items():
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
        errors = ", ".join(f"{c['plan']} {c['error']:+.0%}" for c in summary.latency_table_check)
        lines.append(f"\nlatency table vs measured T on the uniform plans: {errors}")
    if summary.latency_warning:
        lines.append("\n" + summary.latency_warning)
    return lines


def _test_notes(test: Mapping[str, Any] | None) -> list[str]:
    """What the held-out test step did, in a line (and one per failed finalist)."""
    if not test:
        return []
    lines = []
    if test.get("entries"):
        gate = test["gate"]
        lines.append(
            f"\ntest split: {len(test['entries'])} finalists (float included) scored on "
            f"{test['samples']} held-out samples the search never saw ({test['seconds']:.2f} s); "
            f"its gate is P_test >= {gate['threshold']:.4f} (around the float model's "
            f"{gate['baseline_P']:.4f}). The recommendation must pass it too."
        )
    for key, reason in test.get("failed", {}).items():
        lines.append(f"  finalist {key} could not be scored on the test split: {reason}")
    return lines


def format_sweep(result: SweepResult) -> str:
    """Return the uniform-precision table with the knee marked."""
    confirmed = any("T_confirmed_ms" in r for r in result.rows)
    rows = [
        _row(r["precision"], r, confirmed, ["<- knee" if r is result.knee else ""])
        for r in result.rows
    ]
    return "\n".join(
        [
            f"uniform sweep of {result.name}: {latency_text(result.latency)}",
            f"gate: P >= {result.gate['threshold']:.4f}",
            "",
            format_table(_headers("precision", confirmed, ""), rows),
            "",
            f"knee: {result.knee['precision']}"
            + (" (by confirmed I', the rows timed side by side)" if confirmed else ""),
            f"wrote {result.json_path} and {result.csv_path}",
        ]
    )


def format_replay(replay: Replay) -> str:
    """Return the measured metrics beside the stored ones and the reproduction verdict."""
    measured = {**replay.measured.to_dict(), "P_test": replay.p_test}
    rows = [_row("measured", measured, False, tested=True)]
    if all(c in replay.stored for c in _COLUMNS):
        rows.append(_row("stored", replay.stored, False, tested=True))
    both = "P and P_test" if "P_test" in replay.stored else "P (no P_test stored: not a finalist)"
    verdict = {
        True: f"{both} reproduced exactly",
        False: "P or P_test differs from the stored value",
        None: "the plan stores no P to compare",
    }[replay.reproduced]
    table = format_table(_headers("", False, tested=True), rows)
    return "\n".join([latency_text(replay.latency), "", table, "", verdict])


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


def format_sensitivity(study: str, table: Mapping[str, Any]) -> str:
    """Return the sensitivity table, most sensitive (group, precision) first."""
    from quide_search.search.sensitivity import sensitivity_rows

    rows = [
        [r["group"], r["precision"], f"{r['kl']:.3g}", f"{r['accuracy_change']:+.4f}"]
        for r in sensitivity_rows(table["groups"])
    ]
    return "\n".join(
        [
            f"sensitivity of study {study!r}: each group quantized alone, on the {table['split']} "
            f"split ({table['samples']} samples), {table['seconds']:.1f} s",
            "",
            format_table(["layer", "precision", "KL(float||q)", "dP"], rows),
        ]
    )


def format_studies(rows: Sequence[Mapping[str, Any]]) -> str:
    """Return the ``studies`` table: one line per study with counts, best I' and baseline."""
    if not rows:
        return "no studies found"
    table = [
        [
            r["study"], r["task"], r["complete"], r.get("pruned", 0), r["failed"], r["running"],
            r["best_I_prime"], r["best_trial"], r["baseline_P"], r["baseline_T_ms"], r["storage"],
        ]
        for r in rows
    ]  # fmt: skip
    headers = ["study", "task", "done", "pruned", "failed", "running", "best I'", "trial"]
    return format_table([*headers, "float P", "float T_ms", "storage"], table)


def format_budget(
    budget: Any, *, best: Mapping[str, Any] | None, why: str | None, trials: int
) -> str:
    """The answer to ``show --max-size-mb/--max-latency-ms``: the best stored plan within."""
    if best is None:
        return str(why)
    confirmed = "I_prime_confirmed" in best
    tested = "P_test" in best
    return "\n".join([
        f"best within {budget.text()}, among the {trials} stored trials (by "
        f"{'confirmed' if confirmed else 'the search' + chr(39) + 's'} I'; no new search):",
        "",
        format_table(_headers("plan", confirmed, "trial", tested=tested),
                     [_row("within budget", best, confirmed, [best["trial"]], tested=tested)]),
        "",
        f"plan (trial {best['trial']}): {plan_text(best['plan'])}",
    ])  # fmt: skip


def format_study(summary: SearchSummary) -> str:
    """Return ``show``: protocol, baseline, uniform rows, the recommendation and the front."""
    protocol = summary.protocol
    task = protocol.get("task", {})
    confirmed = summary.confirmation is not None
    tested = _tested(summary)
    uniform = [
        _row("uniform " + next(iter(r["plan"].values())), _with_confirmed(summary, r), confirmed,
             [r["trial"]], tested=tested)
        for r in summary.uniform
    ]  # fmt: skip
    if summary.best is not None:
        uniform.append(_row("recommended", summary.best, confirmed, [summary.best["trial"]],
                            tested=tested))  # fmt: skip
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"task {task.get('model')}/{task.get('dataset')}, backend {protocol.get('backend')}, "
        f"bits {','.join(protocol.get('search', {}).get('precisions', []))}, gate "
        f"{gate_text(summary)}, {latency_text(summary.latency)}",
        f"{summary.completed} completed, {summary.pruned} stopped early, {summary.failed} "
        f"failed, {summary.running} running, {summary.waiting} queued and not run",
        "",
        format_table(
            _headers("plan", confirmed, "trial", tested=tested),
            [_row("float baseline", summary.baseline, confirmed, ["-"], tested=tested), *uniform],
        ),
        "",
        *verdict_lines(summary),
    ]
    kept = kept_float_text(protocol)
    if kept:
        lines += ["", kept]
    lines += _test_notes(summary.test)
    front = [
        [p["trial"], *(p[c] for c in _COLUMNS), p["gate_passed"], plan_text(p["plan"])]
        for p in sorted(summary.pareto, key=lambda p: -p["C"])
    ]
    lines += ["", f"Pareto front over (C max, P max, T min): {len(front)} points", ""]
    lines.append(format_table(["trial", *_COLUMNS, "gate", "plan"], front))
    return "\n".join(lines)
