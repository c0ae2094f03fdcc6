"""Latency T in milliseconds: median of timed forward passes after warm-up.

On CUDA the passes are timed with CUDA events after synchronisation (host clocks would time the
kernel launches, not the kernels); on CPU with ``time.perf_counter_ns``. The thread count, batch
size, device and torch version travel with every number, since T means nothing without them.

On a CPU, each pass of a plan can be paired with a pass of a reference model, and T is the
median of their ratios times the reference's T measured once (``reference_ms``). A shared
CPU's speed drifts by up to 2x within seconds (``benchmarks/timer_noise.py``), and two plain
medians of one plan taken at different moments differ by as much; a pass and the reference's
pass taken next to it see the same speed, so their ratio drifts far less. It still drifts
when the two models do different work: a slow spell slows quanto's dequantizing layers and
float layers unequally. So a study's reference is a plan like the ones it tries, its choices
dealt out over the layers (``reference_qtypes``), rather than the float model.

On a CPU, a timed sample also runs passes back to back until it spans ``sample_ms``: one pass
of a small model (SimpleCNN: 0.06 ms) is shorter than the timer's and the scheduler's
jitter, and its median moves by more than 3 % between measurements of the same plan.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from time import perf_counter_ns
from typing import Any

import torch
from torch import nn

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.metric import LATENCY_UNIT
from quide_search.plan import FLOAT

__all__ = [
    "SAMPLE_MS",
    "LatencyContext",
    "LatencyResult",
    "max_pairs",
    "measure_latency",
    "mixed_reference",
    "reference_label",
    "resolve_device",
]

SAMPLE_MS = 5.0
"""Shortest timed sample on a CPU (ms): passes run back to back until a sample spans it."""

_MAX_PASSES = 10_000  # per sample: bounds a measurement of a model that does next to nothing


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``--device auto|cpu|cuda``.

    Raises:
        ConfigError: For an unknown name, or ``cuda`` on a machine without CUDA.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be one of auto, cpu, cuda, but got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda needs a CUDA GPU, but none is available. Use --device cpu."
        )
    return torch.device(name)


@dataclass(frozen=True)
class LatencyContext:
    """The conditions a latency was measured under; stored beside every T.

    ``sample_ms``, the shortest timed sample, applies to the wall clock only: with any other
    method it is set to None here, so a context never claims a floor it was not timed with.
    ``reference_qtypes`` names the reference T is paired with (``reference_ms``): the plan
    that deals them out over the layers (:meth:`BitPlan.mixed`); None, the float model
    (studies created before the reference was a mix, or choices that are all float). Without
    ``reference_ms`` it is None.
    """

    device: str
    batch_size: int
    threads: int
    torch_version: str
    method: str
    warmup: int = 5
    min_repeats: int = 20
    max_repeats: int = 200
    target_spread: float = 0.02
    unit: str = LATENCY_UNIT
    profile: dict[str, Any] | None = None
    decode: dict[str, Any] | None = None
    reference_ms: float | None = None
    sample_ms: float | None = None
    reference_qtypes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, but got {self.batch_size}.")
        if self.threads < 1:
            raise ConfigError(f"--latency-threads must be >= 1, but got {self.threads}.")
        if self.min_repeats < 20:
            raise ConfigError(f"at least 20 timed passes are required, got {self.min_repeats}.")
        if self.reference_ms is not None and not 0 < self.reference_ms < float("inf"):
            raise ConfigError(
                f"the latency reference must be finite and > 0 ms, but got {self.reference_ms!r}."
            )
        if self.sample_ms is not None and not 0 < self.sample_ms < float("inf"):
            raise ConfigError(
                f"the shortest timed sample must be finite and > 0 ms, but got {self.sample_ms!r}."
            )
        if self.method != "wall_clock":
            object.__setattr__(self, "sample_ms", None)
        qtypes = None if self.reference_ms is None else mixed_reference(self.reference_qtypes)
        object.__setattr__(self, "reference_qtypes", qtypes)
        if self.max_repeats < self.min_repeats:
            raise ConfigError(
                f"max_repeats >= min_repeats must hold, but got ({self.max_repeats}, "
                f"{self.min_repeats})."
            )

    @classmethod
    def create(
        cls,
        *,
        device: torch.device,
        batch_size: int = 1,
        source: str = "measured",
        threads: int | None = None,
    ) -> LatencyContext:
        """Describe how T is obtained: measured on ``device``, or ``model:NAME`` estimated.

        ``threads`` is the torch thread count T is timed with (None: the process's), which
        :func:`measure_latency` sets for the measurement.

        Raises:
            ConfigError: For an unknown source or device profile, or ``threads`` < 1.
        """
        from quide_search.latency_model import latency_source

        threads = torch.get_num_threads() if threads is None else threads
        target = latency_source(source)
        if target is not None:
            return cls(
                device=target.name,
                batch_size=batch_size,
                threads=threads,
                torch_version=torch.__version__,
                method=source,
                profile=target.to_dict(),
            )
        method = "cuda_events" if device.type == "cuda" else "wall_clock"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return cls(
            device=name,
            batch_size=batch_size,
            threads=threads,
            torch_version=torch.__version__,
            method=method,
            sample_ms=SAMPLE_MS,
        )

    @property
    def estimated(self) -> bool:
        """Whether T comes from the analytic model rather than a measurement."""
        return self.method.startswith("model:")

    def to_dict(self) -> dict[str, Any]:
        """Return the context as plain JSON types."""
        return asdict(self)


@dataclass(frozen=True)
class LatencyResult:
    """A measured latency: the median, how many samples it took and how tight they were.

    ``raw_ms`` is the plain median of the model's own samples; it differs from ``median_ms``
    only when they were paired with a reference. Each sample ran ``passes`` passes of each
    model and counts their mean.
    """

    median_ms: float
    repeats: int
    spread: float
    raw_ms: float | None = None
    passes: int = 1


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    context: LatencyContext,
    reference: nn.Module | None = None,
) -> LatencyResult:
    """Time ``model(example)`` and return the median in milliseconds.

    After ``warmup`` passes, samples are timed until at least ``min_repeats`` are in hand and
    the middle half of them spreads by at most ``target_spread`` of the median, or
    ``max_repeats`` is reached. On the wall clock with ``context.sample_ms``, a sample is as
    many back-to-back passes as that takes (counted from the last warm-up pass) and counts
    their mean. With a ``reference`` (which needs ``context.reference_ms``), each sample runs
    both models, in alternating order, and counts as ``reference_ms`` times their ratio;
    ``max_repeats`` then bounds the samples of both models together (at most half as many
    pairs, and never fewer than ``min_repeats``), so pairing costs no more samples.

    Raises:
        TrialEvaluationError: If the median is not finite and > 0, or forward fails.
    """
    if reference is not None and context.reference_ms is None:
        raise TrialEvaluationError("a paired latency needs the reference's T (a bug)")
    try:
        with torch.no_grad(), _torch_threads(context.threads):
            own, samples, passes = _samples(model, example, context, reference)
    except MemoryError as e:
        raise TrialEvaluationError(f"out of memory during latency measurement: {e}") from e
    except Exception as e:  # forward already passed evaluation; anything here fails the trial
        raise TrialEvaluationError(f"latency measurement failed: {type(e).__name__}: {e}") from e
    median = statistics.median(samples)
    if not (median > 0 and median < float("inf")):
        raise TrialEvaluationError(f"latency must be finite and > 0 ms, but measured {median!r}")
    return LatencyResult(
        median_ms=median,
        repeats=len(samples),
        spread=_spread(samples),
        raw_ms=statistics.median(own),
        passes=passes,
    )


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Time with ``threads`` torch threads (the context's), and give the process its own back.

    Evaluation keeps the run's ``--threads``; ``--latency-threads`` sets only what T is
    timed with.
    """
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def _samples(
    model: nn.Module,
    example: torch.Tensor,
    context: LatencyContext,
    reference: nn.Module | None,
) -> tuple[list[float], list[float], int]:
    """Run the warm-up and the timed samples.

    Returns the model's own ms per pass in each sample, the samples T is the median of, and
    the passes per sample.
    """
    timer = _cuda_pass if context.method == "cuda_events" else _cpu_pass
    scale, cap = context.reference_ms or 1.0, context.max_repeats
    if reference is not None:
        cap = max_pairs(context.min_repeats, context.max_repeats)
    last = 0.0
    for _ in range(context.warmup):
        last = sum(timer(m, example, 1) for m in (model, reference) if m is not None)
    passes = _passes_per_sample(context.sample_ms, last)
    own: list[float] = []
    samples: list[float] = []
    while len(samples) < cap:
        if reference is None:
            own.append(timer(model, example, passes))
            samples.append(own[-1])
        else:
            mine, ref = _pair(timer, model, reference, example, passes, len(own) % 2 == 1)
            own.append(mine)
            samples.append(mine / ref * scale)
        if len(samples) >= context.min_repeats and _spread(samples) <= context.target_spread:
            break
    return own, samples, passes


def _passes_per_sample(sample_ms: float | None, pass_ms: float) -> int:
    """Return how many back-to-back passes (of each model) a sample needs to span ``sample_ms``.

    ``pass_ms`` is one warm-up pass (of both models, when paired). Without ``sample_ms``
    (CUDA events, or a study created before samples had a floor), one; one too for a pass
    time that is no time at all, which the measurement then rejects.
    """
    if sample_ms is None or not 0 < pass_ms < float("inf"):
        return 1
    return max(1, min(_MAX_PASSES, math.ceil(sample_ms / pass_ms)))


def max_pairs(min_repeats: int, max_repeats: int) -> int:
    """Return the most pairs a paired measurement takes: its cap counts both models' passes.

    Half of ``max_repeats``, so pairing costs no more passes, but never under ``min_repeats``.
    """
    return max(min_repeats, max_repeats // 2)


def mixed_reference(qtypes: Sequence[str] | None) -> tuple[str, ...] | None:
    """Return the qtypes a latency reference deals out, or None: the reference is the float model.

    None where none are given (studies from before the mix) or all are float: that mix is
    the float model itself.
    """
    if not qtypes or all(q == FLOAT for q in qtypes):
        return None
    return tuple(qtypes)


def reference_label(qtypes: Sequence[str] | None) -> str:
    """Name the reference T is paired with: ``the float model`` or ``a qint8/qint4 mix``."""
    mixed = mixed_reference(qtypes)
    if mixed is None:
        return "the float model"
    return f"a {'/'.join('float' if q == FLOAT else q for q in mixed)} mix"


def _pair(
    timer: Callable[[nn.Module, torch.Tensor, int], float],
    model: nn.Module,
    reference: nn.Module,
    example: torch.Tensor,
    passes: int,
    reference_first: bool,
) -> tuple[float, float]:
    """Time ``passes`` passes of ``model`` and as many of ``reference`` back to back.

    Returns the ms per pass of each, (model, reference). The order alternates between pairs,
    so neither model always runs on the other's caches.
    """
    if reference_first:
        ref = timer(reference, example, passes)
        return timer(model, example, passes), ref
    mine = timer(model, example, passes)
    return mine, timer(reference, example, passes)


def _spread(samples: list[float]) -> float:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / median if median > 0 else float("inf")


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
