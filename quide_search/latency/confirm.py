"""Confirmation: the plans that decide a study's outcome, timed again side by side.

A measured T is one plan's median at one moment; on a shared machine the same plan timed a
minute later can differ by tens of percent, and a table or an estimate is not a measurement
of the plan itself. So at the end of a run the finalists are timed again in one process, in
rounds: each round times one sample of every finalist, and each round starts one plan later
than the last (A B C, then B C A, then C A B ...), so a slow spell of the machine falls on
all of them alike and no plan always runs first or last. A finalist's confirmed T is the
median of its samples, with their spread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import torch

from quide_search.errors import TrialEvaluationError
from quide_search.latency._base import LatencyContext, LatencyResult, TimingTarget
from quide_search.latency._timer import (
    Pass,
    pass_timer,
    passes_per_sample,
    result_of,
    spread,
    torch_threads,
)
from quide_search.latency.measured import per_call

if TYPE_CHECKING:
    from quide_search.plan import BitPlan

__all__ = ["MAX_ROUNDS", "MIN_ROUNDS", "confirm_latency"]

K = TypeVar("K")

MIN_ROUNDS = 10
"""Rounds at least: every finalist gets this many samples, each beside all the others."""
MAX_ROUNDS = 40
"""Rounds at most, when some finalist's samples still spread beyond ``target_spread``."""


def confirm_latency(
    plans: Mapping[K, BitPlan],
    target: TimingTarget,
    context: LatencyContext,
    *,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    desc: str | None = None,
) -> tuple[dict[K, LatencyResult], dict[K, str]]:
    """Time every plan of ``plans`` in interleaved, order-rotated rounds.

    Each visit builds the plan's model, runs one untimed pass (its layers were just swapped
    in) and times one sample: as many back-to-back passes as span ``context.sample_ms`` on
    the wall clock (the count fixed per plan after its warm-up), one on CUDA events. Rounds
    stop after ``min_rounds`` once every plan's samples spread by at most
    ``context.target_spread``, or at ``max_rounds``. ``desc`` names the progress bar (by
    default, the confirmation's).

    Returns:
        Each plan's confirmed T (per generated token for a causal LM, ``repeats`` = its
        rounds), and the plans that failed to run, with the reason (left out of later rounds).
    """
    from quide_search.progress import bar

    timer = pass_timer(context.method)
    keys = list(plans)
    samples: dict[K, list[float]] = {k: [] for k in keys}
    passes: dict[K, int] = {}
    failed: dict[K, str] = {}
    with torch.no_grad(), torch_threads(context.threads):
        for key in keys:
            try:
                passes[key] = _warm(plans[key], target, timer, context)
            except _FAULTS as e:
                failed[key] = _reason(e)
        desc = desc or f"confirmation: {len(keys)} finalists re-timed side by side, rounds"
        for round_ in bar(range(max_rounds), desc, unit="round"):
            live = [k for k in keys if k not in failed]
            start = round_ % max(1, len(live))
            for key in live[start:] + live[:start]:
                try:
                    samples[key].append(_sample(plans[key], target, timer, passes[key]))
                except _FAULTS as e:
                    failed[key] = _reason(e)
            settled = all(spread(samples[k]) <= context.target_spread for k in samples
                          if k not in failed)  # fmt: skip
            if round_ + 1 >= min_rounds and settled:
                break
    results = {
        k: per_call(result_of(samples[k], passes[k]), target.per_call)
        for k in keys
        if k not in failed
    }
    return results, failed


_FAULTS = (TrialEvaluationError, RuntimeError, MemoryError, ValueError)
"""What a finalist's forward may raise; that finalist is left out, the others go on."""


def _reason(error: Exception) -> str:
    return (
        str(error)
        if isinstance(error, TrialEvaluationError)
        else f"{type(error).__name__}: {error}"
    )


def _warm(plan: BitPlan, target: TimingTarget, timer: Pass, context: LatencyContext) -> int:
    """Run the warm-up passes of ``plan``; return the passes its samples take."""
    model = target.runnable(plan)
    last = 0.0
    for _ in range(context.warmup):
        last = timer(model, target.example, 1)
    return passes_per_sample(context.sample_ms, last)


def _sample(plan: BitPlan, target: TimingTarget, timer: Pass, passes: int) -> float:
    model = target.runnable(plan)
    model(target.example)  # untimed: its layers were just swapped in
    return timer(model, target.example, passes)
