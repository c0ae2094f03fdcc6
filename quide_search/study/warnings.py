"""What a reader of a study's numbers must be told: T that times fallbacks, T that is noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quide_search.records import StudyKey, TrialKey

if TYPE_CHECKING:
    import optuna

__all__ = ["early_stop_savings", "latency_warnings"]


def latency_warnings(study: optuna.Study) -> str | None:
    """The warnings a study's T calls for, one per line, or None."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    latency = dict(study.user_attrs.get(StudyKey.PROTOCOL, {}).get("latency", {}))
    found = [w for w in (_fallback_warning(trials, latency), _unsettled_warning(trials, latency))]
    lines = [w for w in found if w]
    return "\n".join(lines) if lines else None


def _fallback_warning(
    trials: list[optuna.trial.FrozenTrial], latency: Mapping[str, Any]
) -> str | None:
    """Say so when the timed layers mostly ran the backend's dequantizing fallback."""
    if latency.get("method") == "analytic":
        return None
    fallback = sum(len(t.user_attrs.get(TrialKey.FALLBACK_LAYERS, [])) for t in trials)
    kernel = sum(len(t.user_attrs.get(TrialKey.KERNEL_LAYERS, [])) for t in trials)
    if fallback <= kernel:
        return None
    share = fallback / (fallback + kernel)
    cpu = (
        " On a CPU, --backend onnxruntime runs w8a8 and int4 plans with real int8/int4 kernels "
        "(ONNX Runtime), timed where they ship."
        if latency.get("device") == "cpu"
        else ""
    )
    return (
        f"warning: {share:.0%} of the quantized layers in this study ran no low-bit kernel "
        "(the backend dequantized their weights), so T mostly measures that overhead, not a "
        f"speed-up. Use --latency model:PROFILE for a target device's estimate.{cpu}"
    )


def _unsettled_warning(
    trials: list[optuna.trial.FrozenTrial], latency: Mapping[str, Any]
) -> str | None:
    """Say so when most measured trials' samples still spread beyond the stop rule."""
    target = latency.get("target_spread")
    timed = [t for t in trials if t.user_attrs.get(TrialKey.LATENCY_REPEATS)]
    if target is None or latency.get("source") != "measured" or not timed:
        return None
    spreads = sorted(float(t.user_attrs.get(TrialKey.LATENCY_SPREAD, 0.0)) for t in timed)
    loose = [x for x in spreads if x > target]
    if 4 * len(loose) <= len(timed):
        return None
    return (
        f"warning: T did not settle in {len(loose)} of {len(timed)} measured trials: after "
        f"{latency.get('max_repeats')} samples their middle half still spread by more than "
        f"{target:.0%} of the median (median spread {spreads[len(spreads) // 2]:.0%}). T "
        "differences of a few percent between plans are noise here; the confirmation step "
        "re-times the finalists side by side, and --latency table makes the search repeat."
    )


def early_stop_savings(pruned: list[optuna.trial.FrozenTrial]) -> dict[str, Any] | None:
    """What early stopping saved: the evaluation share that the pruned trials spent."""
    spent = [
        t.user_attrs[TrialKey.SAMPLES_SPENT] / t.user_attrs[TrialKey.EVAL_SAMPLES]
        for t in pruned
        if t.user_attrs.get(TrialKey.EVAL_SAMPLES) and TrialKey.SAMPLES_SPENT in t.user_attrs
    ]
    if not spent:
        return None
    return {"pruned": len(spent), "mean_eval_fraction": sum(spent) / len(spent)}
