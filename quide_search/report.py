"""Plain-text tables for the terminal: search summaries, sweeps and replays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.metric import knee

if TYPE_CHECKING:
    from quide_search.replay import Replay
    from quide_search.study import SearchSummary
    from quide_search.sweep import SweepResult

__all__ = [
    "cell_text",
    "format_replay",
    "format_studies",
    "format_study",
    "format_summary",
    "format_sweep",
    "format_table",
    "gate_text",
    "plan_text",
]

_COLUMNS = ("C", "P", "T_ms", "I", "I_prime")


def cell_text(value: Any) -> str:
    """Return one table cell: pass/FAIL for the gate, 4 decimals for numbers below 1000."""
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
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


def _row(label: str, m: Mapping[str, Any], extra: Sequence[Any] = ()) -> list[Any]:
    return [label, *(m[c] for c in _COLUMNS), m["gate_passed"], *extra]


def latency_text(latency: Mapping[str, Any]) -> str:
    """Say what T is: unit, batch, threads, device, method, and the reference it is paired with."""
    from quide_search.latency import reference_label

    threads = latency.get("threads")
    text = (
        f"T in ms at batch {latency.get('batch_size')}, {threads} "
        f"thread{'' if threads == 1 else 's'} on {latency.get('device')} ({latency.get('method')}"
    )
    reference = latency.get("reference_ms")
    if reference is not None:
        paired = reference_label(latency.get("reference_qtypes"))
        text += f", paired with {paired} at {reference:.4g} ms per pass"
    sample = latency.get("sample_ms")
    if sample is not None:
        text += f", samples of >= {sample:g} ms"
    return text + ")"


def format_summary(summary: SearchSummary) -> str:
    """Return the end-of-run table: fp32 baseline, best uniform plan, best found plan."""
    rows = [_row("fp32 baseline", summary.baseline, ["-"])]
    if summary.uniform:
        best_uniform = knee(summary.uniform)
        label = "best uniform (" + next(iter(best_uniform["plan"].values())) + ")"
        rows.append(_row(label, best_uniform, [best_uniform["trial"]]))
    if summary.best is not None:
        rows.append(_row("best found", summary.best, [summary.best["trial"]]))
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"{summary.completed} completed trials ({summary.distinct_plans} distinct plans), "
        f"{summary.pruned} stopped early, {summary.failed} failed; "
        f"{latency_text(summary.latency)}",
        "",
        format_table(["plan", *_COLUMNS, "gate", "trial"], rows),
    ]
    if summary.best is not None:
        if not summary.best["feasible"]:
            lines.append(
                "\nno trial is feasible (accuracy gate, size and latency limits); the "
                "best-so-far by I' then I is shown."
            )
        plan = ", ".join(f"{k}={v}" for k, v in summary.best["plan"].items())
        lines.append(f"\nbest plan: {plan}")
    lines += _search_notes(summary)
    if summary.running:
        lines.append(
            f"\n{summary.running} trial(s) still marked RUNNING: other workers' trials, or those "
            "of a worker killed recently; once their heartbeat is stale the next run fails them "
            "and retries their plans once."
        )
    lines.append(f"Pareto front ({len(summary.pareto)} points): {summary.pareto_path}")
    return "\n".join(lines)


def _search_notes(summary: SearchSummary) -> list[str]:
    lines = []
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


def format_sweep(result: SweepResult) -> str:
    """Return the uniform-precision table with the knee marked."""
    rows = [
        [
            r["precision"],
            *(r[c] for c in _COLUMNS),
            r["gate_passed"],
            "<- knee" if r is result.knee else "",
        ]
        for r in result.rows
    ]
    lat = result.latency
    return "\n".join(
        [
            f"uniform sweep of {result.name}: {latency_text(lat)}",
            f"gate: P >= {result.gate['threshold']:.4f}",
            "",
            format_table(["precision", *_COLUMNS, "gate", ""], rows),
            "",
            f"knee: {result.knee['precision']}",
            f"wrote {result.json_path} and {result.csv_path}",
        ]
    )


def format_replay(replay: Replay) -> str:
    """Return the measured metrics beside the stored ones and the reproduction verdict."""
    rows = [_row("measured", replay.measured.to_dict())]
    if all(c in replay.stored for c in _COLUMNS):
        rows.append(_row("stored", replay.stored))
    verdict = {
        True: "P reproduced exactly",
        False: "P differs from the stored P",
        None: "the plan stores no P to compare",
    }[replay.reproduced]
    table = format_table(["", *_COLUMNS, "gate"], rows)
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
        parts.append(f"fp32 P - {settings['max_drop']}")
    if settings.get("min_accuracy") is not None:
        parts.append(f"floor {settings['min_accuracy']}")
    return f"P >= {gate.threshold:.4f} ({', '.join(parts)})"


def plan_text(plan: Mapping[str, str]) -> str:
    """Return a plan as ``layer=qtype, ...`` (short qtype names)."""
    return ", ".join(f"{k}={v.removeprefix('q')}" for k, v in plan.items())


def format_sensitivity(study: str, table: Mapping[str, Any]) -> str:
    """Return the sensitivity table, most sensitive (group, qtype) first."""
    from quide_search.sensitivity import sensitivity_rows

    rows = [
        [r["group"], r["qtype"], f"{r['kl']:.3g}", f"{r['accuracy_change']:+.4f}"]
        for r in sensitivity_rows(table["groups"])
    ]
    return "\n".join(
        [
            f"sensitivity of study {study!r}: each group quantized alone, on the {table['split']} "
            f"split ({table['samples']} samples), {table['seconds']:.1f} s",
            "",
            format_table(["layer", "qtype", "KL(float||q)", "dP"], rows),
        ]
    )


def format_studies(rows: Sequence[Mapping[str, Any]]) -> str:
    """Return the ``studies`` table: one line per study with counts, best I' and baseline."""
    if not rows:
        return "no studies found"

    def dash(value: Any) -> Any:
        return "-" if value is None else value

    table = [
        [
            r["study"], r["task"], r["complete"], r.get("pruned", 0), r["failed"], r["running"],
            dash(r["best_I_prime"]), dash(r["best_trial"]), dash(r["baseline_P"]),
            dash(r["baseline_T_ms"]), r["storage"],
        ]
        for r in rows
    ]  # fmt: skip
    headers = ["study", "task", "done", "pruned", "failed", "running", "best I'", "trial"]
    return format_table([*headers, "fp32 P", "fp32 T_ms", "storage"], table)


