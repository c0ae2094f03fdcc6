"""Re-apply an exported plan to its model and measure it again (``quide-search evaluate``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, PlanError
from quide_search.metric import Gate, Metrics
from quide_search.plan import BitPlan

if TYPE_CHECKING:
    from quide_search.scorer import Scorer
    from quide_search.task import Task

__all__ = ["Replay", "evaluate_plan"]


@dataclass(frozen=True)
class Replay:
    """A plan measured again, beside what its record stated."""

    plan: BitPlan
    measured: Metrics
    stored: dict[str, Any]
    latency: dict[str, Any]

    @property
    def reproduced(self) -> bool | None:
        """Whether P equals the stored P exactly (None if the record holds no P)."""
        if "P" not in self.stored:
            return None
        return self.stored["P"] == self.measured.P


def evaluate_plan(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    weights: str | None = None,
) -> Replay:
    """Load a plan file, apply it to a fresh float model and measure C, P, T, I, I'.

    The eval split, eval batch size, latency batch size and gate come from the record's
    protocol, so P is measured exactly as in the study.

    A plan whose model is a ``package.module:factory`` is evaluated only when ``model``
    names the same factory: a plan file is data and never runs code by itself.

    Raises:
        PlanError: If the file is not a valid plan, or names layers its model lacks.
        ConfigError: If ``model``/``dataset`` are given and differ from the plan's, or the
            plan names a factory that ``model`` does not.
    """
    from quide_search.export import load_plan, task_options, trusted_factory
    from quide_search.task import load_task

    plan, record = load_plan(path)
    # Before anything else reads the record: a plan never imports code the user did not name.
    trusted_factory(plan.model, model, source=f"plan {str(path)!r}")
    _check_names(plan, path, model=model, dataset=dataset)
    protocol = record.get("protocol", {})
    options = task_options(protocol, record)
    options.update({k: v for k, v in (("data_dir", data_dir), ("weights", weights)) if v})
    task = load_task(**options)
    plan.validate_layers(task.layers)
    scorer = _study_scorer(task, protocol, device)
    measured = scorer.measure(plan)
    baseline_p = record.get("baseline", {}).get("P")
    if baseline_p is None:
        baseline_p = scorer.measure(scorer.float_plan()).P
    metrics = measured.metrics(
        baseline_bytes=scorer.baseline_bytes, gate=_gate(protocol, float(baseline_p))
    )
    return Replay(
        plan=plan,
        measured=metrics,
        stored=dict(record.get("metrics", {})),
        latency=scorer.context.to_dict(),
    )


def _check_names(
    plan: BitPlan, path: str | os.PathLike[str], *, model: str | None, dataset: str | None
) -> None:
    """Refuse a plan whose model or dataset differs from the flags, or is not registered."""
    from quide_search.data import DATASETS
    from quide_search.models import MODELS
    from quide_search.models.causal_lm import HF_PREFIX
    from quide_search.models.custom import is_factory_spec

    for flag, given, planned in (
        ("--model", model, plan.model),
        ("--dataset", dataset, plan.dataset),
    ):
        if given is not None and given.lower() != planned.lower():
            raise ConfigError(
                f"{flag} must match the plan's, but the plan is for {planned!r} "
                f"and {flag} is {given!r}. Drop {flag} or use a plan for {given!r}."
            )
    # The registries' own errors name the CLI flags; here the names come from the file.
    # hf: models and factories are named by path or import path, not registered.
    registered = not (plan.model.startswith(HF_PREFIX) or is_factory_spec(plan.model))
    for kind, name, registry in (
        ("model", plan.model, MODELS),
        ("dataset", plan.dataset, DATASETS),
    ):
        if registered and name not in registry:
            raise PlanError(
                f"plan {str(path)!r} is for {kind} {name!r}, which is not "
                f"registered. Registered: {', '.join(registry.names())}."
            )


def _study_scorer(task: Task, protocol: dict[str, Any], device: str) -> Scorer:
    """Build a scorer that measures as the study did: its batch sizes, threads and T."""
    from quide_search.latency import resolve_device
    from quide_search.scorer import Scorer

    latency = protocol.get("latency", {})
    scorer = Scorer(
        task,
        device=resolve_device(device),
        batch_size=int(latency.get("batch_size", 1)),
        eval_batch_size=int(protocol.get("eval_batch_size", 256)),
        # Studies from before --latency-threads evaluated with T's threads.
        threads=protocol.get("eval_threads", latency.get("threads")),
        latency_threads=latency.get("threads"),
        latency=str(latency.get("method", "")) if latency.get("profile") else "measured",
        eval_chunk=None,  # the study's schedule, set next
        latency_reference=protocol.get("latency_reference_ms"),
        # Studies from before the reference was a mix paired with the float model.
        reference_qtypes=protocol.get("latency_reference_qtypes"),
        sample_ms=protocol.get("latency_sample_ms"),
    )
    scorer.use_eval_chunk(protocol.get("eval_first_chunk"), protocol.get("eval_probes"))
    return scorer


def _gate(protocol: dict[str, Any], baseline_p: float) -> Gate:
    """Return the study's gate (the default one for records without it)."""
    gate_settings = protocol.get("gate") or {"max_drop": 0.01, "min_accuracy": None}
    try:
        return Gate(baseline_P=baseline_p, **gate_settings)
    except TypeError as e:
        raise PlanError(f"plan field 'protocol.gate' is malformed: {gate_settings!r}.") from e
