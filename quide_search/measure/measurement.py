"""What one plan measured as (P, T, bytes, where the time went), and the early-stop signal.

A record of its own, apart from the scorer that fills it: the objective, the benchmarks and
the tests read it without needing a model or a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quide_search.metric import Gate, Metrics

__all__ = ["GateUnreachable", "Measurement"]


class GateUnreachable(Exception):  # noqa: N818 - a signal, not an error
    """Raised by :meth:`Scorer.measure` when evaluation stopped: P cannot reach the floor.

    Not a :class:`QuideError`: the objective turns it into a pruned trial.
    """

    def __init__(self, samples: int, total: int, reachable: float) -> None:
        super().__init__(f"P <= {reachable:.4f} after {samples} of {total} samples")
        self.samples = samples
        self.total = total
        self.reachable = reachable


@dataclass(frozen=True)
class Measurement:
    """What one plan measured as, before the gate is applied.

    Attributes:
        P: Task score in [0, 1] on the eval split.
        T_ms: Latency in ms from the study's source (per generated token for a causal LM).
        stored_bytes: Bytes the quantized model stores (C's denominator).
        avg_weight_bits: Weight-count-weighted mean bits of the quantizable layers.
        latency_repeats: Timed samples behind T (0 for a table or an estimate).
        latency_spread: (q3 - q1) / median of those samples.
        eval_samples: Samples P was scored on.
        latency_passes: Passes per timed sample.
        perplexity: For a causal LM.
        fallback_layers: Quantized layers run by dequantizing their weights.
        kernel_layers: Quantized layers run by a low-bit kernel.
        seconds: Where the measurement's time went (assemble, evaluate, latency, record).
    """

    P: float
    T_ms: float
    stored_bytes: int
    avg_weight_bits: float
    latency_repeats: int
    latency_spread: float
    eval_samples: int
    latency_passes: int = 1
    perplexity: float | None = None
    fallback_layers: list[str] = field(default_factory=list)
    kernel_layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self, *, baseline_bytes: int, gate: Gate) -> Metrics:
        """Return C, P, T, I and I' of this measurement under ``gate``."""
        return Metrics.score(
            P=self.P,
            T_ms=self.T_ms,
            stored_bytes=self.stored_bytes,
            baseline_bytes=baseline_bytes,
            avg_weight_bits=self.avg_weight_bits,
            gate=gate,
        )
