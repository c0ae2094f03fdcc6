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
from quide_search.files import (
    atomic_write_text,
    check_replaceable,
    is_generated_json,
    stamped,
    write_directory,
)
from quide_search.metric import RECORD_KEYS
from quide_search.plan import BitPlan, read_plan_file
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
    return stamped(
        {
            **plan.to_dict(),
            "metrics": metrics,
            "baseline": {k: baseline.get(k) for k in ("C", "P", "T_ms", "I", "I_prime")},
            "protocol": protocol,
            "source": {"study": study.study_name, "trial": trial.number},
        }
    )


FORMATS = ("json", "yaml")


def export_plan(
    *,
    study: str,
    storage: str,
    trial: str | int = "best",
    out: str | os.PathLike[str],
    fmt: str = "json",
    checkpoint: bool = False,
    model: str | None = None,
) -> Path:
    """Write a study's trial as a plan file, or as a checkpoint folder, atomically.

    A path that exists is replaced only when quide-search wrote it (see
    :mod:`quide_search.files`); a folder is written beside ``out`` and swapped in whole.

    Args:
        study: Study name.
        storage: Its storage URL.
        trial: ``best``, a trial number, or ``pareto`` (one export per front point in the
            folder ``out``, with an ``index.json``).
        out: A file path for one plan; a folder for ``pareto`` or ``checkpoint``.
        fmt: ``json`` or ``yaml``.
        checkpoint: Also write the quantized model (safetensors) and quanto's map.
        model: The study's ``package.module:factory``, for a checkpoint of a study whose
            model comes from one: a study names code, which is imported and called only when
            the caller names it too.

    Raises:
        StorageError: If the study or storage does not exist.
        ConfigError: If the trial selector, format or ``out`` is not valid, or a factory
            would be called that ``model`` does not name.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}.")
    target = Path(out)
    if trial != "pareto" and not checkpoint:
        check_replaceable(target, ours=is_generated_json, flag="--out")
    loaded = load_study(study=study, storage=storage)
    if trial == "pareto":
        return _export_front(loaded, target, fmt=fmt, checkpoint=checkpoint, model=model)
    record = plan_record(loaded, select_trial(loaded, trial))
    if checkpoint:
        trusted_factory(record["model"], model, source=f"study {study!r}")
        built = _quantized_model(record)
        return write_directory(
            target, lambda d: _fill_checkpoint(built, record, d, fmt), kind="checkpoint"
        )
    atomic_write_text(target, _dump(record, fmt))
    return target


def trusted_factory(planned: str, given: str | None, *, source: str) -> None:
    """Refuse to import the ``package.module:factory`` a plan or study names, unless given too.

    A plan file or a study's storage is data that may come from anyone; the code it names is
    run only when the user names the same factory with ``--model``.

    Raises:
        ConfigError: If ``planned`` is a factory and ``given`` does not name the same one.
    """
    from quide_search.models.custom import is_factory_spec

    if is_factory_spec(planned) and given != planned:
        raise ConfigError(
            f"{source} is for the model factory {planned!r}, which would be imported and "
            f"called; a plan or study never runs code by itself, but got --model {given!r}. "
            f"Pass --model {planned} to run that factory."
        )


def _dump(record: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(record, sort_keys=False))
    return json.dumps(record, indent=2) + "\n"


def _quantized_model(record: dict[str, Any]) -> Any:
    from quide_search.quantize import apply_plan
    from quide_search.task import load_task

    task = load_task(**task_options(record.get("protocol", {}), record))
    return apply_plan(task.model, BitPlan.from_dict(record))


def _fill_checkpoint(model: Any, record: dict[str, Any], folder: Path, fmt: str) -> None:
    from quide_search.checkpoint import PLAN_FILE, write_checkpoint

    write_checkpoint(model, record, folder)
    if fmt != "json":
        atomic_write_text(folder / Path(PLAN_FILE).with_suffix(".yaml"), _dump(record, fmt))


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


def _export_front(
    study: optuna.Study, out: Path, *, fmt: str, checkpoint: bool, model: str | None
) -> Path:
    front = study_front(completed_rows(study))
    if not front:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    trials = study.get_trials(deepcopy=False)
    records = [plan_record(study, trials[point["trial"]]) for point in front]
    models: list[Any] = []
    if checkpoint:
        trusted_factory(records[0]["model"], model, source=f"study {study.study_name!r}")
        models = [_quantized_model(record) for record in records]

    def fill(folder: Path) -> None:
        index = []
        for i, (point, record) in enumerate(zip(front, records, strict=True)):
            name = f"trial-{point['trial']}" + ("" if checkpoint else f".{fmt}")
            if checkpoint:
                (folder / name).mkdir()
                _fill_checkpoint(models[i], record, folder / name, fmt)
            else:
                atomic_write_text(folder / name, _dump(record, fmt))
            index.append({"trial": point["trial"], "path": name, **_front_metrics(point)})
        payload = {
            "study": study.study_name,
            "objectives": {"C": "max", "P": "max", "T_ms": "min"},
        }
        text = json.dumps(stamped({**payload, "front": index}), indent=2) + "\n"
        atomic_write_text(folder / "index.json", text)

    return write_directory(out, fill, kind="front")


def _front_metrics(point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in ("C", "P", "T_ms", "I", "I_prime", "gate_passed")}


def load_plan(path: str | os.PathLike[str]) -> tuple[BitPlan, dict[str, Any]]:
    """Read an exported plan; return the plan and the whole record.

    Raises:
        PlanError: If the file is missing, malformed or not a valid plan.
    """
    return read_plan_file(path)
