"""The uniform-precision protocol: one row per precision (fp32, int8, int4, ...) and the knee.

The knee is the row with the highest I': the precision where compression, accuracy and latency
balance best under the gate. Rows are written as JSON and CSV for papers and spreadsheets.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quide_search.config import RunConfig
from quide_search.files import atomic_write_text, check_replaceable, is_generated_json, stamped
from quide_search.metric import LATENCY_UNIT, RECORD_KEYS, Gate, knee
from quide_search.plan import FLOAT

__all__ = ["SWEEP_COLUMNS", "SweepResult", "precision_label", "run_sweep"]

SWEEP_COLUMNS = ("precision", *RECORD_KEYS)
_LABELS = {FLOAT: "fp32", "qint8": "int8", "qint4": "int4", "qint2": "int2", "qfloat8": "fp8"}


def precision_label(qtype: str) -> str:
    """Return the paper-style label of a plan value (``qint4`` -> ``int4``)."""
    return _LABELS[qtype]


@dataclass(frozen=True)
class SweepResult:
    """The sweep table, its knee and where it was written."""

    name: str
    rows: list[dict[str, Any]]
    knee: dict[str, Any]
    gate: dict[str, Any]
    latency: dict[str, Any]
    json_path: Path
    csv_path: Path


def run_sweep(config: RunConfig) -> SweepResult:
    """Measure the uniform plan of every precision in ``config.bits`` (fp32 always first).

    Raises:
        QuideError: For bad settings, before anything is written.
    """
    from quide_search.latency import resolve_device
    from quide_search.scorer import Scorer
    from quide_search.task import load_task

    device = resolve_device(config.device)
    task = load_task(**config.task_options(), device_type=device.type)
    name = config.study or f"{task.model_name}-{task.dataset_name}"
    out = Path(config.out_dir)
    json_path, csv_path = out / f"{name}.sweep.json", out / f"{name}.sweep.csv"
    check_replaceable(json_path, ours=is_generated_json, flag="the sweep's JSON file")
    check_replaceable(csv_path, ours=_is_sweep_csv, flag="the sweep's CSV file")
    scorer = Scorer.for_config(task, config, device=device)
    if config.latency.startswith("table"):
        scorer.prepare_table(config.bits)
    baseline = scorer.measure(scorer.float_plan())
    gate = Gate(baseline_P=baseline.P, **config.gate_settings())
    rows = []
    for qtype in (FLOAT, *[b for b in config.bits if b != FLOAT]):
        measured = baseline if qtype == FLOAT else scorer.measure(scorer.uniform_plan(qtype))
        metrics = measured.metrics(baseline_bytes=scorer.baseline_bytes, gate=gate)
        rows.append(
            {
                "precision": precision_label(qtype),
                **metrics.to_dict(),
                "latency_repeats": measured.latency_repeats,
                "latency_passes": measured.latency_passes,
            }
        )
    best = knee(rows)
    result = SweepResult(
        name=name,
        rows=rows,
        knee=best,
        gate=gate.to_dict(),
        latency=scorer.context.to_dict(),
        json_path=json_path,
        csv_path=csv_path,
    )
    _write(result, task.describe())
    return result


def _is_sweep_csv(path: Path) -> bool:
    """Whether ``path`` is a sweep CSV quide-search wrote (its exact header)."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().strip() == ",".join([*SWEEP_COLUMNS, "knee"])
    except (OSError, UnicodeDecodeError):
        return False


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
        writer.writerow({**row, "knee": row is result.knee})
    atomic_write_text(result.csv_path, buffer.getvalue())
