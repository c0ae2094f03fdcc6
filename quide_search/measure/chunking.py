"""Chunk schedule of an evaluation: where early stopping may look, at what cost in calls.

An evaluation scores its samples chunk by chunk so that a plan that cannot pass the gate
stops early. Each chunk is one forward call, and a call costs more per sample the fewer
samples it has (fixed per-call work, kernels that need a batch to fill the cores). On a
model where that fixed cost is large against the samples, chunks cost more than early
stopping saves: SimpleCNN on digits pays 8-11 % of a full evaluation per extra call on a
2-core CPU, a 15-block Llama on 16 windows about 30 %. :func:`fit_chunking` measures this
once per study and picks a schedule that keeps early stopping where it is cheap.

A schedule is (first, probes): a first chunk of ``first`` samples, then chunks that double
what was seen (each as large as all seen so far), at most ``probes`` chunks in all before
the rest goes in full batches (None: doubling throughout). Every chunk is capped at the
eval batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from time import perf_counter

import numpy
import torch
from torch import nn

__all__ = ["Chunking", "chunk_bounds", "fit_chunking"]

Chunking = tuple[int, int | None]
"""(first chunk, probes): see the module docstring."""

_SLOWEST_CHUNK = 1.5
"""Most the first chunk may cost per sample, relative to a full batch."""
_CALL_BUDGET = 0.15
"""Share of a plain full pass that the extra calls of chunking may cost."""
_PROBE_BUDGET = 0.2
"""Most one probe, the least early stopping needs, may cost, as a share of a plain pass."""
_CHEAP_PASS_S = 0.25
"""Below this a full pass is cheap enough to time whole; above, calls are priced alone."""
_TIMING_S = 1.0
"""Time after which timing stops (past 3 rounds)."""
_ROUNDS = 20


def chunk_bounds(
    samples: int, batch_size: int, first: int, probes: int | None = None
) -> Iterator[tuple[int, int]]:
    """Yield (start, stop) of each forward call of the schedule (first, probes)."""
    start, calls = 0, 0
    while start < samples:
        doubling = probes is None or calls < probes
        size = min(batch_size, max(first, start)) if doubling else batch_size
        yield start, min(samples, start + size)
        start, calls = start + size, calls + 1


def fit_chunking(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int,
    default_first: int,
    score: Callable[[int, int], object],
) -> Chunking:
    """Return the schedule early stopping can afford for ``model`` on these inputs.

    1. The first chunk is the smallest size of the doubling ladder (``default_first``, twice
       that, ..., a full batch) whose call runs at no less than 1/1.5 of a full batch's
       throughput: a chunk far slower per sample saves little when a plan stops after it
       (and on digits, 13 or 26 samples are too few for the exact stop to fire at all).
    2. The cost of one more call is measured: a plain pass against the same pass with
       every batch split in two (both timed whole, through ``score(start, stop)``, when a
       pass is cheap; priced from single calls when it is not, since then a call's fixed
       cost is small against it). Chunking may add at most 15 % of a plain pass, which
       gives the number of extra calls; the doubling probes stop there, and the rest of
       the samples go in full batches. One probe, which early stopping needs to work at
       all, is allowed up to 20 %. A dearer call: one chunk per batch, no early stop.
    """
    samples = int(inputs.shape[0])
    full = min(batch_size, samples)
    ladder = [min(full, default_first * 2**j) for j in range(samples.bit_length())]
    sizes = sorted({*ladder, full})  # the ladder may stop short of a full batch
    if len(sizes) == 1:
        return full, None
    with torch.no_grad():
        seconds = _fastest([partial(model, inputs[:n]) for n in sizes], inputs.device)
        per_sample = seconds[-1] / full
        first = next(
            n for n, t in zip(sizes, seconds, strict=True) if t / n <= _SLOWEST_CHUNK * per_sample
        )
        if first == full:
            return full, None
        plain, call = _call_cost(inputs, batch_size, score, sizes, seconds)
    plain_calls = _calls(samples, batch_size, full, None)
    extra = math.inf if call <= 0 else math.floor(_CALL_BUDGET * plain / call)
    if call <= _PROBE_BUDGET * plain:
        extra = max(extra, 1)
    if extra < 1:
        return full, None
    probes = None
    for limit in (None, *range(_calls(samples, batch_size, first, None), 0, -1)):
        probes = limit
        if _calls(samples, batch_size, first, limit) - plain_calls <= extra:
            break
    return first, probes


def _calls(samples: int, batch_size: int, first: int, probes: int | None) -> int:
    return sum(1 for _ in chunk_bounds(samples, batch_size, first, probes))


def _call_cost(
    inputs: torch.Tensor,
    batch_size: int,
    score: Callable[[int, int], object],
    sizes: Sequence[int],
    seconds: Sequence[float],
) -> tuple[float, float]:
    """Return (seconds of a plain pass, seconds one more call adds to it)."""
    samples = int(inputs.shape[0])
    plain = list(chunk_bounds(samples, batch_size, min(batch_size, samples)))
    # Full batches hold 2 samples or more here (fit_chunking returned otherwise): each splits.
    halves = [b for start, stop in plain for b in _halves(start, stop)]
    estimate = sum(float(numpy.interp(stop - start, sizes, seconds)) for start, stop in plain)
    if estimate > _CHEAP_PASS_S:
        split = sum(float(numpy.interp(stop - start, sizes, seconds)) for start, stop in halves)
    else:
        passes = [partial(_score_all, score, b) for b in (plain, halves)]
        estimate, split = _fastest(passes, inputs.device)
    return estimate, (split - estimate) / (len(halves) - len(plain))


def _score_all(score: Callable[[int, int], object], bounds: list[tuple[int, int]]) -> None:
    for start, stop in bounds:
        score(start, stop)


def _halves(start: int, stop: int) -> list[tuple[int, int]]:
    middle = (start + stop) // 2
    return [(start, middle), (middle, stop)] if middle > start else [(start, stop)]


def _fastest(runs: Sequence[Callable[[], object]], device: torch.device) -> list[float]:
    """Fastest time of each run, over rounds that take each run in turn.

    Rounds interleave the runs so that a slow spell of the machine (this project's 2-core
    VM swings by up to 2x within seconds) touches each alike; the fastest is kept, since
    noise only adds. At least 3 rounds, at most 20, stopping after 1 s.
    """
    cuda = device.type == "cuda"
    best = [math.inf] * len(runs)
    started = perf_counter()
    for round_ in range(_ROUNDS):
        for i, run in enumerate(runs):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(device)
            best[i] = min(best[i], perf_counter() - t0)
        if round_ >= 2 and perf_counter() - started > _TIMING_S:
            break
    return best
