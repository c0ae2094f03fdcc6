"""Measure one plan on a task: assemble it, score P, take T, count stored bytes.

The scorer holds what every trial shares (the float model, the eval tensors on the device,
the layer cache, the latency source), so a trial pays only for its own work. It is built one
way, from a study's :class:`~quide_search.protocol.Protocol` (:meth:`Scorer.build`), and never
reconfigured afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from quide_search.backends import QuantBackend, get_backend
from quide_search.backends._kinds import LayerBackend, WholeModelBackend
from quide_search.backends.calibration import LayerInputs
from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.latency import LatencyResult, LatencySource, TimingTarget, torch_threads
from quide_search.latency.measured import MeasuredLatency
from quide_search.measure.assembly import Assembler, LayerCache
from quide_search.measure.builder import PlanBuilder
from quide_search.measure.evaluator import Evaluator
from quide_search.measure.measurement import GateUnreachable, Measurement
from quide_search.measure.target import timing_target
from quide_search.plan import FLOAT, BitPlan

if TYPE_CHECKING:
    from quide_search.protocol import Protocol, Search
    from quide_search.tasks.task import Task

__all__ = ["Scorer", "apply_as_studied", "calibration_inputs"]

_LM_EVAL_BATCH = 4


class Scorer:
    """Scores plans for one task on one device under one protocol; use :meth:`build`.

    Attributes:
        task: The float model and its splits.
        device: Where evaluation and timing run.
        backend: The quantization backend.
        weight_counts: Quantizable layer -> weight elements, in module order.
        cache: The quantized layers trials are assembled from.
        evaluator: Scores P on the eval split (the search split).
        latency: Where T comes from.
        target: What the latency source may ask of the model (for confirmation too).
        eval_threads: torch threads evaluation runs with.
        baseline_bytes: Bytes the float model stores.
    """

    def __init__(
        self,
        task: Task,
        *,
        device: torch.device,
        backend: QuantBackend,
        cache: Assembler,
        evaluator: Evaluator,
        latency: LatencySource,
        target: TimingTarget,
        eval_threads: int | None,
        search: Search,
    ) -> None:
        self.task = task
        self.search = search
        self.device = device
        self.backend = backend
        self.cache: Assembler = cache
        self.model = cache.model
        self.weight_counts = task.layers(backend)
        self.evaluator = evaluator
        self.latency = latency
        self.target = target
        self.eval_threads = eval_threads
        self.baseline_bytes = cache.baseline_bytes
        self._test_evaluator: Evaluator | None = None

    @classmethod
    def build(
        cls,
        task: Task,
        protocol: Protocol,
        *,
        device: torch.device,
        cache_mb: float = 4096.0,
        stored_table: Mapping[str, Any] | None = None,
        stored_check: Sequence[Mapping[str, Any]] | None = None,
        latency: LatencySource | None = None,
        plan: BitPlan | None = None,
    ) -> Scorer:
        """Return the scorer of ``task`` under ``protocol``: the one way a scorer is made.

        Where the protocol leaves the evaluation's chunk schedule unset (a study being
        created), it is fitted to this machine now (:attr:`chunking` says what was chosen);
        where its latency source is a table and none is stored, the table is measured and
        checked now (:class:`~quide_search.latency.TableLatency` holds both).

        Args:
            task: The float model and its splits.
            protocol: How to measure (a study's stored protocol, or one being created).
            device: Where to evaluate and time.
            cache_mb: Bound on the cached quantized layers.
            stored_table: The study's latency table, if it holds one.
            stored_check: That table's check, if the study holds one (else checked now).
            latency: A latency source to use instead of the protocol's (tests, benchmarks).
            plan: The one plan this scorer is for (``evaluate``): the backend's hazard check
                covers its layers at their precisions, not every layer at every precision.

        Raises:
            ConfigError: If the protocol's precisions would crash the backend on this model
                and device, or its layers are not the task's.
            TrialEvaluationError: If measuring a latency table fails.
        """
        from quide_search.latency import make_source

        backend = get_backend(protocol.backend)
        layers = list(task.layers(backend))
        hazard = _hazard(backend, task, device, protocol.search, layers, plan)
        if hazard is not None:
            raise ConfigError(hazard)
        if tuple(layers) != protocol.task.layers:
            raise ConfigError(
                f"the model's quantizable layers must be the protocol's, but they differ "
                f"({len(layers)} against {len(protocol.task.layers)}). Use the study's model."
            )
        model = task.model.to(device)
        cache = _assembler(task, protocol, device, backend, cache_mb)
        with torch_threads(protocol.evaluation.threads):
            evaluator = _evaluator(task, protocol, device, model)
        target = timing_target(
            task, cache, protocol.latency.batch_size, device,
            excluded=protocol.search.grouped_excluded(layers),
        )  # fmt: skip
        source = latency or make_source(
            protocol.latency, target, precisions=protocol.search.precisions,
            stored=stored_table, stored_check=stored_check,
        )  # fmt: skip
        return cls(
            task,
            device=device,
            backend=backend,
            cache=cache,
            evaluator=evaluator,
            latency=source,
            target=target,
            eval_threads=protocol.evaluation.threads,
            search=protocol.search,
        )

    @property
    def chunking(self) -> tuple[int, int | None]:
        """The evaluation's chunk schedule: (first chunk, probes)."""
        return self.evaluator.chunk, self.evaluator.probes

    @property
    def latency_label(self) -> str:
        """What produced T, recorded with every trial: ``table``, ``model:NAME`` or the timer."""
        return self.latency.label

    def measure(
        self,
        plan: BitPlan,
        *,
        floor: float | None = None,
        confidence: float | None = None,
        on_chunk: Callable[[int, float], None] | None = None,
    ) -> Measurement:
        """Assemble ``plan`` from cached quantized layers and measure it.

        P is scored on the evaluation view (float twins where the backend dequantizes: the
        same outputs, without dequantizing on every call); T comes from the latency source.

        Args:
            floor: Stop the evaluation once P cannot reach it (see
                :meth:`Evaluator.evaluate_until`); None evaluates every sample.
            confidence: Also stop on a statistical bound at this confidence.
            on_chunk: Called with (samples seen, best P still reachable) after each chunk.

        Raises:
            PlanError: If the plan names layers the model lacks.
            TrialEvaluationError: If quantization, evaluation or timing fails.
            GateUnreachable: If the evaluation stopped early; no latency was taken.
        """
        t0 = time.perf_counter()
        # A table or an estimate answers at once, and may refuse the plan: ask it first, so
        # a refused plan costs no evaluation.
        early = self.latency.latency(plan) if self.latency.deterministic else None
        model = self.cache.assemble(plan)
        t1 = time.perf_counter()
        with torch_threads(self.eval_threads):
            accuracy, perplexity = self._score(self.evaluator, model, floor, confidence, on_chunk)
        t2 = time.perf_counter()
        latency = early or self.latency.latency(plan)
        t3 = time.perf_counter()
        stored = self.cache.stored_bytes(plan)
        paths = self.cache.kernel_paths(plan)
        return Measurement(
            P=accuracy,
            T_ms=latency.median_ms,
            stored_bytes=stored,
            avg_weight_bits=plan.average_bits(self.weight_counts),
            latency_repeats=latency.repeats,
            latency_spread=latency.spread,
            latency_passes=latency.passes,
            eval_samples=self.evaluator.samples,
            perplexity=perplexity,
            fallback_layers=[n for n, path in paths.items() if path == "fallback"],
            kernel_layers=[n for n, path in paths.items() if path != "fallback"],
            seconds={
                "assemble": t1 - t0,
                "evaluate": t2 - t1,
                "latency": t3 - t2,
                "record": time.perf_counter() - t3,
            },
        )

    def test_score(self, plan: BitPlan) -> float:
        """P of ``plan`` on the held-out test split: every sample, in plain batches, no stop.

        The search never sees this split; it scores the finalists at the end of a run
        (:mod:`quide_search.study.holdout`) and ``evaluate``. The batches depend only on the
        split's size and the protocol's eval batch size, so P reproduces exactly.

        Raises:
            PlanError: If the plan names layers the model lacks.
            TrialEvaluationError: If quantization or evaluation fails.
        """
        if self._test_evaluator is None:
            split = self.task.splits.test
            batch = self.evaluator.batch_size
            evaluator = Evaluator.from_split(split, device=self.device, batch_size=batch)
            self._test_evaluator = evaluator.with_chunking(batch, 1)
        model = self.cache.assemble(plan)
        with torch_threads(self.eval_threads):
            return self._score(self._test_evaluator, model, None, None, None)[0]

    def time_plan(self, plan: BitPlan) -> LatencyResult:
        """Measure ``plan``'s T on the device, whatever the study's source (for checks)."""
        context = self.latency.context
        if context.estimated:
            raise TrialEvaluationError("an analytic estimate has no device to time on")
        return MeasuredLatency(context, self.target).latency(plan)

    def layer_bytes(self, precisions: Sequence[str]) -> tuple[dict[str, dict[str, int]], int]:
        """Return layer -> precision -> stored bytes of that layer, and the bytes of the rest
        (a layer has no entry under a precision it, or its search group, cannot run).

        Stored bytes add up over layers, so these give any plan's bytes (and C) exactly.
        """
        refused = self.search.grouped_excluded(list(self.weight_counts))
        sizes = self.cache.bytes_by_precision(precisions, refused)
        rest = self.baseline_bytes - sum(row[FLOAT] for row in sizes.values())
        return sizes, rest

    def float_plan(self) -> BitPlan:
        """Return the plan that keeps every layer in float (the baseline)."""
        return self.uniform_plan(FLOAT)

    def uniform_plan(self, precision: str) -> BitPlan:
        """Return the plan that gives every quantizable layer ``precision``; a layer that
        cannot run it takes the nearest of its choices (:func:`uniform_layers`)."""
        layers = self.search.uniform(list(self.weight_counts), precision)
        return BitPlan(
            model=self.task.model_name,
            dataset=self.task.dataset_name,
            layers=layers,
            backend=self.backend.name,
        )

    def _score(
        self,
        evaluator: Evaluator,
        model: torch.nn.Module,
        floor: float | None,
        confidence: float | None,
        on_chunk: Callable[[int, float], None] | None,
    ) -> tuple[float, float | None]:
        if self.task.score is None:
            result = evaluator.evaluate_until(
                model, floor=floor, confidence=confidence, on_chunk=on_chunk
            )
            if result.accuracy is None:
                raise GateUnreachable(result.samples, result.total, result.reachable)
            return result.accuracy, result.perplexity
        # A task's own score function scores all samples at once: no early stop.
        try:
            with torch.no_grad():
                value = float(self.task.score(model, evaluator.inputs, evaluator.labels))
        except Exception as e:  # a user's score function may raise anything
            raise TrialEvaluationError(
                f"the task's score function failed: {type(e).__name__}: {e}"
            ) from e
        if not 0.0 <= value <= 1.0:
            raise TrialEvaluationError(f"the task's score must lie in [0, 1], but gave {value!r}")
        return value, None


def calibration_inputs(task: Task, protocol: Protocol) -> torch.Tensor | None:
    """The model inputs static activation scales are fitted on under ``protocol``: the first
    ``search.calibration_samples`` of the calibration split (samples first); None where no
    precision of the protocol is calibrated."""
    samples = protocol.search.calibration_samples
    return None if samples is None else task.splits.calib.first(samples).inputs


def apply_as_studied(task: Task, protocol: Protocol, plan: BitPlan) -> torch.nn.Module:
    """``plan`` applied to a copy of ``task``'s float model as the study's trials applied it:
    the same calibration samples and threads, hence the same quantized layers.

    Raises:
        PlanError: If a plan layer is not a quantizable layer of the model.
        TrialEvaluationError: If the backend fails on a layer.
    """
    return get_backend(protocol.backend).apply(
        task.model, plan, calibration=calibration_inputs(task, protocol),
        threads=protocol.evaluation.threads,
    )  # fmt: skip


def _hazard(
    backend: QuantBackend,
    task: Task,
    device: torch.device,
    search: Search,
    layers: list[str],
    plan: BitPlan | None,
) -> str | None:
    """Why scoring would crash the process: for a search, any layer at any of its choices;
    for one ``plan``, each of its layers at its own precision."""
    at: Mapping[str, list[str]]
    if plan is None:
        at = {q: [n for n in layers if q in search.choices(n)] for q in search.precisions}
    else:
        at = plan.layers_at()
    found = (backend.hazard(task.model, device, (q,), names) for q, names in at.items() if names)
    why = next((why for why in found if why is not None), None)
    if why is not None and plan is not None:  # what a search would do is no advice for a plan
        why = why.split(". ", 1)[0] + ". Re-export a plan this backend can run."
    return why


def _assembler(
    task: Task, protocol: Protocol, device: torch.device, backend: QuantBackend, cache_mb: float
) -> Assembler:
    """Where trials' models come from: quantized layers cached and swapped into views of the
    float model (a layer-by-layer backend), or whole models built per plan."""
    layers = list(task.layers(backend))
    model = task.model
    if isinstance(backend, WholeModelBackend):
        inputs = calibration_inputs(task, protocol)
        return PlanBuilder(model, backend, layers, calibration=inputs,
                           threads=protocol.latency.threads, limit_mb=cache_mb)  # fmt: skip
    assert isinstance(backend, LayerBackend)
    return LayerCache(model, backend, layers, limit_mb=cache_mb,
                      calibration=_calibration(task, protocol, device, model))  # fmt: skip


def _calibration(
    task: Task, protocol: Protocol, device: torch.device, model: torch.nn.Module
) -> LayerInputs | None:
    """What each layer receives on the first calibration samples, where the protocol's
    precisions fit static activation scales."""
    inputs = calibration_inputs(task, protocol)
    if inputs is None:
        return None
    return LayerInputs(model, inputs.to(device), threads=protocol.evaluation.threads)


def _evaluator(
    task: Task, protocol: Protocol, device: torch.device, model: torch.nn.Module
) -> Evaluator:
    """The eval split on the device, in the order and chunks the protocol scores it in."""
    settings = protocol.evaluation
    # Language-model logits are windows x tokens x vocabulary: keep batches small.
    batch = min(settings.batch_size, _LM_EVAL_BATCH) if task.decode else settings.batch_size
    evaluator = Evaluator.from_split(task.splits.eval, device=device, batch_size=batch)
    if task.score is not None:
        return evaluator  # a score function takes every sample at once
    from quide_search.progress import phase

    with phase(f"evaluation order and chunks: the float model on {len(task.splits.eval)} samples"):
        if settings.hardest_first:
            evaluator = evaluator.hardest_first(model)
        if settings.first_chunk is None:
            return evaluator.fit_chunking(model)
    return evaluator.with_chunking(settings.first_chunk, settings.probes)
