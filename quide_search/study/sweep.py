"""The uniform-precision protocol: one row per precision (float, int8, int4, ...) and the knee.

The knee is the row with the highest I': the precision where compression, accuracy and latency
balance best under the gate. Rows are written as JSON and CSV for papers and spreadsheets. Each
row's T is taken by the sweep's latency source; where it is measured or tabled, the rows are
also timed side by side in interleaved rounds (as a run's finalists are) and the knee is chosen
on that confirmed T.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quide_search.config import RunConfig, plain_name
from quide_search.files import atomic_write_text, check_replaceable, is_generated_json, stamped
from quide_search.metric import LATENCY_UNIT, gated_index, intelligence_index, knee
from quide_search.plan import FLOAT
from quide_search.records import METRIC_KEYS, TrialKey

__all__ = ["SWEEP_COLUMNS", "SweepResult", "run_sweep"]

SWEEP_COLUMNS = (
    "precision", *METRIC_KEYS, "T_confirmed_ms", "I_prime_confirmed", "other_layers"
)  # fmt: skip
"""The CSV's columns (then ``knee``); ``other_layers``: ``layer=precision`` of the layers a
uniform row keeps at another precision, as they cannot run the row's."""


@dataclass(frozen=True)
class SweepResult:
    """The sweep table, its knee and where it was written; ``exclusions`` names the layers
    that cannot run a precision (each such row keeps them at another, in ``other_layers``)."""

    name: str
    rows: list[dict[str, Any]]
    knee: dict[str, Any]
    gate: dict[str, Any]
    latency: dict[str, Any]
    json_path: Path
    csv_path: Path
    exclusions: str | None = None


def run_sweep(config: RunConfig) -> SweepResult:
    """Measure the uniform plan of every precision in ``config.bits`` (float always first).

    ``--latency auto`` times each plan here (``measured``): the few uniform plans are timed
    whole anyway, side by side, so a per-layer table would cost more than it saves.

    Raises:
        QuideError: For bad settings, before anything is written.
    """
    from quide_search.latency import torch_threads
    from quide_search.measure.device import resolve_device
    from quide_search.measure.evaluator import check_task_runs
    from quide_search.measure.scorer import Scorer
    from quide_search.protocol_builder import build_protocol
    from quide_search.study.setup import check_paths
    from quide_search.tasks.resolver import load_task

    check_paths(config)
    if config.latency == "auto":
        config = dataclasses.replace(config, latency="measured")
    device = resolve_device(config.device)
    task = load_task(**config.task_options(), device_type=device.type)
    check_task_runs(task)
    # A factory's name has a colon (mymod:factory): not a file name on every system.
    name = config.study or plain_name(f"{task.model_name}-{task.dataset_name}")
    out = Path(config.out_dir)
    json_path, csv_path = out / f"{name}.sweep.json", out / f"{name}.sweep.csv"
    check_replaceable(json_path, ours=is_generated_json, flag="the sweep's JSON file")
    check_replaceable(csv_path, ours=_is_sweep_csv, flag="the sweep's CSV file")
    with torch_threads(config.threads):
        protocol = build_protocol(config, task, device=device)
        scorer = Scorer.build(task, protocol, device=device, cache_mb=config.cache_mb)
        precisions = (FLOAT, *[b for b in config.bits if b != FLOAT])
        plans = {p: scorer.uniform_plan(p) for p in precisions}
        measured = {p: scorer.measure(plan) for p, plan in plans.items()}
        gate = protocol.gate_for(measured[FLOAT].P)
        confirmed = _confirm(scorer, plans)
    rows = []
    for precision, measurement in measured.items():
        metrics = measurement.metrics(baseline_bytes=scorer.baseline_bytes, gate=gate)
        row: dict[str, Any] = {"precision": precision, **metrics.to_dict()}
        row["latency_repeats"] = measurement.latency_repeats
        other = {n: q for n, q in plans[precision].layers.items() if q != precision}
        if other:
            row["other_layers"] = other
        if precision in confirmed:
            t_ms = confirmed[precision]
            row["T_confirmed_ms"] = t_ms
            row["I_confirmed"] = intelligence_index(C=row["C"], P=row["P"], T_ms=t_ms)
            row["I_prime_confirmed"] = gated_index(C=row["C"], P=row["P"], T_ms=t_ms, gate=gate)
        rows.append(row)
    ranked = [{**r, TrialKey.I_PRIME: r.get("I_prime_confirmed", r[TrialKey.I_PRIME]),
               "I": r.get("I_confirmed", r["I"])} for r in rows]  # fmt: skip
    best = rows[ranked.index(knee(ranked))]
    result = SweepResult(
        name=name,
        rows=rows,
        knee=best,
        gate=gate.to_dict(),
        latency=scorer.latency.context.to_dict(),
        json_path=json_path,
        csv_path=csv_path,
        exclusions=protocol.search.exclusion_line(),
    )
    _write(result, protocol.task.model_dump(mode="json"))
    return result


def _confirm(scorer: Any, plans: dict[str, Any]) -> dict[str, float]:
    """The uniform plans' T timed side by side (none for an analytic estimate)."""
    from quide_search.latency import confirm_latency

    if scorer.latency.context.estimated:
        return {}
    results, _ = confirm_latency(plans, scorer.target, scorer.latency.context)
    return {p: r.median_ms for p, r in results.items()}


def _is_sweep_csv(path: Path) -> bool:
    """Whether ``path`` is a sweep CSV quide-search wrote (its exact header)."""
    try:
        with path.open(encoding="utf-8") as f:
            header = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    # The columns since other_layers, and before it (a sweep written by an earlier version).
    now, before = [*SWEEP_COLUMNS, "knee"], [*SWEEP_COLUMNS[:-1], "knee"]
    return header in (",".join(now), ",".join(before))


def _write(result: SweepResult, task: dict[str, Any]) -> None:
    payload = stamped(
        {
            "name": result.name,
            "unit": LATENCY_UNIT,
            "task": task,
            "gate": result.gate,
            "latency": result.latency,
            "knee": result.knee["precision"],
            "rows": result.rows,
        }
    )
    atomic_write_text(result.json_path, json.dumps(payload, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*SWEEP_COLUMNS, "knee"], extrasaction="ignore")
    writer.writeheader()
    for row in result.rows:
        other = " ".join(f"{k}={v}" for k, v in row.get("other_layers", {}).items())
        writer.writerow({**row, "other_layers": other, "knee": row is result.knee})
    atomic_write_text(result.csv_path, buffer.getvalue())
