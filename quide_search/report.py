"""Plain-text tables for the terminal: search summaries, sweeps and replays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quide_search.replay import Replay
    from quide_search.study import SearchSummary
    from quide_search.sweep import SweepResult

__all__ = ["format_replay", "format_summary", "format_sweep", "format_table"]

_COLUMNS = ("C", "P", "T_ms", "I", "I_prime")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a fixed-width text table (right-aligned numbers, left-aligned first column)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [values[0].ljust(widths[0])]
        parts += [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _row(label: str, m: Mapping[str, Any], extra: Sequence[Any] = ()) -> list[Any]:
    return [label, *(m[c] for c in _COLUMNS), m["gate_passed"], *extra]


def format_summary(summary: SearchSummary) -> str:
    """Return the end-of-run table: fp32 baseline, best uniform plan, best found plan."""
    rows = [_row("fp32 baseline", summary.baseline, ["-"])]
    if summary.uniform:
        best_uniform = max(summary.uniform, key=lambda r: (r["I_prime"], r["I"]))
        label = "best uniform (" + next(iter(best_uniform["plan"].values())) + ")"
        rows.append(_row(label, best_uniform, [best_uniform["trial"]]))
    if summary.best is not None:
        rows.append(_row("best found", summary.best, [summary.best["trial"]]))
    lines = [
        f"study {summary.study_name!r} in {summary.storage_url}",
        f"{summary.completed} completed trials ({summary.distinct_plans} distinct plans), "
        f"{summary.failed} failed; T in ms at batch {summary.latency.get('batch_size')}, "
        f"{summary.latency.get('threads')} threads on {summary.latency.get('device')}",
        "",
        format_table(["plan", *_COLUMNS, "gate", "trial"], rows),
    ]
    if summary.best is not None:
        if not summary.best["feasible"]:
            lines.append("\nno trial passed the accuracy gate; the best-so-far by I is shown.")
        plan = ", ".join(f"{k}={v}" for k, v in summary.best["plan"].items())
        lines.append(f"\nbest plan: {plan}")
    if summary.running:
        lines.append(
            f"\n{summary.running} trial(s) still marked RUNNING: other workers' trials, or those "
            "of a worker killed recently; once their heartbeat is stale the next run fails them "
            "and retries their plans once."
        )
    lines.append(f"Pareto front ({len(summary.pareto)} points): {summary.pareto_path}")
    return "\n".join(lines)


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
            f"uniform sweep of {result.name}: T in ms, batch {lat['batch_size']}, "
            f"{lat['threads']} threads on {lat['device']} ({lat['method']})",
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
    return "\n".join([format_table(["", *_COLUMNS, "gate"], rows), "", verdict])
