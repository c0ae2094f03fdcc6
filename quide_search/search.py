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
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import MetricError, TrialEvaluationError
from quide_search.measurement import GateUnreachable
from quide_search.metric import LATENCY_UNIT, RECORD_KEYS, Gate
from quide_search.plan import BitPlan
from quide_search.scorer import Scorer

if TYPE_CHECKING:
    import optuna

__all__ = [
    "GATE_CONSTRAINT",
    "INTERRUPTED",
    "NO_HEARTBEAT",
    "PlanObjective",
    "SearchSettings",
    "group_layers",
    "requeue_stale",
    "retry_once",
    "trial_plan",
    "uniform_params",
]

GATE_CONSTRAINT = "accuracy_gate"
"""Constraint key: ``threshold - P``, feasible when <= 0."""

INTERRUPTED = "interrupted by SIGINT (Ctrl-C) while the trial ran"
"""``fail_reason`` of a trial stopped by Ctrl-C."""

NO_HEARTBEAT = "its worker stopped sending heartbeats (killed or lost)"
"""``retry_reason`` of a plan re-queued after Optuna failed its trial as stale."""

_COPIED_ATTRS = (
    *RECORD_KEYS, "baseline_bytes", "unit", "latency_repeats", "latency_spread", "eval_samples",
    "latency_source", "perplexity", "kernel_layers", "fallback_layers", "P_reachable",
    "samples_spent", "T_raw_ms", "latency_passes",
)  # fmt: skip


def uniform_params(layers: Sequence[str], qtype: str) -> dict[str, str]:
    """Return the trial parameters of the plan that gives every layer ``qtype``."""
    return {name: qtype for name in layers}


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
        values = {GATE_CONSTRAINT: gate.threshold - float(attrs["P"])}
        if self.max_size_mb is not None:
            values["size_mb"] = float(attrs["stored_bytes"]) / 2**20 - self.max_size_mb
        if self.max_latency_ms is not None:
            values["latency_ms"] = float(attrs["T_ms"]) - self.max_latency_ms
        return values


