"""Export a trial's plan as a self-describing, versioned JSON file.

The file carries the plan (``quantization_map`` in the form ``optimum.quanto.requantize``
accepts), its metrics with their latency context, the study's protocol and the library versions,
so the number can be checked later with ``quide-search evaluate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, StorageError
from quide_search.metric import RECORD_KEYS
from quide_search.plan import BitPlan, atomic_write_text, read_plan_file
from quide_search.study import best_row, completed_rows, load_study

if TYPE_CHECKING:
    import optuna

__all__ = ["export_plan", "load_plan", "plan_record", "select_trial"]

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
                f"--trial must be 'best' or a trial number, but got {trial!r}."
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
    plan = BitPlan(model=protocol["model"], dataset=protocol["dataset"], layers=trial.params)
    baseline = study.user_attrs.get("baseline", {})
    metrics = {k: trial.user_attrs[k] for k in _METRIC_KEYS if k in trial.user_attrs}
    metrics["latency"] = protocol.get("latency", {})
    return {
        **plan.to_dict(),
        "metrics": metrics,
        "baseline": {k: baseline.get(k) for k in ("C", "P", "T_ms", "I", "I_prime")},
        "protocol": protocol,
        "source": {"study": study.study_name, "trial": trial.number},
    }


def export_plan(
    *, study: str, storage: str, trial: str | int = "best", out: str | os.PathLike[str]
) -> Path:
    """Write the plan of a study's trial to ``out`` as JSON, atomically.

    Raises:
        StorageError: If the study or storage does not exist.
        ConfigError: If the trial selector is not valid.
    """
    loaded = load_study(study=study, storage=storage)
    record = plan_record(loaded, select_trial(loaded, trial))
    path = Path(out)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def load_plan(path: str | os.PathLike[str]) -> tuple[BitPlan, dict[str, Any]]:
    """Read an exported plan; return the plan and the whole record.

    Raises:
        PlanError: If the file is missing, malformed or not a valid plan.
    """
    return read_plan_file(path)
