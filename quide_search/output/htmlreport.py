"""One self-contained HTML report of a study, drawn with plotly (its JavaScript embedded once).

The report opens offline: no CDN, no server. It holds the Pareto front (C against P, colour T,
the knee and the best I' marked, the plan on hover), I' over the trials, the per-layer bit-widths
of the front's plans, the uniform rows, the finalists' confirmed T and their P on the search and
held-out test splits, and the sensitivity table when the study stores one.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.files import atomic_write_text, check_replaceable
from quide_search.metric import knee, metric_value
from quide_search.output.summary_text import gate_text, verdict_lines
from quide_search.output.text import (
    METRIC_COLUMNS,
    cell_text,
    kept_float_text,
    latency_text,
    plan_text,
)
from quide_search.plan import weight_bits
from quide_search.records import StudyKey, TrialKey, TrialRow
from quide_search.study.summary import SearchSummary, completed_rows, read_study, summarize

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["PLOT_IDS", "build_figures", "is_report", "write_report"]

PLOT_IDS = ("pareto", "progress", "bits")
_GENERATOR_TAG = '<meta name="generator" content="quide-search">'


def is_report(path: Path) -> bool:
    """Whether ``path`` is an HTML report quide-search wrote (it carries a generator tag)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return _GENERATOR_TAG in f.read(4096)
    except OSError:
        return False


def write_report(
    *, study: str, storage: str, out: str | os.PathLike[str], png: bool = False
) -> list[Path]:
    """Write the HTML report of a study (and, with ``png``, one PNG per plot); return paths.

    Raises:
        StorageError: If the study does not exist.
        ConfigError: If ``png`` is asked and kaleido cannot render.
    """
    import plotly.offline

    path = Path(out)
    pngs = [path.with_name(f"{path.stem}-{key}.png") for key in PLOT_IDS] if png else []
    check_replaceable(path, ours=is_report, flag="--out")
    for image in pngs:  # a plot of an earlier report of ours sits beside it
        check_replaceable(image, ours=lambda _: is_report(path), flag="--png's file")
    loaded, _ = read_study(study=study, storage=storage)
    summary = summarize(loaded, storage_url=storage, out_dir="studies")
    rows = completed_rows(loaded)
    figures = build_figures(summary, rows)
    sections = [
        figures[k].to_html(full_html=False, include_plotlyjs=False, div_id=k) for k in PLOT_IDS
    ]
    page = _page(summary, rows, sections, loaded.user_attrs.get(StudyKey.SENSITIVITY))
    page = page.replace("/*PLOTLY*/", plotly.offline.get_plotlyjs())
    atomic_write_text(path, page)
    written = [path]
    if png:
        written += _write_pngs(figures, path)
    return written


def _uniform_rows(summary: SearchSummary) -> list[Any]:
    """The float model (its stored metrics) and the uniform plans' rows, which the knee is
    chosen from."""
    return [{**summary.baseline, "trial": "float", "plan": {}}, *summary.uniform]


def build_figures(summary: SearchSummary, rows: Sequence[TrialRow]) -> dict[str, go.Figure]:
    """Return the report's plotly figures, keyed by the ids in :data:`PLOT_IDS`."""
    return {
        "pareto": _pareto_figure(summary, rows),
        "progress": _progress_figure(rows),
        "bits": _bits_figure(summary),
    }


def _hover(r: object) -> str:
    """A point's hover text; ``r`` a trial's row or the float model's stored metrics."""
    c, p, t, prime, trial, plan = (
        metric_value(r, k) for k in ("C", "P", "T_ms", TrialKey.I_PRIME, "trial", "plan")
    )
    layers = plan_text(plan) if plan else "all layers float"
    return f"trial {trial}<br>C {c:.3f}, P {p:.4f}, T {t:.4f} ms<br>I' {prime:.4f}<br>{layers}"


