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
    import optuna

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "P" in t.user_attrs
    ]
    if not done:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    if trial == "best":
        feasible = [t for t in done if t.user_attrs["gate_passed"]] or done
        return max(feasible, key=lambda t: (t.user_attrs["I_prime"], t.user_attrs["I"], -t.number))
    try:
        number = int(trial)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--trial must be 'best' or a trial number, but got {trial!r}.") from e
    for t in done:
        if t.number == number:
            return t
    numbers = ", ".join(str(t.number) for t in done[:20])
    raise ConfigError(
        f"--trial must name a completed trial of {study.study_name!r}, but got {number}. "
        f"Completed: {numbers}{' ...' if len(done) > 20 else ''}."
    )


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
    from quide_search.study import load_study

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
