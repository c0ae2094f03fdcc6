"""The exported plan record: what ``export`` writes and ``evaluate`` reads, as one schema.

A record is the plan (backend-neutral ``layers`` and the backend's own ``quantization_map``),
its metrics, the study's float baseline and protocol, and where it came from. A file is
validated as a whole document against :class:`PlanDocument` before anything reads it, so a
malformed field is one error naming the field, never a crash further on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quide_search.errors import ConfigError, PlanError
from quide_search.files import stamped
from quide_search.plan import BitPlan
from quide_search.protocol import Protocol
from quide_search.records import METRIC_KEYS, SCORE_KEYS, StudyKey, TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["PlanDocument", "plan_record", "load_plan"]

_METRIC_KEYS = (*METRIC_KEYS, TrialKey.BASELINE_BYTES, TrialKey.UNIT, TrialKey.LATENCY_REPEATS)


_Finite = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
MAX_C = 1024.0
"""No plan compresses more: 32-bit weights at 1 bit are 32x, and C counts every stored byte."""


class _Metrics(BaseModel):
    # Strict: a number written as a string is an error, not a number that compares unequal.
    # Finite and >= 0: Infinity or NaN in a plan file is an edit, never a measurement.
    model_config = ConfigDict(extra="allow", strict=True)
    C: Annotated[float, Field(gt=0.0, le=MAX_C, allow_inf_nan=False)]
    P: _Finite
    T_ms: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    I: _Finite  # noqa: E741
    I_prime: _Finite
    gate_passed: bool


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    study: str
    trial: int


class PlanDocument(BaseModel):
    """The schema of an exported plan file (JSON or YAML)."""

    model_config = ConfigDict(extra="forbid")
    generator: str | None = None
    schema_version: Annotated[int, Field(strict=True)]
    backend: str = Field(min_length=1)
    model: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    layers: dict[str, str]
    quantization_map: dict[str, Any] | None = None
    metrics: _Metrics | None = None
    baseline: _Metrics | None = None
    protocol: dict[str, Any] | None = None
    source: _Source | None = None
    loading: dict[str, Any] | None = None
    """In a checkpoint's plan.json: the backend's files and the recipe that loads them."""


def load_plan(path: str | os.PathLike[str]) -> tuple[BitPlan, dict[str, Any]]:
    """Read a plan file (JSON, or YAML by its suffix); return the plan and the whole record.

    Raises:
        PlanError: If the file is missing, not JSON or YAML, or not a valid plan document.
    """
    from quide_search.files import read_document

    p = Path(path)
    try:
        text = read_document(p, what="plan file")
    except FileNotFoundError as e:
        raise PlanError(
            f"plan file {str(p)!r} does not exist. Export one with "
            "`quide-search export --study NAME --out plan.json`."
        ) from e
    except ConfigError as e:
        raise PlanError(str(e)) from e
    data = _parse(text, p)
    BitPlan.from_dict(data)  # the schema version and the core fields, with their own messages
    try:
        PlanDocument.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PlanError(
            f"plan file {str(p)!r} must be a plan document, but field {where!r} is wrong: "
            f"{first['msg']} (got {_short(first.get('input'))}). Re-export the plan."
        ) from e
    from quide_search.backends import BACKENDS

    if data["backend"] not in BACKENDS:
        raise PlanError(
            f"plan file {str(p)!r} must name a backend among {', '.join(BACKENDS)}, but it "
            f"names {data['backend']!r}. Re-export the plan."
        )
    plan = BitPlan.from_dict(data)
    _check_quantization_map(plan, data.get("quantization_map"), p)
    return plan, data


def _check_quantization_map(plan: BitPlan, stored: Any, path: Path) -> None:
    """Refuse a ``quantization_map`` that is not the one the plan's layers make.

    The map is derived from ``layers`` by the backend; a file where they disagree was edited
    on one side, and which one holds is not known.
    """
    from quide_search.backends import get_backend

    if stored is None:
        return
    try:
        expected = json.loads(json.dumps(get_backend(plan.backend).quantization_map(plan)))
    except (KeyError, ValueError, PlanError):
        return  # a precision the backend has no map for: refused where it is applied
    if stored != expected:
        differ = sorted(set(stored) ^ set(expected)) or sorted(
            k for k in expected if stored.get(k) != expected[k]
        )
        raise PlanError(
            f"plan file {str(path)!r} must hold the quantization_map its layers make, but "
            f"they disagree on {', '.join(differ[:5])}. Re-export the plan, or drop "
            "quantization_map (it is rebuilt from layers)."
        )


def record_protocol(record: dict[str, Any], path: str | os.PathLike[str]) -> Protocol:
    """The study protocol a plan record carries.

    Raises:
        PlanError: If the record has none, or one this version cannot read, or one of
            another backend than the record names.
    """
    if record.get("protocol") is None:
        raise PlanError(
            f"plan file {str(path)!r} must carry its study's protocol to be evaluated, but it "
            "has none. Export it with `quide-search export`."
        )
    try:
        protocol = Protocol.model_validate(record["protocol"])
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in ("protocol", *first["loc"]))
        raise PlanError(
            f"plan file {str(path)!r} must carry a valid protocol, but field {where!r} is "
            f"wrong: {first['msg']} (got {_short(first.get('input'))}). Re-export the plan."
        ) from e
    if record.get("backend") != protocol.backend:
        raise PlanError(
            f"plan file {str(path)!r} must name the backend its protocol was measured with, "
            f"but it names {record.get('backend')!r} and the protocol {protocol.backend!r}. "
            "Re-export the plan (evaluate --backend applies it with another backend)."
        )
    return protocol


def plan_record(
    study: optuna.Study, protocol: Protocol, trial: optuna.trial.FrozenTrial
) -> dict[str, Any]:
    """Return the export record of ``trial``: plan, metrics, baseline, protocol, source."""
    from quide_search.backends import get_backend
    from quide_search.search.space import trial_plan

    task = protocol.task
    plan = BitPlan(
        model=task.model, dataset=task.dataset, layers=trial_plan(trial), backend=protocol.backend
    )
    from quide_search.study.summary import stored_confirmation, stored_test

    baseline = {k: study.user_attrs.get(StudyKey.BASELINE, {}).get(k) for k in SCORE_KEYS}
    metrics: dict[str, Any] = {
        k: trial.user_attrs[k] for k in _METRIC_KEYS if k in trial.user_attrs
    }
    # The confirmed T and the held-out test P, where the trial was a finalist; the float
    # model's test P goes with the baseline.
    confirmation, test = stored_confirmation(study), stored_test(study)
    for record in (confirmation, test):
        entry = record.by_trial().get(trial.number) if record else None
        metrics.update(entry.values() if entry else {})
    float_test = test.of_float() if test else None
    if float_test is not None:
        baseline[TrialKey.P_TEST] = float_test.P_test
    if test is not None and TrialKey.P_TEST in metrics:
        metrics["test_samples"] = test.samples
    metrics["latency"] = protocol.latency.to_dict()
    return stamped(
        {
            **plan.to_dict(),
            "quantization_map": get_backend(protocol.backend).quantization_map(plan),
            "metrics": metrics,
            "baseline": baseline,
            "protocol": protocol.to_dict(),
            "source": {"study": study.study_name, "trial": trial.number},
        }
    )


def _parse(text: str, path: Path) -> Any:
    """The document in ``text``; one that nests deeper than Python recurses is refused."""
    try:
        return _parse_text(text, path)
    except RecursionError as e:
        raise PlanError(
            f"plan file {str(path)!r} nests too deeply to be a plan (a plan is a few levels "
            "deep). Re-export the plan."
        ) from e


def _parse_text(text: str, path: Path) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            reason = " ".join(str(e).split())
            raise PlanError(f"plan file {str(path)!r} is not valid YAML ({reason}).") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(
            f"plan file {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno} "
            f"column {e.colno})."
        ) from e


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
