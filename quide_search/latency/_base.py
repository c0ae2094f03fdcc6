"""What every latency source shares: the conditions T is taken under, its result, the interface.

This module imports no torch, so the protocol record (which holds a :class:`LatencyContext`)
can be read by commands that never touch a model.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from quide_search.latency._probe import LayerShape
    from quide_search.plan import BitPlan

__all__ = [
    "SAMPLE_MS",
    "LatencyContext",
    "LatencyResult",
    "LatencySource",
    "SourceKind",
    "TimingTarget",
]


class SourceKind(enum.StrEnum):
    """The kinds of latency source (``LatencyContext.kind``); equal to their stored text."""

    MEASURED = "measured"
    TABLE = "table"
    MODEL = "model"
    """The analytic estimate for a device profile (stored as ``model:NAME``)."""


SAMPLE_MS = 5.0
"""Shortest timed sample on a CPU (ms): passes run back to back until a sample spans it."""


MAX_BATCH = 65_536
"""The largest batch a setting or a plan file may ask for (a larger one only exhausts memory)."""
MAX_THREADS = 1024
"""The most torch threads a setting or a plan file may ask for."""


@dataclass(frozen=True)
class LatencyContext:
    """The conditions T is measured (or estimated) under; stored with every study.

    Attributes:
        source: ``measured``, ``table`` (per-layer changes read in whole-model runs, summed
            and checked) or ``model:NAME``
            (the analytic estimate for a target device); :attr:`kind` tells them apart.
        device: What T describes: ``cpu``, the CUDA device's name, or the profile's name.
        method: How time is read: ``wall_clock``, ``cuda_events`` or ``analytic``.
        batch_size: Batch of the timed input (recorded with T).
        threads: torch intra-op threads T is timed with.
        torch_version: The torch that timed it.
        sample_ms: On the wall clock, the shortest timed sample: passes run back to back
            until a sample spans it, and the sample counts their mean. None: single passes.
        warmup: Untimed passes first.
        min_repeats: Samples at least.
        max_repeats: Samples at most.
        target_spread: Stop once the samples' middle half spreads by at most this share of
            the median (after ``min_repeats``).
        profile: The analytic estimate's device profile, for ``model:NAME``.
        decode: For a causal LM, what one timed call is (prompt and generated tokens); T is
            then per generated token.
        table_file: The file a ``table`` source was read from, if any.
        unit: T's unit (milliseconds).
    """

    source: str
    device: str
    method: str
    batch_size: int
    threads: int
    torch_version: str
    sample_ms: float | None = SAMPLE_MS
    warmup: int = 5
    min_repeats: int = 20
    max_repeats: int = 200
    target_spread: float = 0.02
    profile: Mapping[str, Any] | None = None
    decode: Mapping[str, Any] | None = None
    table_file: str | None = None
    unit: str = "ms"

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(
                f"--batch-size must be in [1, {MAX_BATCH}], but got {self.batch_size}."
            )
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(
                f"--latency-threads must be in [1, {MAX_THREADS}], but got {self.threads}."
            )
        if self.min_repeats < 2 or self.max_repeats < self.min_repeats:
            raise ConfigError(
                "2 <= min_repeats <= max_repeats must hold, but got "
                f"({self.min_repeats=}, {self.max_repeats=})."
            )
        if self.sample_ms is not None and not 0 < self.sample_ms < float("inf"):
            raise ConfigError(
                f"the shortest timed sample must be finite and > 0 ms, but got {self.sample_ms!r}."
            )
        if self.method != "wall_clock":  # a floor only means something on the wall clock
            object.__setattr__(self, "sample_ms", None)

    @property
    def estimated(self) -> bool:
        """Whether T comes from the analytic model rather than a clock."""
        return self.method == "analytic"

    @property
    def kind(self) -> SourceKind:
        """The kind of source ``source`` names (``model:NAME`` is :attr:`SourceKind.MODEL`)."""
        return SourceKind.MODEL if self.source.startswith("model:") else SourceKind(self.source)

    def to_dict(self) -> dict[str, Any]:
        """Return the context as plain JSON types."""
        data = asdict(self)
        for key in ("profile", "decode"):
            data[key] = None if data[key] is None else dict(data[key])
        return data


@dataclass(frozen=True)
class LatencyResult:
    """One latency: the median in ms, how many samples it took and how tight they were.

    Attributes:
        median_ms: T, in ms (per generated token for a causal LM).
        repeats: Timed samples (0 for a prediction or an estimate).
        spread: (q3 - q1) / median of the samples (0 for a prediction).
        passes: Passes per sample (its mean is the sample).
    """

    median_ms: float
    repeats: int = 0
    spread: float = 0.0
    passes: int = 1
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)


class LatencySource(abc.ABC):
    """Where a plan's T comes from: a measurement, a per-layer table or an estimate.

    A source is built once per scorer (``quide_search.latency.make_source``) and never
    changes afterwards; the same plan gets the same kind of number for the whole study.
    """

    context: LatencyContext

    @property
    def label(self) -> str:
        """What produced T, recorded with every trial (``wall_clock``, ``table``, ``model:X``)."""
        context = self.context
        return context.source if context.kind is not SourceKind.MEASURED else context.method

    @property
    def deterministic(self) -> bool:
        """Whether the same plan always gets the same T (tables and estimates)."""
        return self.context.kind is not SourceKind.MEASURED

    @abc.abstractmethod
    def latency(self, plan: BitPlan) -> LatencyResult:
        """Return ``plan``'s T.

        Raises:
            TrialEvaluationError: If the plan cannot be timed (it fails to run, or its T is
                not finite and > 0).
        """

    def predicted_ms(self, layers: Mapping[str, str]) -> float | None:
        """T of a per-layer plan without building it, where the source can say (a table)."""
        return None

    def stored(self) -> dict[str, Any] | None:
        """What a study stores so that every process gets the same source (a table)."""
        return None


@dataclass(frozen=True)
class TimingTarget:
    """What a latency source may ask of the model being searched; the scorer provides it.

    Attributes:
        runnable: The plan's model as one timed call runs it (greedy decoding for a causal
            LM), with the backend's own quantized modules.
        example: The timed call's input.
        per_call: T is a call's time divided by this (the tokens a decode generates).
        layers: The quantizable layers, in module order.
        layer_profile: Each layer's ms inside one whole pass of a plan's timed call (per generated
            token for a causal LM), read by hooks on the layers (the latency table's input).
        layer_bytes: Each layer's stored bytes under a plan.
        shapes: Each layer's per-sample work on one step (for the analytic estimate).
        excluded: Layer -> the searched precisions it cannot run (the backend refuses its
            shape); the table's uniform and check plans keep such a layer off them.
    """

    runnable: Callable[[BitPlan], nn.Module]
    example: torch.Tensor
    per_call: int
    layers: Sequence[str]
    layer_profile: Callable[[BitPlan], Mapping[str, float]]
    layer_bytes: Callable[[BitPlan], Mapping[str, int]]
    shapes: Callable[[], list[LayerShape]]
    excluded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