def _pareto_figure(summary: SearchSummary, rows: Sequence[TrialRow]) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[r.C for r in rows], y=[r.P for r in rows], mode="markers",
            name="all trials", marker={"color": "lightgrey", "size": 7},
            hovertext=[_hover(r) for r in rows], hoverinfo="text",
        )
    )  # fmt: skip
    front = summary.pareto
    fig.add_trace(
        go.Scatter(
            x=[p.C for p in front], y=[p.P for p in front], mode="markers",
            name="Pareto front over (C, P, T)", hovertext=[_hover(p) for p in front],
            hoverinfo="text",
            marker={
                "size": 11, "color": [p.T_ms for p in front], "colorscale": "Viridis",
                "colorbar": {"title": {"text": "T (ms)"}}, "showscale": True,
            },
        )
    )  # fmt: skip
    for label, point, symbol in (
        ("knee (best uniform I')", knee(_uniform_rows(summary)), "star"),
        ("recommended", summary.best.row if summary.best else None, "diamond"),
    ):
        if point:
            fig.add_trace(
                go.Scatter(
                    x=[metric_value(point, "C")], y=[metric_value(point, "P")],
                    mode="markers", name=label,
                    marker={"symbol": symbol, "size": 18, "color": "crimson",
                            "line": {"width": 1, "color": "black"}},
                    hovertext=[_hover(point)], hoverinfo="text",
                )
            )  # fmt: skip
    fig.update_layout(
        title=f"C against P (colour: T in ms); gate: {gate_text(summary)}",
        xaxis_title="C (compression from stored bytes)", yaxis_title="P (accuracy)",
        height=560, legend={"orientation": "h", "y": -0.2},
    )  # fmt: skip
    return fig


def _progress_figure(rows: Sequence[TrialRow]) -> go.Figure:
    import plotly.graph_objects as go

    ordered = sorted(rows, key=lambda r: r.trial)
    best, running = float("-inf"), []
    for r in ordered:
        best = max(best, r.I_prime)
        running.append(best)
    numbers = [r.trial for r in ordered]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=numbers, y=[r.I_prime for r in ordered], mode="markers", name="I' of the trial",
            hovertext=[_hover(r) for r in ordered], hoverinfo="text",
        )
    )  # fmt: skip
    fig.add_trace(go.Scatter(x=numbers, y=running, mode="lines", name="best so far"))
    fig.update_layout(title="I' over trials", xaxis_title="trial", yaxis_title="I'", height=420)
    return fig


def _bits_figure(summary: SearchSummary) -> go.Figure:
    import plotly.graph_objects as go

    front = summary.pareto
    layers = list(front[0].plan) if front else []
    z = [[weight_bits(p.plan[name]) for name in layers] for p in front]
    text = [[p.plan[name].removeprefix("q") for name in layers] for p in front]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=layers, y=[f"trial {p.trial} (C {p.C:.2f})" for p in front],
            text=text, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=32,
            colorbar={"title": {"text": "bits"}},
        )
    )  # fmt: skip
    fig.update_layout(
        title="Per-layer weight precision of the Pareto front's plans",
        height=max(300, 60 + 28 * len(front)),
    )
    return fig


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _uniform_table(summary: SearchSummary) -> str:
    candidates = _uniform_rows(summary)
    best = knee(candidates)
    rows = [
        [
            next(iter(metric_value(r, "plan").values()), "float"),
            *(metric_value(r, c) for c in METRIC_COLUMNS),
            metric_value(r, "gate_passed"),
            "knee" if r is best else "",
        ]
        for r in candidates
    ]
    return _table(["precision", *METRIC_COLUMNS, "gate", ""], rows)


def _sensitivity_table(sensitivity: Any) -> str:
    """The stored sensitivity (``{"groups": {group: {precision: {kl, accuracy_change}}}}``)."""
    from quide_search.search.sensitivity import sensitivity_rows

    if not sensitivity or not sensitivity.get("groups"):
        return "<p>This study stores no sensitivity analysis.</p>"
    rows = [
        [r["group"], r["precision"], f"{r['kl']:.3g}", f"{r['accuracy_change']:+.4f}"]
        for r in sensitivity_rows(sensitivity["groups"])
    ]
    caption = (
        f"<p>Each group quantized alone, on the {html.escape(str(sensitivity['split']))} split "
        f"({sensitivity['samples']} samples); most sensitive first.</p>"
    )
    return caption + _table(["layer", "precision", "KL(float||q)", "dP"], rows)


def _confirmation_table(summary: SearchSummary) -> str:
    confirmation = summary.confirmation
    if not confirmation:
        return "<p>The finalists were not re-timed (an analytic T, or --confirm-top 0).</p>"
    search = _known_rows(summary)
    body = [
        [e.trial, _value(search, e.trial, "T_ms"), e.T_confirmed_ms,
         _value(search, e.trial, TrialKey.I_PRIME), e.I_prime_confirmed,
         f"{e.confirm_spread:.1%}", e.confirm_rounds]
        for e in confirmation.entries
    ]  # fmt: skip
    caption = (
        f"<p>{len(body)} finalists re-timed by measurement in {confirmation.rounds} "
        "interleaved, order-rotated rounds; the recommendation uses the confirmed I'.</p>"
    )
    headers = ["trial", "T_ms (search)", "T_ms (confirmed)", "I' (search)", "I' (confirmed)",
               "spread", "rounds"]  # fmt: skip
    return caption + _table(headers, body)


