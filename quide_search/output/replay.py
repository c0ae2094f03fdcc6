"""Re-apply an exported plan to its model and measure it again (``quide-search evaluate``).

P is scored exactly as in the study (the record's protocol: its splits, evaluation batch and
threads), on the search split and on the held-out test split, so both reproduce exactly. T is
taken again on this machine's device: measured (a table study's T is measured too) or, for an
analytic study, the same estimate. With another backend than the plan's (``--backend``) the
same protocol scores the plan as that backend applies it; its P is then not compared with the
record's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, PlanError
from quide_search.metric import Metrics
from quide_search.plan import BitPlan

if TYPE_CHECKING:
    import torch

    from quide_search.backends import QuantBackend
    from quide_search.measure.scorer import Scorer
    from quide_search.protocol import Protocol
    from quide_search.tasks.task import Task

__all__ = ["Replay", "evaluate_plan"]


@dataclass(frozen=True)
class Replay:
    """A plan measured again, beside what its record stated.

    Attributes:
        plan: The plan.
        measured: Its metrics now (P on the search split).
        p_test: Its P now on the held-out test split.
        gate_passed_test: Whether ``p_test`` passes the study's gate around the float
            model's P on the test split (the record's, else measured now).
        stored: The record's metrics (``P_test`` where the plan was a study finalist).
        latency: How T was taken now.
        stored_backend: The backend the record's metrics were measured with; ``plan.backend``
            applied it now.
    """

    plan: BitPlan
    measured: Metrics
    p_test: float
    gate_passed_test: bool
    stored: dict[str, Any]
    latency: dict[str, Any]
    stored_backend: str

    @property
    def reproduced(self) -> bool | None:
        """Whether P, and P_test where stored, equal the stored values exactly (None if the
        record holds no P, or another backend measured it)."""
        if "P" not in self.stored or self.stored_backend != self.plan.backend:
            return None
        same_test = self.stored.get("P_test", self.p_test) == self.p_test
        return self.stored["P"] == self.measured.P and same_test

    @property
    def compression_differs(self) -> bool:
        """Whether the record's C differs from the C of the bytes stored now (C is counted,
        not timed: the same plan on the same backend stores the same bytes)."""
        stored = self.stored.get("C")
        if stored is None or self.stored_backend != self.plan.backend:
            return False
        return not math.isclose(float(stored), self.measured.C, rel_tol=1e-9)


def _check_offered(plan: BitPlan, device: torch.device, path: str | os.PathLike[str]) -> None:
    """Refuse a plan that puts a layer at a precision its backend does not run here.

    Raises:
        PlanError: Naming the layer, the precision and what the backend offers.
    """
    from quide_search.backends import get_backend

    offered = get_backend(plan.backend).precisions(device)
    for name, precision in plan.quantized_layers().items():
        if precision not in offered:
            raise PlanError(
                f"plan file {str(path)!r} must put each layer at a precision the {plan.backend} "
                f"backend runs on {device.type}, but it puts {name} at {precision} (it offers "
                f"{', '.join(offered)}). Re-export the plan, or apply it with --backend."
            )


def evaluate_plan(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    weights: str | None = None,
    text_file: str | None = None,
    backend: str | None = None,
) -> Replay:
    """Load a plan file, apply it to a fresh float model and measure C, P, T, I, I'.

    A plan whose model is a ``package.module:factory`` is evaluated only when ``model``
    names the same factory: a plan file is data and never runs code by itself.
    ``data_dir``, ``weights`` and ``text_file`` say where the study's files are now, where
    they moved. ``backend`` applies the plan with another backend than the one that made it.

    Raises:
        PlanError: If the file is not a valid plan, or names layers its model lacks, or
            ``backend`` cannot apply it (a precision or a layer it does not quantize).
        ConfigError: If ``model``/``dataset`` are given and differ from the plan's, or the
            plan names a factory that ``model`` does not.
    """
    from quide_search.output.export import task_options, trusted_factory
    from quide_search.output.record import load_plan, record_protocol

    plan, record = load_plan(path)  # a bad plan is refused before torch is imported
    # Before anything else reads the record: a plan never imports code the user did not name.
    trusted_factory(plan.model, model, source=f"plan {str(path)!r}")
    _check_names(plan, path, model=model, dataset=dataset)

    from quide_search.files import check_path
    from quide_search.latency import torch_threads
    from quide_search.measure.device import resolve_device
    from quide_search.measure.evaluator import check_task_runs
    from quide_search.measure.scorer import Scorer
    from quide_search.tasks.resolver import load_task

    target = resolve_device(device)
    protocol = _here(record_protocol(record, path), target)
    options = task_options(protocol)
    options.update({k: v for k, v in (("data_dir", data_dir), ("weights", weights)) if v})
    if options.get("data_dir") and not data_dir:  # a path from the file, not from a flag
        flag = "the plan's protocol.task.data_dir (override it with --data-dir)"
        check_path(options["data_dir"], kind="folder", flag=flag)
    if text_file and options["text"] is None:
        raise ConfigError(
            "--text-file is read only by causal language models, but the plan's model "
            f"{protocol.task.model!r} is not one. Drop --text-file."
        )
    if text_file:
        options["text"] = dataclasses.replace(options["text"], text_file=text_file)
    task = load_task(**options, device_type=target.type)
    check_task_runs(task)
    stored_backend = plan.backend
    if backend is not None and backend != plan.backend:
        plan, protocol = _on_backend(plan, protocol, task, backend, target)
    _check_offered(plan, target, path)
    with torch_threads(protocol.evaluation.threads):
        scorer = Scorer.build(task, protocol, device=target, plan=plan)
        plan.validate_layers(scorer.weight_counts)
        measured = scorer.measure(plan)
        p_test = scorer.test_score(plan)
        baseline_p, baseline_p_test = _baseline(record.get("baseline") or {}, scorer)
    metrics = measured.metrics(
        baseline_bytes=scorer.baseline_bytes, gate=protocol.gate_for(baseline_p)
    )
    return Replay(
        plan=plan,
        measured=metrics,
        p_test=p_test,
        gate_passed_test=protocol.gate_for(baseline_p_test).passes(p_test),
        stored=dict(record.get("metrics") or {}),
        latency=scorer.latency.context.to_dict(),
        stored_backend=stored_backend,
    )


def _on_backend(
    plan: BitPlan, protocol: Protocol, task: Task, name: str, device: torch.device
) -> tuple[BitPlan, Protocol]:
    """The plan and protocol as the backend ``name`` applies them.

    Raises:
        PlanError: If the plan names a layer its model lacks, or the backend leaves a layer
            the plan quantizes in float, or cannot run one of its precisions on ``device``.
    """
    from quide_search.backends import get_backend
    from quide_search.protocol_builder import on_backend

    backend = get_backend(name)
    plan.validate_layers(task.layers(get_backend(plan.backend)))
    layers = task.layers(backend)
    outside = [n for n in plan.quantized_layers() if n not in layers]
    if outside or not layers:
        raise PlanError(
            f"--backend {name} must quantize every layer the plan quantizes, but it leaves "
            f"{_names(outside) or 'every layer of ' + repr(plan.model)} in float (it "
            f"quantizes {backend.layer_kinds()}). Evaluate the plan with --backend {plan.backend}."
        )
    moved = dataclasses.replace(
        plan, layers={n: q for n, q in plan.layers.items() if n in layers}, backend=name
    )
    _check_runs(moved, backend, task, device, origin=plan.backend)
    return moved, on_backend(protocol, name, task, tuple(moved.layers_at()), device)


def _check_runs(
    plan: BitPlan, backend: QuantBackend, task: Task, device: torch.device, *, origin: str
) -> None:
    """Refuse a plan whose precisions ``backend`` cannot run here, saying which layers."""
    offered, refused = backend.precisions(device), backend.refusals(device)
    for precision, at in plan.layers_at().items():
        why = None
        if precision not in offered:
            why = refused.get(precision, f"is not among its precisions ({', '.join(offered)})")
        elif backend.calibrated(precision) and len(task.splits.calib) == 0:
            why = "fits static activation scales on the calibration split, which this task lacks"
        elif hazard := backend.hazard(task.model, device, (precision,), at):
            why = "would not run: " + hazard.split(". ")[0]  # what fails, not a search's advice
        if why is not None:
            raise PlanError(
                f"--backend {backend.name} must run every precision of the plan on "
                f"{device.type}, but {precision} (on {_names(at)}) {why}. Evaluate the plan "
                f"with --backend {origin}."
            )


def _names(names: list[str]) -> str:
    """Up to five layer names, and how many more."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _baseline(stored: Mapping[str, Any], scorer: Scorer) -> tuple[float, float]:
    """The float model's P on the search and test splits: the record's, else measured now."""
    p, p_test = stored.get("P"), stored.get("P_test")
    if p is None:
        p = scorer.measure(scorer.float_plan()).P
    if p_test is None:
        p_test = scorer.test_score(scorer.float_plan())
    return float(p), float(p_test)


def _here(protocol: Protocol, device: Any) -> Protocol:
    """The study's protocol, with T taken on this machine's ``device``.

    A table study's T is measured (its table describes the machine it was measured on); an
    analytic estimate stays what it was.
    """
    from quide_search.latency import latency_context

    stored = protocol.latency
    spec = stored.source if stored.estimated else "measured"
    latency = latency_context(
        spec,
        device=device,
        batch_size=stored.batch_size,
        threads=stored.threads,
        sample_ms=stored.sample_ms,
        decode=dataclasses.asdict(stored)["decode"],
    )
    return protocol.model_copy(update={"latency": latency})


def _check_names(
    plan: BitPlan, path: str | os.PathLike[str], *, model: str | None, dataset: str | None
) -> None:
    """Refuse a plan whose model or dataset differs from the flags, or is not registered."""
    from quide_search.tasks.data import DATASETS
    from quide_search.tasks.models import MODELS
    from quide_search.tasks.models.causal_lm import HF_PREFIX
    from quide_search.tasks.models.custom import is_factory_spec

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
