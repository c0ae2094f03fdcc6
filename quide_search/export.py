"""Export a trial's plan as a self-describing, versioned JSON file.

The file carries the plan (``quantization_map`` in the form ``optimum.quanto.requantize``
accepts), its metrics with their latency context, the study's protocol and the library versions,
so the number can be checked later with ``quide-search evaluate``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, StorageError
from quide_search.metric import RECORD_KEYS
from quide_search.plan import BitPlan, atomic_write_text, read_plan_file
from quide_search.search import trial_plan
from quide_search.study import (
    best_row,
    completed_rows,
    latency_context,
    load_study,
    study_front,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["FORMATS", "export_plan", "task_options", "load_plan", "plan_record", "select_trial"]

_METRIC_KEYS = (*RECORD_KEYS, "baseline_bytes", "unit", "latency_repeats")


def select_trial(study: optuna.Study, trial: str | int) -> optuna.trial.FrozenTrial:
    """Return the trial named by ``--trial best|N``.

    ``best`` is the completed trial with the highest I' among those passing the gate (or the
    highest I when none passes).

    Raises:
        ConfigError: For an unknown selector or a trial that is not completed.
    """
    rows = completed_rows(study)
    best = best_row(rows)
    if best is None:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    if trial == "best":
        number = best["trial"]
    else:
        try:
            number = int(trial)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"--trial must be 'best', 'pareto' or a trial number, but got {trial!r}."
            ) from e
        done = [r["trial"] for r in rows]
        if number not in done:
            numbers = ", ".join(str(n) for n in done[:20])
            raise ConfigError(
                f"--trial must name a completed trial of {study.study_name!r}, but got {number}. "
                f"Completed: {numbers}{' ...' if len(done) > 20 else ''}."
            )
    # Optuna numbers a study's trials consecutively from 0, so the number is the index.
    return study.get_trials(deepcopy=False)[number]


def plan_record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Return the export record of ``trial``: plan, metrics, latency context and protocol."""
    protocol = dict(study.user_attrs.get("protocol", {}))
    plan = BitPlan(model=protocol["model"], dataset=protocol["dataset"], layers=trial_plan(trial))
    baseline = study.user_attrs.get("baseline", {})
    metrics = {k: trial.user_attrs[k] for k in _METRIC_KEYS if k in trial.user_attrs}
    metrics["latency"] = latency_context(protocol)
    return {
        **plan.to_dict(),
        "metrics": metrics,
        "baseline": {k: baseline.get(k) for k in ("C", "P", "T_ms", "I", "I_prime")},
        "protocol": protocol,
        "source": {"study": study.study_name, "trial": trial.number},
    }


FORMATS = ("json", "yaml")


def export_plan(
    *,
    study: str,
    storage: str,
    trial: str | int = "best",
    out: str | os.PathLike[str],
    fmt: str = "json",
    checkpoint: bool = False,
) -> Path:
    """Write a study's trial as a plan file, or as a checkpoint directory, atomically.

    Args:
        study: Study name.
        storage: Its storage URL.
        trial: ``best``, a trial number, or ``pareto`` (one export per front point in the
            directory ``out``, with an ``index.json``).
        out: A file path for one plan; a directory for ``pareto`` or ``checkpoint``.
        fmt: ``json`` or ``yaml``.
        checkpoint: Also write the quantized model (safetensors) and quanto's map.

    Raises:
        StorageError: If the study or storage does not exist.
        ConfigError: If the trial selector or format is not valid.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}.")
    _check_out(Path(out), wants_dir=trial == "pareto" or checkpoint)
    loaded = load_study(study=study, storage=storage)
    if trial == "pareto":
        return _export_front(loaded, Path(out), fmt=fmt, checkpoint=checkpoint)
    record = plan_record(loaded, select_trial(loaded, trial))
    if checkpoint:
        return _write_checkpoint(record, Path(out), fmt)
    path = Path(out)
    atomic_write_text(path, _dump(record, fmt))
    return path


def _check_out(out: Path, *, wants_dir: bool) -> None:
    if wants_dir and out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out must be a directory for --trial pareto or --checkpoint, but {str(out)!r} is "
            "a file. Pass a directory path (it is created if missing)."
        )
    if not wants_dir and out.is_dir():
        raise ConfigError(
            f"--out must be a file path for one plan, but {str(out)!r} is a directory. "
            "Name a file, e.g. plan.json."
        )


def _dump(record: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(record, sort_keys=False))
    return json.dumps(record, indent=2) + "\n"


def _write_checkpoint(record: dict[str, Any], out: Path, fmt: str) -> Path:
    from quide_search.checkpoint import PLAN_FILE, save_quantized
    from quide_search.quantize import apply_plan
    from quide_search.task import load_task

    task = load_task(**task_options(record.get("protocol", {}), record))
    path = save_quantized(apply_plan(task.model, BitPlan.from_dict(record)), record, out)
    if fmt != "json":
        atomic_write_text(path / Path(PLAN_FILE).with_suffix(".yaml"), _dump(record, fmt))
    return path


def task_options(protocol: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``load_task`` arguments that rebuild the float model a study's plans apply to."""
    from quide_search.models.causal_lm import TextTask

    text = protocol.get("text")
    return {
        "model": record["model"],
        "dataset": record["dataset"],
        "data_dir": protocol.get("data_dir"),
        "weights": protocol.get("weights"),
        "text": TextTask(**text) if text else None,
        "eval_samples": protocol.get("eval_samples"),
        "calib_samples": protocol.get("calib_samples"),
    }


def _export_front(study: optuna.Study, out: Path, *, fmt: str, checkpoint: bool) -> Path:
    front = study_front(completed_rows(study))
    if not front:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    trials = study.get_trials(deepcopy=False)
    index = []
    for point in front:
        record = plan_record(study, trials[point["trial"]])
        name = f"trial-{point['trial']}" + ("" if checkpoint else f".{fmt}")
        if checkpoint:
            _write_checkpoint(record, out / name, fmt)
        else:
            atomic_write_text(out / name, _dump(record, fmt))
        index.append({"trial": point["trial"], "path": name, **_front_metrics(point)})
    payload = {"study": study.study_name, "objectives": {"C": "max", "P": "max", "T_ms": "min"}}
    atomic_write_text(out / "index.json", json.dumps({**payload, "front": index}, indent=2))
    return out


def _front_metrics(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in ("C", "P", "T_ms", "I", "I_prime", "gate_passed")}


def load_plan(path: str | os.PathLike[str]) -> tuple[BitPlan, dict[str, Any]]:
    """Read an exported plan; return the plan and the whole record.

    Raises:
        PlanError: If the file is missing, malformed or not a valid plan.
    """
    return read_plan_file(path)