def _test_table(summary: SearchSummary, completed: Sequence[TrialRow]) -> str:
    """The finalists' P on the search split beside their P on the held-out test split."""
    test = summary.test
    if not test or not test.entries or not test.gate:
        return "<p>This study's finalists were not scored on a held-out test split.</p>"
    rows = {**_known_rows(summary), **{r.trial: r for r in completed}}
    body = [
        [e.trial, _value(rows, e.trial, "P"), e.P_test, _value(rows, e.trial, "gate_passed"),
         e.gate_passed_test]
        for e in test.entries
    ]  # fmt: skip
    caption = (
        f"<p>{len(body)} finalists scored on {test.samples} held-out samples the search never "
        f"saw; gate there P_test &ge; {test.gate.threshold:.4f} (around the float "
        "model's test P). The search selected on P (search split), so P (test split) is the "
        "estimate to expect; the recommendation passes both gates.</p>"
    )
    headers = ["trial", "P (search split)", "P (test split)", "gate (search)", "gate (test)"]
    return caption + _table(headers, body)


def _known_rows(summary: SearchSummary) -> dict[Any, Any]:
    """The summary's known rows (float, front, uniform, recommended) by trial: the float
    model's stored metrics, and trial rows."""
    rows: list[Any] = [*summary.pareto, *summary.uniform]
    rows += [summary.best.row] if summary.best else []
    return {"float": summary.baseline, **{r.trial: r for r in rows}}


def _value(rows: Mapping[Any, Any], trial: int | str, name: str) -> Any:
    """A known row's metric ``name``, None where the trial is not known."""
    return metric_value(rows[trial], name) if trial in rows else None


def _page(
    summary: SearchSummary,
    completed: Sequence[TrialRow],
    sections: Sequence[str],
    sensitivity: Any,
) -> str:
    lat = summary.latency
    title = html.escape(f"quide-search report: {summary.study_name}")
    protocol = summary.protocol
    task = protocol.get("task", {})
    facts = html.escape(
        f"{task.get('model')}/{task.get('dataset')}; backend {protocol.get('backend')}; bits "
        f"{', '.join(protocol.get('search', {}).get('precisions', []))}; {summary.completed} "
        f"completed, {summary.pruned} stopped early, {summary.failed} failed trials; "
        f"{latency_text(lat)}"
    )
    kept = kept_float_text(protocol)
    if kept:
        facts += f"</p><p>{html.escape(kept)}"
    best_line = html.escape(" ".join(verdict_lines(summary)))
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{_GENERATOR_TAG}<title>{title}</title>
<style>{style}</style><script>/*PLOTLY*/</script></head><body>
<h1>{title}</h1>
<p>{facts}</p>
<p>I = C&middot;P / log2(T+1); I&prime; = I when P passes the gate, else 0. {best_line}</p>
<h2>Pareto front</h2>{sections[0]}
<h2>Search progress</h2>{sections[1]}
<h2>Bit-widths on the front</h2>{sections[2]}
<h2>Uniform precisions</h2>{_uniform_table(summary)}
<h2>Confirmation</h2>{_confirmation_table(summary)}
<h2>Held-out test split</h2>{_test_table(summary, completed)}
<h2>Sensitivity</h2>{_sensitivity_table(sensitivity)}
</body></html>
"""


def _write_pngs(figures: Mapping[str, go.Figure], html_path: Path) -> list[Path]:
    from quide_search.errors import ConfigError

    paths = []
    for key, fig in figures.items():
        path = html_path.with_name(f"{html_path.stem}-{key}.png")
        try:
            fig.write_image(str(path), width=1100, height=int(fig.layout.height or 500))
        except Exception as e:  # kaleido missing, or no browser it can start
            reason = " ".join(str(e).split())[:200]
            raise ConfigError(
                f"--png needs kaleido and a Chrome or Chromium it can start, but writing "
                f"{str(path)!r} failed: {reason}. Install kaleido, or drop --png."
            ) from e
        paths.append(path)
    return paths
