"""Timing one model: warm-up, then timed samples until they agree; the median is T.

On CUDA a sample is timed with CUDA events after synchronisation (host clocks would time the
launches, not the kernels); on a CPU with ``time.perf_counter_ns``. On the wall clock a sample
runs passes back to back until it spans ``sample_ms``: one pass of a small model (SimpleCNN:
0.06 ms) is shorter than the timer's and the scheduler's jitter.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Iterator
from time import perf_counter_ns

import torch
from torch import nn

from quide_search.errors import TrialEvaluationError
from quide_search.latency._base import LatencyContext, LatencyResult

__all__ = [
    "Pass",
    "pass_timer",
    "passes_per_sample",
    "result_of",
    "spread",
    "time_model",
    "torch_threads",
]

_MAX_PASSES = 10_000  # per sample: bounds a measurement of a model that does next to nothing

Pass = Callable[[nn.Module, torch.Tensor, int], float]
"""Times ``passes`` calls of a model on an input; returns ms per call."""


def time_model(model: nn.Module, example: torch.Tensor, context: LatencyContext) -> LatencyResult:
    """Time ``model(example)``; T is the median sample in ms.

    After ``context.warmup`` passes, samples are timed until at least ``min_repeats`` are in
    hand and their middle half spreads by at most ``target_spread`` of the median, or
    ``max_repeats`` is reached. The spread is recorded with T.

    Raises:
        TrialEvaluationError: If a pass fails, runs out of memory, or T is not finite and > 0.
    """
    timer = pass_timer(context.method)
    samples: list[float] = []
    try:
        with torch.no_grad(), torch_threads(context.threads):
            last = 0.0
            for _ in range(context.warmup):
                last = timer(model, example, 1)
            passes = passes_per_sample(context.sample_ms, last)
            while len(samples) < context.max_repeats:
                samples.append(timer(model, example, passes))
                if (
                    len(samples) >= context.min_repeats
                    and spread(samples) <= context.target_spread
                ):
                    break
    except torch.cuda.OutOfMemoryError as e:
        raise TrialEvaluationError(f"out of GPU memory while timing: {e}") from e
    except MemoryError as e:
        raise TrialEvaluationError(f"out of memory while timing: {e}") from e
    except Exception as e:  # forward already passed evaluation; anything here fails the trial
        raise TrialEvaluationError(f"latency measurement failed: {type(e).__name__}: {e}") from e
    return result_of(samples, passes)


def result_of(samples: list[float], passes: int) -> LatencyResult:
    """Return the median of ``samples`` as a result, or fail the trial if it is not a time.

    Raises:
        TrialEvaluationError: If the median is not finite and > 0.
    """
    median = statistics.median(samples)
    if not (median > 0 and median < float("inf")):
        raise TrialEvaluationError(f"latency must be finite and > 0 ms, but measured {median!r}")
    return LatencyResult(
        median_ms=median,
        repeats=len(samples),
        spread=spread(samples),
        passes=passes,
        samples=tuple(samples),
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, and restore the count after.

    None leaves the count alone. Evaluation and timing each set their own inside such a
    block, so no constructor changes the process's thread count as a side effect.
    """
    before = torch.get_num_threads()
    change = threads is not None and threads != before
    if change:
        torch.set_num_threads(int(threads))  # type: ignore[arg-type]
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def passes_per_sample(sample_ms: float | None, pass_ms: float) -> int:
    """Return how many back-to-back passes a sample needs to span ``sample_ms``.

    ``pass_ms`` is one warm-up pass. Without ``sample_ms`` (CUDA events), one; one too for a
    pass time that is no time at all, which the measurement then rejects.
    """
    if sample_ms is None or not 0 < pass_ms < float("inf"):
        return 1
    return max(1, min(_MAX_PASSES, math.ceil(sample_ms / pass_ms)))


def spread(samples: list[float]) -> float:
    """(q3 - q1) / median of ``samples``: how far their middle half spreads."""
    if len(samples) < 2:
        return float("inf")
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / median if median > 0 else float("inf")


def pass_timer(method: str) -> Pass:
    """Return the timer of ``method``: CUDA events or the wall clock."""
    return _cuda_pass if method == "cuda_events" else _cpu_pass


def _cpu_pass(model: nn.Module, example: torch.Tensor, passes: int) -> float:
    start = perf_counter_ns()
    for _ in range(passes):
        model(example)
    return (perf_counter_ns() - start) / 1e6 / passes


def _cuda_pass(model: nn.Module, example: torch.Tensor, passes: int) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(passes):
        model(example)
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / passes
