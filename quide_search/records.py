"""Every key quide-search stores in an Optuna study, named once.

Studies outlive the process that wrote them: the dashboard, ``show``, ``report``, ``export``
and later runs read them back. Each study attribute and trial user attribute is spelled here
and nowhere else, so a reader and a writer cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

from quide_search.errors import ConfigError

__all__ = ["METRIC_KEYS", "MIB", "SCORE_KEYS", "Budget", "StudyKey", "TrialKey", "TrialRow",
           "WarmStart"]  # fmt: skip


class StudyKey:
    """Study user attributes."""

    PROTOCOL: Final = "protocol"
    """How the study measures (:class:`quide_search.protocol.Protocol`), written once."""
    BASELINE: Final = "baseline"
    """The float model's metrics (C, P, T_ms, I, I_prime, ...), written once."""
    LATENCY_TABLE: Final = "latency_table"
    """The per-layer latency table of ``--latency table``."""
    LATENCY_TABLE_CHECK: Final = "latency_table_check"
    """The table's predictions beside measured T on the uniform plans."""
    SENSITIVITY: Final = "sensitivity"
    """Per-group sensitivity (KL and accuracy change), measured once."""
    GREEDY_PATH: Final = "greedy_path"
    """The sensitivity-greedy path of plans the warm starts come from."""
    PATH_REFINED: Final = "path_refined"
    CLIMBED_FROM: Final = "climbed_from"
    UNIFORM_QUEUED: Final = "uniform_enqueued"
    WARM_QUEUED: Final = "warm_enqueued"
    WARM_START_SKIPPED: Final = "warm_start_skipped"
    """Why no warm-start plan was queued, when none could be."""
    PARETO_FRONT: Final = "pareto_front"
    CONFIRMATION: Final = "confirmation"
    """The last confirmation step: finalists re-timed in interleaved rounds."""
    TEST: Final = "test"
    """The finalists' P on the held-out test split, and the gate around the float model's."""


class TrialKey:
    """Trial user attributes."""

    C: Final = "C"
    P: Final = "P"
    T_MS: Final = "T_ms"
    I: Final = "I"  # noqa: E741 - the paper's name
    I_PRIME: Final = "I_prime"
    GATE_PASSED: Final = "gate_passed"
    AVG_WEIGHT_BITS: Final = "avg_weight_bits"
    STORED_BYTES: Final = "stored_bytes"
    BASELINE_BYTES: Final = "baseline_bytes"
    UNIT: Final = "unit"
    FEASIBLE: Final = "feasible"
    """Passes the gate and every size and latency limit."""
    LATENCY_REPEATS: Final = "latency_repeats"
    LATENCY_SPREAD: Final = "latency_spread"
    LATENCY_PASSES: Final = "latency_passes"
    LATENCY_SOURCE: Final = "latency_source"
    EVAL_SAMPLES: Final = "eval_samples"
    SAMPLES_SPENT: Final = "samples_spent"
    P_REACHABLE: Final = "P_reachable"
    PERPLEXITY: Final = "perplexity"
    KERNEL_LAYERS: Final = "kernel_layers"
    FALLBACK_LAYERS: Final = "fallback_layers"
    SECONDS: Final = "seconds"
    WORKER: Final = "worker"
    FAIL_REASON: Final = "fail_reason"
    RETRY_OF: Final = "retry_of"
    RETRY_REASON: Final = "retry_reason"
    WARM_START: Final = "warm_start"
    """Why the plan was queued (:class:`WarmStart`); absent for a sampler's proposal."""
    FULL_EVAL: Final = "full_eval"
    LAYERS: Final = "layers"
    """The per-layer plan, when the parameters are layer groups."""
    DUPLICATE_OF: Final = "duplicate_of"
    P_TEST: Final = "P_test"
    """P on the held-out test split (finalists only; in the ``test`` study attribute)."""
    GATE_PASSED_TEST: Final = "gate_passed_test"
    """Whether ``P_test`` passes the gate around the float model's test P."""


