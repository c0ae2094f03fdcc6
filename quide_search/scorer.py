"""Measure one plan on a task: quantize, score P, time T, count stored bytes.

The scorer holds what every trial shares (the float model, the eval tensors on the device, the
latency example and context), so a trial only pays for its own work. It reports the time spent
in each phase, which the benchmarks use to show where a trial's time goes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from quide_search.assembly import LayerCache
from quide_search.config import RunConfig
from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.evaluator import Evaluator
from quide_search.latency import (
    SAMPLE_MS,
    LatencyContext,
    LatencyResult,
    measure_latency,
    mixed_reference,
)
from quide_search.latency_model import estimate_ms, layer_shapes, profile
from quide_search.latency_table import LatencyTable, measure_table, read_table
from quide_search.measurement import GateUnreachable, Measurement
from quide_search.models.causal_lm import GreedyDecode
from quide_search.plan import FLOAT, BitPlan
from quide_search.quantize import kernel_hazard, model_bytes
from quide_search.task import Task

__all__ = ["Scorer"]

_LM_EVAL_BATCH = 4


class Scorer:
    """Scores plans for one task on one device under one latency protocol.

    Args:
        task: The float model and its splits.
        device: Where evaluation and timing run.
        batch_size: Batch size of the latency measurement (recorded with T).
        eval_batch_size: Batch size of the accuracy evaluation (does not change P).
        threads: torch intra-op threads to fix for the whole run (None keeps torch's default).
        latency_threads: torch threads that T alone is timed with (None: the run's); recorded
            with every T. One thread repeats more closely on a shared CPU, while evaluation
            keeps the run's threads.
        latency: ``measured``; ``table`` or ``table:PATH`` for the per-layer table (set with
            :meth:`use_table`); or ``model:PROFILE`` for the analytic estimate.
        cache_mb: Bound on the cached quantized layers that trials are assembled from.
        hardest_first: Evaluate the float model's least sure samples first, so the exact
            early stop comes sooner (P does not change); off for the statistical stop.
        eval_chunk: Samples in the first evaluation chunk; ``auto`` fits it to the measured
            cost of a forward call (:meth:`Evaluator.fit_chunking`), None keeps 1/40 of
            the split (plans recorded before the choice existed).
        latency_reference: The reference's T per timed pass, which measured T on a CPU is
            paired with (:meth:`calibrate_latency`); ``auto`` measures it now, None times
            plain medians (studies recorded before pairing existed).
        reference_qtypes: The qtypes the reference deals out over the layers
            (:meth:`BitPlan.mixed`: a study's choices); None pairs with the float model
            (studies recorded before the reference was a mix).
        sample_ms: The shortest timed sample on a CPU (:meth:`use_sample_floor`); None or 0
            times single passes.
    """

    def __init__(
        self,
        task: Task,
        *,
        device: torch.device,
        batch_size: int = 1,
        eval_batch_size: int = 256,
        threads: int | None = None,
        latency_threads: int | None = None,
        latency: str = "measured",
        cache_mb: float = 4096.0,
        hardest_first: bool = True,
        eval_chunk: int | Literal["auto"] | None = "auto",
        latency_reference: float | Literal["auto"] | None = "auto",
        sample_ms: float | None = SAMPLE_MS,
        reference_qtypes: Sequence[str] | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.task = task
        self.device = device
        self.model = task.model.to(device)
        if task.decode is not None:
            # Language-model logits are windows x tokens x vocabulary: keep batches small.
            eval_batch_size = min(eval_batch_size, _LM_EVAL_BATCH)
        self.evaluator = Evaluator.from_split(
            task.splits.eval, device=device, batch_size=eval_batch_size
        )
        if hardest_first and task.score is None:
            self.evaluator = self.evaluator.hardest_first(self.model)
        if eval_chunk == "auto":
            self.fit_eval_chunk()
        else:
            self.use_eval_chunk(eval_chunk)
        context = LatencyContext.create(
            device=device, batch_size=batch_size, source=latency, threads=latency_threads
        )
        if task.decode is not None:
            decode = {k: v for k, v in task.decode.items() if k != "pad_token_id"}
            context = dataclasses.replace(context, decode={**decode, "per": "generated token"})
        self.context = context
        self.use_sample_floor(sample_ms)
        self.source = latency
        self.table: LatencyTable | None = None
        # Real eval samples as the latency input, repeated if the split is smaller; a causal
        # LM's prompt is the start of an eval window.
        inputs = task.splits.eval.inputs
        if task.decode is not None:
            inputs = inputs[:, : task.decode["prompt_tokens"]]
        if task.example is not None:
            inputs = task.example
        reps = -(-batch_size // inputs.shape[0])
        self.example = inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:batch_size].to(device)
        self.weight_counts = task.layers
        self.baseline_bytes = model_bytes(self.model)
        self.layers = LayerCache(self.model, limit_mb=cache_mb)
        # One decoding step reads every weight for one new token: what the analytic estimate
        # and the per-layer table time for a causal LM.
        self._step = self.example[:, :1] if task.decode is not None else self.example
        self._shapes = layer_shapes(self.model, self._step) if self.context.estimated else []
        self._pinned: tuple[tuple[str, ...], torch.nn.Module] | None = None
        if latency_reference == "auto":
            self.calibrate_latency(reference_qtypes)
        else:
            self.use_latency_reference(latency_reference, reference_qtypes)

    @classmethod
    def for_config(
        cls, task: Task, config: RunConfig, *, device: torch.device, calibrate: bool = True
    ) -> Scorer:
        """Return the scorer of ``task`` under the measurement settings of ``config``.

        Without ``config.eval_chunk`` the first evaluation chunk is fitted here, and the
        latency reference is measured, unless ``calibrate`` is False: a study does both only
        when it is created, and processes that join read them from the study
        (:meth:`use_eval_chunk`, :meth:`use_latency_reference`).

        Raises:
            ConfigError: If a choice in ``config.bits`` would crash quanto on this model and
                device (see :func:`kernel_hazard`); raised before anything is stored.
        """
        hazard = kernel_hazard(task.model, device, config.bits)
        if hazard is not None:
            raise ConfigError(hazard)
        return cls(
            task,
            device=device,
            batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size,
            threads=config.threads,
            latency_threads=config.latency_threads,
            latency=config.latency,
            cache_mb=config.cache_mb,
            hardest_first=config.early_stop != "stat",
            eval_chunk=config.eval_chunk or ("auto" if calibrate else None),
            latency_reference="auto" if calibrate else None,
            sample_ms=config.latency_sample_ms,
            reference_qtypes=config.bits,
        )

    def fit_eval_chunk(self) -> tuple[int, int | None]:
        """Fit the evaluation's chunk schedule to this machine's call cost; return it.

        A task's own score function takes all samples at once, so nothing is timed for it.
        """
        if self.task.score is None:
            self.evaluator = self.evaluator.fit_chunking(self.model)
        return self.evaluator.chunk, self.evaluator.probes

    def use_eval_chunk(self, first: int | None, probes: int | None = None) -> None:
        """Score with this chunk schedule from now on (a study's stored choice)."""
        self.evaluator = dataclasses.replace(self.evaluator, first_chunk=first, probes=probes)

    def calibrate_latency(self, qtypes: Sequence[str] | None = None) -> float | None:
        """Measure the reference that measured T is paired with on a CPU; return it.

        The reference is the plan that deals ``qtypes`` out over the layers (None: the float
        model), and its T is its plain median per timed pass, measured once. Each later
        measurement pairs every pass of a plan with a pass of the reference and reports
        ``reference × median ratio``: the plan's T at the speed the machine had when the
        reference was measured (see :mod:`quide_search.latency`). CUDA events, tables and
        estimates are not paired: returns None there. Where the mix fails to quantize or
        run (a layer that breaks under one of the qtypes), the float model is the reference;
        the context says which it is.

        Raises:
            TrialEvaluationError: If the float model's T cannot be measured either.
        """
        self.use_latency_reference(None)
        if not (self._times_model and self.context.method == "wall_clock"):
            return None
        try:
            reference = self._timed(self._reference_model(qtypes))
            timed = measure_latency(reference, self.example, context=self.context)
        except TrialEvaluationError:
            if qtypes is None:
                raise
            return self.calibrate_latency(None)
        self.use_latency_reference(timed.median_ms, qtypes)
        return timed.median_ms

    def use_latency_reference(self, ms: float | None, qtypes: Sequence[str] | None = None) -> None:
        """Pair measured T with this reference from now on (a study's stored one); None: don't.

        ``qtypes`` are the reference's (see :meth:`calibrate_latency`); None: the float model.
        """
        self.context = dataclasses.replace(
            self.context, reference_ms=ms, reference_qtypes=mixed_reference(qtypes)
        )

    def latency_reference(self) -> torch.nn.Module | None:
        """Return what each timed pass of a plan is paired with now, or None: not paired."""
        if self.context.reference_ms is None:
            return None
        return self._timed(self._reference_model(self.context.reference_qtypes))

    def _reference_model(self, qtypes: Sequence[str] | None) -> torch.nn.Module:
        """The float model, or the mixed plan of ``qtypes`` in a view trials leave alone."""
        key = mixed_reference(qtypes)
        if key is None:
            return self.model
        if self._pinned is None or self._pinned[0] != key:
            plan = BitPlan.mixed(
                model=self.task.model_name,
                dataset=self.task.dataset_name,
                layers=self.weight_counts,
                qtypes=key,
            )
            self._pinned = (key, self.layers.pinned(plan))
        return self._pinned[1]

    def use_sample_floor(self, ms: float | None) -> None:
        """Time samples of >= ``ms`` on a CPU (a study's stored floor); None or 0: single passes.

        Call before :meth:`calibrate_latency`, which measures the reference with the floor in
        force.
        """
        self.context = dataclasses.replace(self.context, sample_ms=ms or None)

    @property
    def latency_label(self) -> str:
        """What produced T, recorded with every trial: ``table``, ``model:NAME`` or the timer."""
        return "table" if self.source.startswith("table") else self.context.method

    def use_table(self, table: LatencyTable) -> None:
        """Predict T from ``table`` from now on (``--latency table``)."""
        self.table = table

    def layer_bytes(self, qtypes: Sequence[str]) -> tuple[dict[str, dict[str, int]], int]:
        """Return layer -> qtype -> stored bytes of that layer, and the bytes of the rest.

        Stored bytes add up over layers, so these give any plan's bytes (and C) exactly.
        """
        sizes = {
            name: {q: model_bytes(self.layers.module(name, q)) for q in (FLOAT, *qtypes)}
            for name in self.weight_counts
        }
        rest = self.baseline_bytes - sum(row[FLOAT] for row in sizes.values())
        return sizes, rest

    def prepare_table(self, qtypes: Sequence[str]) -> LatencyTable:
        """Read ``table:PATH`` or measure a new table, and predict T from it from now on.

        Raises:
            ConfigError: If the file is missing, not a table, or lacks a layer or qtype.
        """
        if self.source.startswith("table:"):
            table = read_table(self.source.removeprefix("table:"))
            for qtype in qtypes:
                table.predict(dict.fromkeys(self.weight_counts, qtype))  # covers every choice
        else:
            table = self.build_table(qtypes)
        self.use_table(table)
        return table

    def build_table(self, qtypes: Sequence[str]) -> LatencyTable:
        """Measure the float model's T and each (layer, qtype) alone: the latency table."""
        return measure_table(
            self.layers,
            self._step,
            layers=list(self.weight_counts),
            qtypes=qtypes,
            context=self.context,
            base_ms=self.measured_ms(self.float_plan()),
        )

    def measured_ms(self, plan: BitPlan) -> float:
        """Return the measured T of ``plan``, whatever the latency source (for checks)."""
        return self.time_plan(plan).median_ms

    def time_plan(self, plan: BitPlan) -> LatencyResult:
        """Measure ``plan``'s T alone: median, pairs or passes, spread and plain median."""
        return self._measured(self.layers.assemble(plan, exact=True))

    def measure(
        self,
        plan: BitPlan,
        *,
        floor: float | None = None,
        confidence: float | None = None,
        on_chunk: Callable[[int, float], None] | None = None,
    ) -> Measurement:
        """Assemble ``plan`` from cached quantized layers and measure it.

        P is scored on the evaluation view (float twins where quanto dequantizes: the same
        outputs, without dequantizing on every call); T is timed on quanto's own modules.

        Args:
            floor: Stop the evaluation once P cannot reach it (see
                :meth:`Evaluator.evaluate_until`); None evaluates every sample.
            confidence: Also stop on a statistical bound at this confidence.
            on_chunk: Called with (samples seen, best P still reachable) after each chunk.

        Raises:
            PlanError: If the plan names layers the model lacks.
            TrialEvaluationError: If quantization, evaluation or timing fails.
            GateUnreachable: If the evaluation stopped early; no latency was measured.
        """
        t0 = time.perf_counter()
        model = self.layers.assemble(plan)
        t1 = time.perf_counter()
        accuracy, perplexity = self._score(model, floor, confidence, on_chunk)
        t2 = time.perf_counter()
        exact = self.layers.assemble(plan, exact=True) if self._times_model else None
        t3 = time.perf_counter()
        latency = self._latency(exact, plan)
        t4 = time.perf_counter()
        stored = self.layers.stored_bytes(plan)
        paths = self.layers.kernel_paths(plan)
        return Measurement(
            P=accuracy,
            T_ms=latency.median_ms,
            stored_bytes=stored,
            avg_weight_bits=plan.average_bits(self.weight_counts),
            latency_repeats=latency.repeats,
            latency_spread=latency.spread,
            latency_passes=latency.passes,
            eval_samples=self.evaluator.samples,
            T_raw_ms=latency.raw_ms,
            perplexity=perplexity,
            fallback_layers=[n for n, path in paths.items() if path == "fallback"],
            kernel_layers=[n for n, path in paths.items() if path != "fallback"],
            seconds={
                "assemble": (t1 - t0) + (t3 - t2),
                "evaluate": t2 - t1,
                "latency": t4 - t3,
                "record": time.perf_counter() - t4,
            },
        )

    def _score(
        self,
        model: torch.nn.Module,
        floor: float | None = None,
        confidence: float | None = None,
        on_chunk: Callable[[int, float], None] | None = None,
    ) -> tuple[float, float | None]:
        if self.task.score is None:
            result = self.evaluator.evaluate_until(
                model, floor=floor, confidence=confidence, on_chunk=on_chunk
            )
            if result.accuracy is None:
                raise GateUnreachable(result.samples, result.total, result.reachable)
            return result.accuracy, result.perplexity
        # A task's own score function scores all samples at once: no early stop.
        try:
            with torch.no_grad():
                value = float(self.task.score(model, self.evaluator.inputs, self.evaluator.labels))
        except Exception as e:  # a user's score function may raise anything
            raise TrialEvaluationError(
                f"the task's score function failed: {type(e).__name__}: {e}"
            ) from e
        if not 0.0 <= value <= 1.0:
            raise TrialEvaluationError(f"the task's score must lie in [0, 1], but gave {value!r}")
        return value, None

    @property
    def _times_model(self) -> bool:
        """Whether T needs quanto's quantized model itself (a measurement, not a prediction)."""
        return not self.source.startswith("table") and not self.context.estimated

    def _latency(self, model: torch.nn.Module | None, plan: BitPlan) -> LatencyResult:
        if self.context.estimated:
            assert self.context.profile is not None
            device = profile(self.context.profile["name"])
            weights = self.layers.layer_bytes(plan)
            estimate = estimate_ms(weights, self._shapes, device, self.context.batch_size)
            return LatencyResult(median_ms=estimate, repeats=0, spread=0.0)
        if model is None:
            if self.table is None:
                raise TrialEvaluationError("--latency table: no table is loaded (a bug)")
            return LatencyResult(self.table.predict(plan.layers), repeats=0, spread=0.0)
        return self._measured(model)

    def _measured(self, model: torch.nn.Module) -> LatencyResult:
        """Time ``model`` on the latency example; per generated token for a causal LM."""
        timed = measure_latency(
            self._timed(model),
            self.example,
            context=self.context,
            reference=self.latency_reference(),
        )
        return self._per_token(timed)

    def _timed(self, model: torch.nn.Module) -> torch.nn.Module:
        """What one timed pass runs: the model, or greedy decoding for a causal LM."""
        if self.task.decode is None:
            return model
        tokens = self.task.decode["new_tokens"]
        return GreedyDecode(model, tokens, self.task.decode["pad_token_id"])

    def _per_token(self, result: LatencyResult) -> LatencyResult:
        if self.task.decode is None:
            return result
        tokens = self.task.decode["new_tokens"]
        raw = None if result.raw_ms is None else result.raw_ms / tokens
        return dataclasses.replace(result, median_ms=result.median_ms / tokens, raw_ms=raw)

    def float_plan(self) -> BitPlan:
        """Return the plan that keeps every layer in float (the baseline)."""
        return self.uniform_plan(FLOAT)

    def uniform_plan(self, qtype: str) -> BitPlan:
        """Return the plan that gives every quantizable layer ``qtype``."""
        return BitPlan.uniform(
            model=self.task.model_name,
            dataset=self.task.dataset_name,
            layers=self.weight_counts,
            qtype=qtype,
        )
