"""The Optuna objective: suggest a per-layer plan, measure it, return I'.

One categorical parameter per quantizable layer, named by the layer, over the configured bit set.
Each completed trial carries C, P, T_ms, I, I_prime, gate_passed, average bits and stored bytes as
user attributes, and the accuracy gate (plus any size or latency limit) as Optuna constraints so
the samplers, which read ``trial.constraints``, steer away from infeasible plans. A trial whose
evaluation proved it cannot pass the gate is PRUNED, with the samples it spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quide_search.errors import MetricError, TrialEvaluationError
from quide_search.measure.measurement import GateUnreachable
from quide_search.metric import LATENCY_UNIT, Gate
from quide_search.plan import BitPlan
from quide_search.records import METRIC_KEYS, TrialKey
from quide_search.search.space import group_layers
from quide_search.search.stop import StopSwitch

if TYPE_CHECKING:
    import optuna

    from quide_search.measure.scorer import Scorer

__all__ = ["GATE_CONSTRAINT", "PlanObjective", "SearchSettings"]

GATE_CONSTRAINT = "accuracy_gate"
"""Constraint key: ``threshold - P``, feasible when <= 0."""

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
        stops: Where the optimize loop records a stop signal; the objective checks it
            between steps and lets it cut in at once only while a plan is measured.
    """

    def __init__(
        self,
        *,
        scorer: Scorer,
        gate: Gate,
        choices: Sequence[str],
        granularity: str = "layer",
        settings: SearchSettings | None = None,
        stops: StopSwitch | None = None,
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
        self.stops = stops or StopSwitch()

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
            Stopped: When a stop signal arrived (:attr:`stops`); what that does to the trial
                is the optimize loop's business.
        """
        self.stops.check()
        value = self._score(trial)
        self.stops.check()  # a signal landed during this trial's storage I/O
        return value

    def uniform_params(self, precision: str) -> dict[str, str]:
        """The trial parameters (group -> precision) of the uniform ``precision`` plan; a
        group that cannot run it takes the nearest of its choices (:func:`uniform_layers`)."""
        from quide_search.plan import uniform_layers

        layers = uniform_layers(self.layers, precision, self._refused, self.choices)
        return {group: layers[names[0]] for group, names in self.groups.items()}

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
            with self.stops.storage_io():
                trial.report(reachable, step=seen)

        try:
            with self.stops.measuring():
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
