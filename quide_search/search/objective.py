"""The Optuna objective: suggest a per-layer plan, measure it, return I'.

One categorical parameter per quantizable layer, named by the layer, over the configured bit set.
Each completed trial carries C, P, T_ms, I, I_prime, gate_passed, average bits and stored bytes as
user attributes, and the accuracy gate (plus any size or latency limit) as Optuna constraints so
the samplers, which read ``trial.constraints``, steer away from infeasible plans. A trial whose
evaluation proved it cannot pass the gate is PRUNED, with the samples it spent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import MetricError, Stopped, TrialEvaluationError
from quide_search.measure.measurement import GateUnreachable
from quide_search.metric import LATENCY_UNIT, Gate
from quide_search.plan import BitPlan
from quide_search.records import METRIC_KEYS, TrialKey
from quide_search.search.space import group_layers

if TYPE_CHECKING:
    import optuna

    from quide_search.measure.scorer import Scorer

__all__ = [
    "GATE_CONSTRAINT",
    "INTERRUPTED",
    "TERMINATED",
    "NO_HEARTBEAT",
    "PlanObjective",
    "SearchSettings",
    "requeue_stale",
    "retry_once",
    "worker_tag",
]

GATE_CONSTRAINT = "accuracy_gate"
"""Constraint key: ``threshold - P``, feasible when <= 0."""

INTERRUPTED = "interrupted by SIGINT (Ctrl-C) while the trial ran"
"""``fail_reason`` of a trial stopped by Ctrl-C."""
TERMINATED = "stopped by SIGTERM while the trial ran"
"""``fail_reason`` of a trial stopped by SIGTERM (a scheduler or service manager)."""

NO_HEARTBEAT = "its worker stopped sending heartbeats (killed or lost)"
"""``fail_reason`` of a trial whose worker went silent, and ``retry_reason`` of its retry."""

_COPIED_ATTRS = (
    *METRIC_KEYS, TrialKey.BASELINE_BYTES, TrialKey.UNIT, TrialKey.LATENCY_REPEATS,
    TrialKey.LATENCY_SPREAD, TrialKey.EVAL_SAMPLES, TrialKey.LATENCY_SOURCE, TrialKey.PERPLEXITY,
    TrialKey.KERNEL_LAYERS, TrialKey.FALLBACK_LAYERS, TrialKey.P_REACHABLE,
    TrialKey.SAMPLES_SPENT, TrialKey.LATENCY_PASSES,
)  # fmt: skip


@dataclass(frozen=True)
class SearchSettings:
    """How the objective scores trials, beyond the measurement protocol.

    Attributes:
        objective: ``iprime`` (maximise I') or ``pareto`` (C max, P max, T min).
        early_stop: ``exact`` stops an evaluation once the gate cannot pass; ``stat`` also stops
            on a statistical bound (``confidence``); ``off`` always scores every sample.
        confidence: Confidence of the ``stat`` bound.
        max_size_mb: Constraint on stored weight bytes (MiB), None for none.
        max_latency_ms: Constraint on T, None for none.
    """

    objective: str = "iprime"
    early_stop: str = "exact"
    confidence: float = 0.999
    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def constraints(self, attrs: dict[str, Any], gate: Gate) -> dict[str, float]:
        """Return each constraint's value for a trial's metrics (feasible when all <= 0)."""
        values = {GATE_CONSTRAINT: gate.threshold - float(attrs[TrialKey.P])}
        if self.max_size_mb is not None:
            values["size_mb"] = float(attrs[TrialKey.STORED_BYTES]) / 2**20 - self.max_size_mb
        if self.max_latency_ms is not None:
            values["latency_ms"] = float(attrs[TrialKey.T_MS]) - self.max_latency_ms
        return values


class PlanObjective:
    """Callable objective for ``study.optimize``.

    Args:
        scorer: Measures plans on the task.
        gate: The accuracy gate, built from the study's stored float baseline.
        choices: The precisions each layer (or group) may take; a group whose layers cannot
            all run one (the scorer's ``search.excluded``) goes without it
            (:attr:`group_choices`).
        granularity: ``layer``, ``block`` or ``type`` (see :func:`group_layers`).
        settings: Objective, early stopping and constraints.
    """

    def __init__(
        self,
        *,
        scorer: Scorer,
        gate: Gate,
        choices: Sequence[str],
        granularity: str = "layer",
        settings: SearchSettings | None = None,
    ) -> None:
        self.scorer = scorer
        self.gate = gate
        self.choices = list(choices)
        self.layers = list(scorer.weight_counts)
        self.granularity = granularity
        self.groups = group_layers(self.layers, granularity)
        # The search's exclusions, widened to whole groups: every layer of a group refuses
        # what any of them refuses, so a group's choices are its first layer's.
        search = scorer.search.model_copy(
            update={"precisions": tuple(self.choices), "granularity": granularity}
        )
        search.check_groups(self.layers)
        self._refused = search.grouped_excluded(self.layers)
        self.group_choices = {
            group: [q for q in self.choices if q not in self._refused.get(names[0], {})]
            for group, names in self.groups.items()
        }
        self.settings = settings or SearchSettings()
        # Set by the signal handler of ``study.optimize`` (SIGINT or SIGTERM). The handler
        # raises KeyboardInterrupt at once only while ``interruptible`` holds: while a plan is
        # being measured, never during storage I/O (see ``_interruptible``).
        self.stop_signal: int | None = None
        self.interruptible = False

    def suggest(self, trial: optuna.Trial) -> BitPlan:
        """Ask the trial for one precision per group of layers and return the per-layer plan."""
        chosen = {g: trial.suggest_categorical(g, self.group_choices[g]) for g in self.groups}
        layers = {name: chosen[g] for g, names in self.groups.items() for name in names}
        layers = {name: layers[name] for name in self.layers}  # module order
        if self.granularity != "layer":
            trial.set_user_attr(TrialKey.LAYERS, layers)
        return BitPlan(
            model=self.scorer.task.model_name,
            dataset=self.scorer.task.dataset_name,
            layers=layers,
            backend=self.scorer.backend.name,
        )

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float, float]:
        """Measure the suggested plan and return its I' (or C, P, T in Pareto mode).

        Raises:
            TrialEvaluationError: For an expected fault; the study records the trial as FAIL
                and its reason in the ``fail_reason`` user attribute.
            optuna.TrialPruned: When the evaluation proved the plan fails the gate.
            KeyboardInterrupt: After recording the interruption and queueing the plan again.
        """
        try:
            self._stop_if_asked()
            trial.set_user_attr(TrialKey.WORKER, _WORKER)
            value = self._score(trial)
            self._stop_if_asked()  # a signal landed during this trial's storage I/O
            return value
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL and re-raises; the reason and one retry are ours.
            reason = TERMINATED if self.stop_signal == signal.SIGTERM else INTERRUPTED
            trial.set_user_attr(TrialKey.FAIL_REASON, reason)
            if len(trial.params) == len(self.groups):
                retry_once(trial.study, trial.params, trial.user_attrs, trial.number, reason)
            raise

    def uniform_params(self, precision: str) -> dict[str, str]:
        """The trial parameters (group -> precision) of the uniform ``precision`` plan; a
        group that cannot run it takes the nearest of its choices (:func:`uniform_layers`)."""
        from quide_search.plan import uniform_layers

        layers = uniform_layers(self.layers, precision, self._refused, self.choices)
        return {group: layers[names[0]] for group, names in self.groups.items()}

    def _stop_if_asked(self) -> None:
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Let Ctrl-C raise at once inside this block, which must do no storage I/O.

        A KeyboardInterrupt raised inside a storage call can leave its SQLite transaction open,
        holding the write lock; the trial's next write (its fail reason) then waits on that
        lock for as long as the busy timeout. So only the measurement itself is interrupted
        at once; elsewhere a signal sets ``stop_signal`` and the trial stops at its next
        check.
        """
        self._stop_if_asked()
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False

    def _score(self, trial: optuna.Trial) -> float | tuple[float, float, float]:
        plan = self.suggest(trial)
        earlier = _same_plan(trial)
        if earlier is not None:
            attrs = {k: earlier.user_attrs[k] for k in _COPIED_ATTRS if k in earlier.user_attrs}
            attrs[TrialKey.DUPLICATE_OF] = earlier.number
        else:
            try:
                attrs = self._measure(plan, trial)
            except (TrialEvaluationError, MetricError) as e:
                trial.set_user_attr(TrialKey.FAIL_REASON, str(e))
                raise TrialEvaluationError(str(e)) from e
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if TrialKey.P not in attrs:
            return self._prune(trial, attrs)
        constraints = self.settings.constraints(attrs, self.gate)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        trial.set_user_attr(TrialKey.FEASIBLE, all(v <= 0 for v in constraints.values()))
        if self.settings.objective == "pareto":
            return float(attrs[TrialKey.C]), float(attrs[TrialKey.P]), float(attrs[TrialKey.T_MS])
        return float(attrs[TrialKey.I_PRIME])

    def _prune(self, trial: optuna.Trial, attrs: dict[str, Any]) -> float:
        import optuna

        trial.set_constraint(
            GATE_CONSTRAINT, self.gate.threshold - float(attrs[TrialKey.P_REACHABLE])
        )
        trial.set_user_attr(TrialKey.FEASIBLE, False)
        raise optuna.TrialPruned(
            f"P cannot reach the gate ({self.gate.threshold:.4f}): at most "
            f"{attrs['P_reachable']:.4f} after {attrs['samples_spent']} of "
            f"{attrs['eval_samples']} samples"
        )

    def _measure(self, plan: BitPlan, trial: optuna.Trial) -> dict[str, Any]:
        early = self.settings.early_stop
        full = early == "off" or trial.user_attrs.get(TrialKey.FULL_EVAL, False)

        def report(seen: int, reachable: float) -> None:
            if self.settings.objective == "pareto":
                return
            self.interruptible = False  # a storage write: see _interruptible
            try:
                trial.report(reachable, step=seen)
            finally:
                self.interruptible = True
            self._stop_if_asked()

        try:
            with self._interruptible():
                measurement = self.scorer.measure(
                    plan,
                    floor=None if full else self.gate.threshold,
                    confidence=self.settings.confidence if early == "stat" else None,
                    on_chunk=report,
                )
        except GateUnreachable as stop:
            return {
                TrialKey.P_REACHABLE: stop.reachable,
                TrialKey.SAMPLES_SPENT: stop.samples,
                TrialKey.EVAL_SAMPLES: stop.total,
                TrialKey.GATE_PASSED: False,
                TrialKey.AVG_WEIGHT_BITS: plan.average_bits(self.scorer.weight_counts),
                TrialKey.UNIT: LATENCY_UNIT,
            }
        metrics = measurement.metrics(baseline_bytes=self.scorer.baseline_bytes, gate=self.gate)
        return {
            **metrics.to_dict(),
            TrialKey.LATENCY_REPEATS: measurement.latency_repeats,
            TrialKey.LATENCY_SPREAD: measurement.latency_spread,
            TrialKey.LATENCY_PASSES: measurement.latency_passes,
            TrialKey.LATENCY_SOURCE: self.scorer.latency_label,
            TrialKey.KERNEL_LAYERS: measurement.kernel_layers,
            TrialKey.FALLBACK_LAYERS: measurement.fallback_layers,
            **({TrialKey.PERPLEXITY: measurement.perplexity} if measurement.perplexity else {}),
            TrialKey.EVAL_SAMPLES: measurement.eval_samples,
            TrialKey.SAMPLES_SPENT: measurement.eval_samples,
            TrialKey.SECONDS: measurement.seconds,
        }


def worker_tag(pid: int) -> str:
    """``host:pid``, what a trial's ``worker`` attribute names the process that ran it by."""
    return f"{socket.gethostname()}:{pid}"


_WORKER = worker_tag(os.getpid())


def retry_once(
    study: optuna.Study,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
    number: int,
    reason: str,
) -> bool:
    """Queue the plan of failed trial ``number`` again unless that trial was itself a retry.

    Returns:
        Whether the plan was queued.
    """
    if TrialKey.RETRY_OF in user_attrs:
        return False
    study.enqueue_trial(
        dict(params), user_attrs={TrialKey.RETRY_OF: number, TrialKey.RETRY_REASON: reason}
    )
    return True


def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna heartbeat callback: retry once the plan of a trial whose worker went silent."""
    retry_once(study, trial.params, trial.user_attrs, trial.number, NO_HEARTBEAT)


def _same_plan(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """Return an earlier completed (or pruned) trial with exactly these parameters, if any.

    Re-measuring an identical plan would only re-sample latency noise; reusing the stored
    metrics keeps a plan's score stable within a study and saves the evaluation.
    """
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for frozen in trial.study.get_trials(deepcopy=False, states=states):
        if frozen.params == trial.params and (
            TrialKey.P in frozen.user_attrs or TrialKey.P_REACHABLE in frozen.user_attrs
        ):
            return frozen
    return None
