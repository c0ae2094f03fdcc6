"""Export a trial's plan as a self-describing, versioned file, the front's plans, or a checkpoint.

A plan file carries the plan (``layers``, and the backend's ``quantization_map``), its metrics
with their latency context (and the confirmed T where the study confirmed it), the study's
protocol and the library versions, so ``quide-search evaluate`` can check it later. Nothing
that quide-search did not write is replaced (:mod:`quide_search.files`).
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
    check_folder_target,
    check_replaceable,
    is_generated_json,
    stamped,
    write_directory,
)
from quide_search.output.record import plan_record
from quide_search.records import SCORE_KEYS, TrialRow
from quide_search.study.budget import Budget, answer_budget
from quide_search.study.summary import (
    completed_rows,
    read_study,
    recommended,
    stored_confirmation,
    stored_test,
    study_front,
)

if TYPE_CHECKING:
    import optuna

    from quide_search.protocol import Protocol

__all__ = [
    "FORMATS",
    "export_plan",
    "plan_format",
    "select_trial",
    "task_options",
    "trusted_factory",
]

FORMATS = ("json", "yaml", "transformers", "onnx")


_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_MODEL_FORMATS = ("transformers", "onnx")
"""The formats that write one model's folder of their own, not a plan file."""


def plan_format(out: str | os.PathLike[str]) -> str:
    """The plan file format an ``--out`` path's suffix names (json unless .yaml or .yml)."""
    return _SUFFIXES.get(Path(out).suffix.lower(), "json")


def _check_suffix(target: Path, fmt: str) -> None:
    """Refuse a plan file whose suffix names the other format (YAML in a .json file)."""
    named = _SUFFIXES.get(target.suffix.lower())
    if named is not None and named != fmt:
        raise ConfigError(
            f"--out must end in a suffix of --format {fmt}, but {str(target)!r} ends in "
            f"{target.suffix}. Give --out {target.with_suffix('.' + fmt).name}, or --format "
            f"{named}."
        )