class PlanObjective:
    """Callable objective for ``study.optimize``.

    Args:
        scorer: Measures plans on the task.
        gate: The accuracy gate, built from the study's stored fp32 baseline.
        choices: Plan values each layer may take.
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
        self.settings = settings or SearchSettings()
        # Set by the SIGINT handler of ``session.optimize``. The handler raises
        # KeyboardInterrupt at once only while ``interruptible`` holds: while a plan is being
        # measured, never during storage I/O (see ``_interruptible``).
        self.interrupt_pending = False
        self.interruptible = False

    def suggest(self, trial: optuna.Trial) -> BitPlan:
        """Ask the trial for one qtype per group of layers and return the per-layer plan."""
        chosen = {group: trial.suggest_categorical(group, self.choices) for group in self.groups}
        layers = {name: chosen[g] for g, names in self.groups.items() for name in names}
        layers = {name: layers[name] for name in self.layers}  # module order
        if self.granularity != "layer":
            trial.set_user_attr("layers", layers)
        return BitPlan(
            model=self.scorer.task.model_name, dataset=self.scorer.task.dataset_name, layers=layers
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
            if self.interrupt_pending:
                raise KeyboardInterrupt
            trial.set_user_attr("worker", _WORKER)
            value = self._score(trial)
            if self.interrupt_pending:  # Ctrl-C landed during this trial's storage I/O
                raise KeyboardInterrupt
            return value
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL and re-raises; the reason and one retry are ours.
            trial.set_user_attr("fail_reason", INTERRUPTED)
            if len(trial.params) == len(self.groups):
                retry_once(trial.study, trial.params, trial.user_attrs, trial.number, INTERRUPTED)
            raise

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Let Ctrl-C raise at once inside this block, which must do no storage I/O.

        A KeyboardInterrupt raised inside a storage call can leave its SQLite transaction open,
        holding the write lock; the trial's next write (its fail reason) then waits on that
        lock for as long as the busy timeout. So only the measurement itself is interrupted
        at once; elsewhere Ctrl-C sets ``interrupt_pending`` and the trial stops at its next
        check.
        """
        if self.interrupt_pending:
            raise KeyboardInterrupt
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
            attrs["duplicate_of"] = earlier.number
        else:
            try:
                attrs = self._measure(plan, trial)
            except (TrialEvaluationError, MetricError) as e:
                trial.set_user_attr("fail_reason", str(e))
                raise TrialEvaluationError(str(e)) from e
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if "P" not in attrs:
            return self._prune(trial, attrs)
        constraints = self.settings.constraints(attrs, self.gate)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("feasible", all(v <= 0 for v in constraints.values()))
        if self.settings.objective == "pareto":
            return float(attrs["C"]), float(attrs["P"]), float(attrs["T_ms"])
        return float(attrs["I_prime"])

    def _prune(self, trial: optuna.Trial, attrs: dict[str, Any]) -> float:
        import optuna

        trial.set_constraint(GATE_CONSTRAINT, self.gate.threshold - float(attrs["P_reachable"]))
        trial.set_user_attr("feasible", False)
        raise optuna.TrialPruned(
            f"P cannot reach the gate ({self.gate.threshold:.4f}): at most "
            f"{attrs['P_reachable']:.4f} after {attrs['samples_spent']} of "
            f"{attrs['eval_samples']} samples"
        )

    def _measure(self, plan: BitPlan, trial: optuna.Trial) -> dict[str, Any]:
        early = self.settings.early_stop
        full = early == "off" or trial.user_attrs.get("full_eval", False)

        def report(seen: int, reachable: float) -> None:
            if self.settings.objective == "pareto":
                return
            self.interruptible = False  # a storage write: see _interruptible
            try:
                trial.report(reachable, step=seen)
            finally:
                self.interruptible = True
            if self.interrupt_pending:
                raise KeyboardInterrupt

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
                "P_reachable": stop.reachable,
                "samples_spent": stop.samples,
                "eval_samples": stop.total,
                "gate_passed": False,
                "avg_weight_bits": plan.average_bits(self.scorer.weight_counts),
                "unit": LATENCY_UNIT,
            }
        metrics = measurement.metrics(baseline_bytes=self.scorer.baseline_bytes, gate=self.gate)
        return {
            **metrics.to_dict(),
            "latency_repeats": measurement.latency_repeats,
            "latency_spread": measurement.latency_spread,
            "latency_passes": measurement.latency_passes,
            **({"T_raw_ms": measurement.T_raw_ms} if measurement.T_raw_ms is not None else {}),
            "latency_source": self.scorer.latency_label,
            "kernel_layers": measurement.kernel_layers,
            "fallback_layers": measurement.fallback_layers,
            **({"perplexity": measurement.perplexity} if measurement.perplexity else {}),
            "eval_samples": measurement.eval_samples,
            "samples_spent": measurement.eval_samples,
            "seconds": measurement.seconds,
        }


_WORKER = f"{socket.gethostname()}:{os.getpid()}"
_BLOCK = re.compile(r"^(.*?\.\d+)(\.|$)")


def group_layers(layers: Sequence[str], granularity: str) -> dict[str, list[str]]:
    """Return search parameter -> the layers it sets, for ``--granularity``.

    ``layer``: one parameter per layer. ``block``: one per numbered block (``model.layers.3``
    holds every layer under it); layers outside blocks keep their own. ``type``: one per layer
    name (every ``q_proj`` shares one choice).
    """
    groups: dict[str, list[str]] = {}
    for name in layers:
        if granularity == "block":
            match = _BLOCK.match(name)
            key = match.group(1) if match else name
        elif granularity == "type":
            key = name.rsplit(".", 1)[-1]
        else:
            key = name
        groups.setdefault(key, []).append(name)
    return groups


def trial_plan(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """Return a trial's per-layer plan (its parameters, expanded when layers were grouped)."""
    return dict(trial.user_attrs.get("layers") or trial.params)


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
    if "retry_of" in user_attrs:
        return False
    study.enqueue_trial(dict(params), user_attrs={"retry_of": number, "retry_reason": reason})
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
            "P" in frozen.user_attrs or "P_reachable" in frozen.user_attrs
        ):
            return frozen
    return None
