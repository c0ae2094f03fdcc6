"""The Optuna objective: suggest a per-layer plan, measure it, return I'.

One categorical parameter per quantizable layer, named by the layer, over the configured bit set.
Each completed trial carries C, P, T_ms, I, I_prime, gate_passed, average bits and stored bytes as
user attributes, and the accuracy gate as an Optuna constraint so constrained samplers model it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quide_search.errors import MetricError, TrialEvaluationError
from quide_search.metric import RECORD_KEYS, Gate
from quide_search.plan import BitPlan
from quide_search.scorer import Scorer

if TYPE_CHECKING:
    import optuna

__all__ = [
    "GATE_CONSTRAINT",
    "INTERRUPTED",
    "NO_HEARTBEAT",
    "PlanObjective",
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
    "latency_source", "perplexity", "kernel_layers", "fallback_layers",
)  # fmt: skip


def uniform_params(layers: Sequence[str], qtype: str) -> dict[str, str]:
    """Return the trial parameters of the plan that gives every layer ``qtype``."""
    return {name: qtype for name in layers}


class PlanObjective:
    """Callable objective for ``study.optimize``.

    Args:
        scorer: Measures plans on the task.
        gate: The accuracy gate, built from the study's stored fp32 baseline.
        choices: Plan values each layer may take.
    """

    def __init__(
        self, *, scorer: Scorer, gate: Gate, choices: Sequence[str], granularity: str = "layer"
    ) -> None:
        self.scorer = scorer
        self.gate = gate
        self.choices = list(choices)
        self.layers = list(scorer.weight_counts)
        self.granularity = granularity
        self.groups = group_layers(self.layers, granularity)
        # Set by the SIGINT handler of ``session.optimize`` when Ctrl-C lands between trials.
        self.interrupt_pending = False
        self.in_trial = False

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

    def __call__(self, trial: optuna.Trial) -> float:
        """Measure the suggested plan and return its I'.

        Raises:
            TrialEvaluationError: For an expected fault; the study records the trial as FAIL
                and its reason in the ``fail_reason`` user attribute.
            KeyboardInterrupt: After recording the interruption and queueing the plan again.
        """
        try:
            self.in_trial = True
            if self.interrupt_pending:
                raise KeyboardInterrupt
            trial.set_user_attr("worker", _WORKER)
            return self._score(trial)
        except KeyboardInterrupt:
            # Optuna marks the trial FAIL and re-raises; the reason and one retry are ours.
            self.in_trial = False
            trial.set_user_attr("fail_reason", INTERRUPTED)
            if len(trial.params) == len(self.groups):
                retry_once(trial.study, trial.params, trial.user_attrs, trial.number, INTERRUPTED)
            raise
        finally:
            self.in_trial = False

    def _score(self, trial: optuna.Trial) -> float:
        plan = self.suggest(trial)
        earlier = _same_plan(trial)
        if earlier is not None:
            attrs = {k: earlier.user_attrs[k] for k in _COPIED_ATTRS if k in earlier.user_attrs}
            attrs["duplicate_of"] = earlier.number
        else:
            try:
                attrs = self._measure(plan)
            except (TrialEvaluationError, MetricError) as e:
                trial.set_user_attr("fail_reason", str(e))
                raise TrialEvaluationError(str(e)) from e
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_constraint(GATE_CONSTRAINT, self.gate.threshold - float(attrs["P"]))
        return float(attrs["I_prime"])

    def _measure(self, plan: BitPlan) -> dict[str, Any]:
        measurement = self.scorer.measure(plan)
        metrics = measurement.metrics(baseline_bytes=self.scorer.baseline_bytes, gate=self.gate)
        return {
            **metrics.to_dict(),
            "latency_repeats": measurement.latency_repeats,
            "latency_spread": measurement.latency_spread,
            "latency_source": self.scorer.context.method,
            "kernel_layers": measurement.kernel_layers,
            "fallback_layers": measurement.fallback_layers,
            **({"perplexity": measurement.perplexity} if measurement.perplexity else {}),
            "eval_samples": measurement.eval_samples,
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
    """Return an earlier completed trial with exactly these parameters, if any.

    Re-measuring an identical plan would only re-sample latency noise; reusing the stored
    metrics keeps a plan's score stable within a study and saves the evaluation.
    """
    import optuna

    for frozen in trial.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    ):
        if frozen.params == trial.params and "P" in frozen.user_attrs:
            return frozen
    return None