def export_plan(
    *,
    study: str,
    storage: str,
    trial: str | int = "best",
    out: str | os.PathLike[str],
    fmt: str = "json",
    checkpoint: bool = False,
    model: str | None = None,
    budget: Budget | None = None,
) -> Path:
    """Write a study's trial as a plan file, or as a checkpoint folder, atomically.

    Args:
        study: Study name.
        storage: Its storage URL.
        trial: ``best`` (the recommended plan: best feasible by confirmed I' where the
            study confirmed its finalists, passing the gate on the test split too), a trial
            number, or ``pareto`` (one export per front point in the folder ``out``, with an
            ``index.json``).
        out: A file path for one plan; a folder for ``pareto`` or ``checkpoint``.
        fmt: ``json`` or ``yaml``; or ``transformers``: for an ``hf:`` causal LM, the
            folder ``out`` that ``AutoModelForCausalLM.from_pretrained`` loads without
            quide-search (:mod:`quide_search.output.transformers_export`); or ``onnx``: for
            a study of the onnxruntime backend, the folder ``out`` with the plan's quantized
            ``model.onnx`` and a ``plan.json`` whose recipe needs only numpy and onnxruntime.
        checkpoint: Also write the quantized model, in the backend's own layout.
        model: The study's ``package.module:factory``, for a checkpoint of a study whose
            model comes from one: a study names code, which is imported and called only when
            the caller names it too.
        budget: With ``trial="best"``: the best stored plan that passes the gate within
            these limits (:func:`quide_search.study.budget.best_within`) instead.

    Raises:
        StorageError: If the study or storage does not exist, or is not a quide-search study.
        ConfigError: If the trial selector, format or ``out`` is not valid, or a factory
            would be called that ``model`` does not name.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}.")
    target = Path(out)
    if fmt in _MODEL_FORMATS:
        _check_model_format_args(fmt, trial, checkpoint)
    elif trial != "pareto" and not checkpoint:
        _check_suffix(target, fmt)
        check_replaceable(target, ours=is_generated_json, flag="--out")
    if trial == "pareto" or checkpoint or fmt in _MODEL_FORMATS:
        check_folder_target(target, flag="--out")  # before a model is built
    if checkpoint or fmt in _MODEL_FORMATS:
        _check_folder_name(target, fmt, checkpoint)
    loaded, protocol = read_study(study=study, storage=storage)
    if fmt == "onnx":
        _check_onnx(protocol, study)
        checkpoint, fmt = True, "json"  # the backend's files are the ONNX model
    if trial == "pareto":
        return _export_front(loaded, protocol, target, fmt=fmt, checkpoint=checkpoint, model=model)
    record = plan_record(loaded, protocol, select_trial(loaded, trial, budget))
    if fmt == "transformers":
        return _export_transformers(record, protocol, target)
    if not checkpoint:
        atomic_write_text(target, _dump(record, fmt))
        return target
    trusted_factory(record["model"], model, source=f"study {study!r}")
    built = _quantized_model(record, protocol)
    return write_directory(
        target, lambda d: _fill_checkpoint(built, record, d, fmt), kind="checkpoint"
    )


def _check_model_format_args(fmt: str, trial: str | int, checkpoint: bool) -> None:
    """Refuse what --format transformers or onnx does not go with, before anything is read."""
    if checkpoint:
        raise ConfigError(
            f"--format {fmt} writes a model folder of its own, so it goes without "
            "--checkpoint, but got both. Drop --checkpoint."
        )
    if trial == "pareto":
        raise ConfigError(
            f"--format {fmt} writes one model, but got --trial pareto. Name one trial."
        )


def _check_folder_name(target: Path, fmt: str, checkpoint: bool) -> None:
    """Refuse a folder --out named like a plan file (``--format onnx --out plan.json``)."""
    if target.suffix.lower() in _SUFFIXES:
        what = "--checkpoint" if checkpoint else f"--format {fmt}"
        raise ConfigError(
            f"--out must name a folder for {what}, but {str(target)!r} ends in {target.suffix} "
            f"like a plan file. Give a folder name, e.g. --out {target.stem}/."
        )


def _check_onnx(protocol: Protocol, study: str) -> None:
    """Refuse --format onnx for a study whose backend's models are not ONNX graphs."""
    from quide_search.backends import BACKENDS, get_backend

    if not get_backend(protocol.backend).saves_onnx:
        onnx = [name for name in BACKENDS if get_backend(name).saves_onnx]
        raise ConfigError(
            f"--format onnx needs a study whose plans are ONNX graphs (--backend "
            f"{' or '.join(onnx)}), but study {study!r} used {protocol.backend}. Search again "
            "with that backend, or export --checkpoint."
        )


def _export_transformers(record: dict[str, Any], protocol: Protocol, target: Path) -> Path:
    from quide_search.output.transformers_export import (
        build_transformers,
        check_transformers,
        write_transformers,
    )
    from quide_search.tasks.resolver import load_task

    check_transformers(record, protocol)  # before any model is built or code imported
    task = load_task(**task_options(protocol))
    built = build_transformers(record, protocol, task)
    return write_directory(
        target,
        lambda d: write_transformers(built, task.tokenizer, record, d),
        kind="transformers",
    )


def select_trial(
    study: optuna.Study, trial: str | int, budget: Budget | None = None
) -> optuna.trial.FrozenTrial:
    """Return the trial named by ``--trial best|N``.

    ``best`` is the recommended plan (see :func:`quide_search.study.summary.recommended`), or
    with a ``budget``, the best stored plan within it.

    Raises:
        StorageError: If the study has no completed trial.
        ConfigError: For an unknown selector or a trial that is not completed.
    """
    if budget is not None and budget.given:
        if trial != "best":
            raise ConfigError(
                "--max-size-mb and --max-latency-ms choose the best plan within them, so they "
                f"go with --trial best, but got --trial {trial}. Drop one of them."
            )
        answer = answer_budget(study, budget)
        if answer.best is None:
            raise ConfigError(str(answer.why))
        return study.get_trials(deepcopy=False)[answer.best.trial]
    rows = completed_rows(study)
    best = recommended(rows, stored_confirmation(study), stored_test(study))
    if best is None:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    if trial == "best":
        number = best.trial
    else:
        try:
            number = int(trial)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"--trial must be 'best', 'pareto' or a trial number, but got {trial!r}."
            ) from e
        done = [r.trial for r in rows]
        if number not in done:
            numbers = ", ".join(str(n) for n in done[:20])
            raise ConfigError(
                f"--trial must name a completed trial of {study.study_name!r}, but got {number}. "
                f"Completed: {numbers}{' ...' if len(done) > 20 else ''}."
            )
    # Optuna numbers a study's trials consecutively from 0, so the number is the index.
    return study.get_trials(deepcopy=False)[number]