class WarmStart:
    """Values of :attr:`TrialKey.WARM_START`."""

    UNIFORM: Final = "uniform"
    GREEDY: Final = "greedy"
    PATH: Final = "path"
    NEIGHBOUR: Final = "neighbour"


@dataclass(frozen=True)
class TrialRow:
    """A completed trial read back from its study: its number, per-layer plan and metrics.

    The metric fields are the trial's user attributes of the same names (:class:`TrialKey`),
    as the objective stored them; ``feasible`` says it passes the gate and every size and
    latency limit of its study. Units: ``T_ms`` ms per :data:`~quide_search.metric.LATENCY_UNIT`,
    ``stored_bytes`` bytes, ``C`` and ``avg_weight_bits`` as in ``docs/metric.md``.
    """

    trial: int
    plan: dict[str, str]
    C: float
    P: float
    T_ms: float
    I: float  # noqa: E741 - the paper's name
    I_prime: float
    gate_passed: bool
    avg_weight_bits: float
    stored_bytes: int
    feasible: bool

    @classmethod
    def from_attrs(cls, number: int, plan: dict[str, str], attrs: Mapping[str, Any]) -> TrialRow:
        """Read a trial's row from its user attributes (a study written before ``feasible``
        was stored: its gate alone)."""
        feasible = bool(attrs.get(TrialKey.FEASIBLE, attrs[TrialKey.GATE_PASSED]))
        metrics = {k: attrs[k] for k in METRIC_KEYS}
        return cls(trial=number, plan=dict(plan), feasible=feasible, **metrics)

    @property
    def plan_key(self) -> str:
        """The plan as sorted JSON: equal for equal plans, whatever their trials."""
        return json.dumps(self.plan, sort_keys=True)

    @property
    def uniform(self) -> bool:
        """Whether every layer has the same precision."""
        return len(set(self.plan.values())) == 1

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON types: ``trial``, ``plan``, the metrics, ``feasible``."""
        return asdict(self)


METRIC_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(TrialRow) if f.name not in ("trial", "plan", "feasible")
)
"""The metric fields every trial row, sweep row and exported plan carries: those of
:class:`TrialRow` between its plan and ``feasible`` (C, P, T_ms, I, I_prime, gate_passed,
avg_weight_bits, stored_bytes)."""

SCORE_KEYS = (
    TrialKey.C,
    TrialKey.P,
    TrialKey.T_MS,
    TrialKey.I,
    TrialKey.I_PRIME,
    TrialKey.GATE_PASSED,
)
"""The scores and the gate an exported plan's metrics and a front's index carry."""


MIB = 2**20
"""Bytes per MiB: ``--max-size-mb`` counts stored weight bytes in MiB, as the search does."""


@dataclass(frozen=True)
class Budget:
    """A deployment budget: stored weights at most ``max_size_mb`` MiB, T at most
    ``max_latency_ms`` ms (the study's T: its unit, batch and device). None: no limit."""

    max_size_mb: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for flag, limit in (
            ("--max-size-mb", self.max_size_mb),
            ("--max-latency-ms", self.max_latency_ms),
        ):
            if limit is not None and not 0 < limit < float("inf"):
                raise ConfigError(f"{flag} must be a finite number > 0, but got {limit}.")

    @property
    def given(self) -> bool:
        """Whether any limit is set."""
        return self.max_size_mb is not None or self.max_latency_ms is not None

    def fits(self, *, stored_bytes: float, t_ms: float) -> bool:
        """Whether a plan fits: its stored bytes, and its T in ms (its confirmed T where it
        has one, so a plan measured over the limit is never offered as within it)."""
        if self.max_size_mb is not None and stored_bytes / MIB > self.max_size_mb:
            return False
        return self.max_latency_ms is None or t_ms <= self.max_latency_ms

    def text(self) -> str:
        """``size <= 0.5 MiB, T <= 2 ms``."""
        parts = []
        if self.max_size_mb is not None:
            parts.append(f"size <= {self.max_size_mb:g} MiB")
        if self.max_latency_ms is not None:
            parts.append(f"T <= {self.max_latency_ms:g} ms")
        return ", ".join(parts) or "no limit"
