"""Plain-text tables for the terminal: the cells and columns every table shares, and the
studies, sweep, replay, sensitivity and budget tables (a study's summary: :mod:`.summary_text`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.records import SCORE_KEYS, TrialKey

if TYPE_CHECKING:
    from quide_search.output.replay import Replay
    from quide_search.results import BudgetAnswer
    from quide_search.study.sweep import SweepResult

__all__ = [
    "METRIC_COLUMNS",
    "cell_text",
    "format_budget",
    "format_replay",
    "format_sensitivity",
    "format_studies",
    "format_sweep",
    "format_table",
    "excluded_text",
    "kept_float_text",
    "latency_text",
    "metric_headers",
    "metric_row",
    "plan_text",
]

METRIC_COLUMNS = tuple(k for k in SCORE_KEYS if k != TrialKey.GATE_PASSED)
"""The metric columns of every table, in order."""
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

    rule = "  ".join(("-" if h else " ") * w for h, w in zip(headers, widths, strict=True))
    return "\n".join([line(list(headers)), rule.rstrip(), *(line(r) for r in cells)])


def metric_row(
    label: str,
    m: Mapping[str, Any],
    confirmed: bool,
    extra: Sequence[Any] = (),
    *,
    tested: bool = False,
) -> list[Any]:
    """One table row; ``tested`` adds P and the gate on the held-out test split."""
    row = [label, m["C"], m["P"], *((m.get("P_test"),) if tested else ()), m["T_ms"], m["I"]]
    row += [
        m[TrialKey.I_PRIME],
        m["gate_passed"],
        *((m.get("gate_passed_test"),) if tested else ()),
    ]
    if confirmed:
        row += [m.get(c) for c in _CONFIRMED]
    return [*row, *extra]


def metric_headers(first: str, confirmed: bool, *extra: str, tested: bool = False) -> list[str]:
    """The headers of :func:`_row`'s columns; with a test split, P is labelled by split."""
    p = ("P_search", "P_test") if tested else ("P",)
    gate = ("gate", "gate_test") if tested else ("gate",)
    conf = ("T_conf", "I'_conf") if confirmed else ()
    return [first, "C", *p, "T_ms", "I", TrialKey.I_PRIME, *gate, *conf, *extra]


def latency_text(latency: Mapping[str, Any]) -> str:
    """Say what T is: unit, batch, threads, device, and where it comes from."""
    from quide_search.latency import SourceKind

    threads = latency.get("threads")
    source = str(latency.get("source", "measured"))
    how = {
        "measured": f"measured, {latency.get('method')}",
        "table": "per-layer table read in whole-model runs, checked before use",
    }.get(source, f"analytic estimate for {latency.get('device')}")
    text = (
        f"T in ms at batch {latency.get('batch_size')}, {threads} "
        f"thread{'' if threads == 1 else 's'} on {latency.get('device')} ({how}"
    )
    if latency.get("decode"):
        text += ", per generated token"
    sample = latency.get("sample_ms")
    if sample is not None and source == SourceKind.MEASURED:
        text += f", samples of >= {sample:g} ms"
    if latency.get("table_rejected"):
        text += ", as the latency table failed its check"
    return text + ")"


def excluded_text(protocol: Mapping[str, Any]) -> str | None:
    """The protocol's note on precisions left out of some layers' choices, or None."""
    from pydantic import ValidationError

    from quide_search.protocol import Search

    try:
        return Search.model_validate(protocol.get("search") or {}).exclusion_line()
    except ValidationError:
        return None


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


def format_sweep(result: SweepResult) -> str:
    """Return the uniform-precision table with the knee marked."""
    confirmed = any("T_confirmed_ms" in r for r in result.rows)
    rows = [
        metric_row(
            r["precision"] + (f" ({plan_text(r['other_layers'])})" if "other_layers" in r else ""),
            r,
            confirmed,
            ["<- knee" if r is result.knee else ""],
        )  # fmt: skip
        for r in result.rows
    ]
    return "\n".join(
        [
            f"uniform sweep of {result.name}: {latency_text(result.latency)}",
            f"gate: P >= {result.gate['threshold']:.4f}",
            "",
            format_table(metric_headers("precision", confirmed, ""), rows),
            "",
            f"knee: {result.knee['precision']}"
            + (" (by confirmed I', the rows timed side by side)" if confirmed else ""),
            f"wrote {result.json_path} and {result.csv_path}",
        ]
    )


def format_replay(replay: Replay) -> str:
    """Return the measured metrics beside the stored ones and the reproduction verdict."""
    measured = {**replay.measured.to_dict(), "P_test": replay.p_test,
                "gate_passed_test": replay.gate_passed_test}  # fmt: skip
    rows = [metric_row("measured", measured, False, tested=True)]
    if all(c in replay.stored for c in METRIC_COLUMNS):
        rows.append(metric_row("stored", replay.stored, False, tested=True))
    both = "P and P_test" if "P_test" in replay.stored else "P (no P_test stored: not a finalist)"
    if replay.stored_backend != replay.plan.backend:
        verdict = (
            f"applied with {replay.plan.backend}; the stored metrics were measured with "
            f"{replay.stored_backend}, so P is not compared"
        )
    else:
        verdict = {
            True: f"{both} reproduced exactly",
            False: "P or P_test differs from the stored value",
            None: "the plan stores no P to compare",
        }[replay.reproduced]
    if replay.compression_differs:
        verdict += (
            f"; the stored C {float(replay.stored['C']):.4g} is not the C of the bytes this plan "
            f"stores ({replay.measured.C:.4f}): the record was changed after export"
        )
    table = format_table(metric_headers("", False, tested=True), rows)
    return "\n".join([latency_text(replay.latency), "", table, "", verdict])


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


def format_budget(answer: BudgetAnswer) -> str:
    """The answer to ``show --max-size-mb/--max-latency-ms``: the best stored plan within.

    Where the study scored its finalists on the held-out test split, a plan within the
    budget that was not one of them has no P_test, and the answer says so.
    """
    best = answer.best
    if best is None:
        return str(answer.why)
    confirmed, tested = best.confirmed is not None, best.tested is not None
    untested = (
        [f"P on the held-out test split: not scored (trial {best.trial} was not a "
         "finalist); export it and run `quide-search evaluate` on the plan to score it."]
        if answer.test_split and not tested else []
    )  # fmt: skip
    row = metric_row("within budget", best.to_dict(), confirmed, [best.trial], tested=tested)
    return "\n".join([
        f"best within {answer.budget.text()}, among the {answer.trials} stored trials (by "
        f"{'confirmed' if confirmed else 'the search' + chr(39) + 's'} I'; no new search):",
        "",
        format_table(metric_headers("plan", confirmed, "trial", tested=tested), [row]),
        "",
        f"plan (trial {best.trial}): {plan_text(best.plan)}",
        *untested,
    ])  # fmt: skip