def trusted_factory(planned: str, given: str | None, *, source: str) -> None:
    """Refuse to import the ``package.module:factory`` a plan or study names, unless given too.

    A plan file or a study's storage is data that may come from anyone; the code it names is
    run only when the user names the same factory with ``--model``.

    Raises:
        ConfigError: If ``planned`` is a factory and ``given`` does not name the same one.
    """
    from quide_search.tasks.models.custom import is_factory_spec

    if is_factory_spec(planned) and given != planned:
        got = f"--model {given!r}" if given else "no --model"
        raise ConfigError(
            f"{source} is for the model factory {planned!r}, which would be imported and "
            f"called; a plan or study never runs code by itself, but got {got}. "
            f"Pass --model {planned} to run that factory."
        )


def task_options(protocol: Protocol) -> dict[str, Any]:
    """Return ``load_task`` arguments that rebuild the float model a study's plans apply to."""
    from quide_search.tasks.models.causal_lm import TextTask

    task = protocol.task
    return {
        "model": task.model,
        "dataset": task.dataset,
        "data_dir": task.data_dir,
        "weights": task.weights,
        "text": TextTask(**task.text) if task.text else None,
        "eval_samples": task.eval_samples,
        "calib_samples": task.calib_samples,
        "test_samples": task.test_samples,
    }


def _dump(record: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(record, sort_keys=False))
    return json.dumps(record, indent=2) + "\n"


def _quantized_model(record: Mapping[str, Any], protocol: Protocol) -> tuple[Any, Any]:
    """The trial's quantized model and the float model's tokenizer (None without one)."""
    from quide_search.measure.scorer import apply_as_studied
    from quide_search.plan import BitPlan
    from quide_search.tasks.resolver import load_task

    task = load_task(**task_options(protocol))
    return apply_as_studied(task, protocol, BitPlan.from_dict(record)), task.tokenizer


def _fill_checkpoint(
    built: tuple[Any, Any], record: dict[str, Any], folder: Path, fmt: str
) -> None:
    from quide_search.output.checkpoint import PLAN_FILE, write_checkpoint

    write_checkpoint(built[0], record, folder, tokenizer=built[1])
    if fmt != "json":
        atomic_write_text(folder / Path(PLAN_FILE).with_suffix(".yaml"), _dump(record, fmt))


def _export_front(
    study: optuna.Study,
    protocol: Protocol,
    out: Path,
    *,
    fmt: str,
    checkpoint: bool,
    model: str | None,
) -> Path:
    front = study_front(completed_rows(study))
    if not front:
        raise StorageError(f"study {study.study_name!r} has no completed trials to export.")
    trials = study.get_trials(deepcopy=False)
    records = [plan_record(study, protocol, trials[point.trial]) for point in front]
    models: list[tuple[Any, Any]] = []
    if checkpoint:
        trusted_factory(records[0]["model"], model, source=f"study {study.study_name!r}")
        models = [_quantized_model(record, protocol) for record in records]

    def fill(folder: Path) -> None:
        index = []
        for i, (point, record) in enumerate(zip(front, records, strict=True)):
            name = f"trial-{point.trial}" + ("" if checkpoint else f".{fmt}")
            if checkpoint:
                (folder / name).mkdir()
                _fill_checkpoint(models[i], record, folder / name, fmt)
            else:
                atomic_write_text(folder / name, _dump(record, fmt))
            index.append({"trial": point.trial, "path": name, **_front_metrics(point)})
        payload = {
            "study": study.study_name,
            "objectives": {"C": "max", "P": "max", "T_ms": "min"},
        }
        text = json.dumps(stamped({**payload, "front": index}), indent=2) + "\n"
        atomic_write_text(folder / "index.json", text)

    return write_directory(out, fill, kind="front")


def _front_metrics(point: TrialRow) -> dict[str, Any]:
    return {k: getattr(point, k) for k in SCORE_KEYS}