def format_study(summary: SearchSummary) -> str:
    """Return ``show``: protocol, baseline, uniform rows, the best plan and the Pareto front."""
    protocol = summary.protocol
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"task {protocol.get('model')}/{protocol.get('dataset')}, bits "
        f"{','.join(protocol.get('bits', []))}, gate {gate_text(summary)}, "
        f"{latency_text(summary.latency)}",
        f"{summary.completed} completed, {summary.pruned} stopped early, {summary.failed} "
        f"failed, {summary.running} running",
        "",
        format_table(
            ["plan", *_COLUMNS, "gate", "trial"],
            [_row("fp32 baseline", summary.baseline, ["-"])]
            + [
                _row("uniform " + next(iter(r["plan"].values())), r, [r["trial"]])
                for r in summary.uniform
            ],
        ),
    ]
    if summary.best is not None:
        kind = "best feasible" if summary.best["feasible"] else "best so far (none feasible)"
        lines += ["", f"{kind}: trial {summary.best['trial']}, I' {summary.best['I_prime']:.4f}"]
        lines.append(f"  {plan_text(summary.best['plan'])}")
    front = [
        [p["trial"], *(p[c] for c in _COLUMNS), p["gate_passed"], plan_text(p["plan"])]
        for p in sorted(summary.pareto, key=lambda p: -p["C"])
    ]
    lines += ["", f"Pareto front over (C max, P max, T min): {len(front)} points", ""]
    lines.append(format_table(["trial", *_COLUMNS, "gate", "plan"], front))
    return "\n".join(lines)
