"""The protocol of a study: what its numbers mean, built once, stored once, checked on resume.

A study's C, P, T and I' compare only between trials measured the same way. Its creator
builds a :class:`Protocol` (:func:`quide_search.protocol_builder.build_protocol`), measures the
few settings that depend on this machine (the evaluation's chunk schedule), and stores it as the
study's ``protocol`` attribute. Every later process (a resume, a worker, ``evaluate``) checks
its own settings against the stored ones with :meth:`Protocol.check_resume` and then scores with
the *stored* protocol, so there is one way from a study to a scorer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quide_search.errors import ConfigError, StorageError
from quide_search.latency._base import MAX_BATCH, MAX_THREADS, LatencyContext

if TYPE_CHECKING:
    from collections.abc import Sequence

    from quide_search.metric import Gate

__all__ = ["PROTOCOL_SCHEMA_VERSION", "Evaluation", "GateRule", "Protocol", "Search", "TaskRecord"]

PROTOCOL_SCHEMA_VERSION = 2

MAX_SEED = 2**32 - 1
"""The largest sampler seed (``--seed``)."""
MAX_SAMPLES = 10**8
"""The most samples a split may be capped at (``--eval-samples`` and the like)."""

# A count that must be at least one (a number of samples); samples, batches and thread counts
# also have a ceiling, so a plan file from elsewhere cannot ask for more memory than exists.
_Positive = Annotated[int, Field(ge=1, strict=True)]
_Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES, strict=True)]
_Batch = Annotated[int, Field(ge=1, le=MAX_BATCH, strict=True)]
_Threads = Annotated[int, Field(ge=1, le=MAX_THREADS, strict=True)]
_Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskRecord(_Record):
    """What identifies the task: the model, its float weights and the data splits."""

    model: str
    dataset: str
    kind: str
    splits: dict[str, Any]
    """The splits' sizes (``train``, ``calib``, ``eval``, ``test``: 0 to MAX_SAMPLES) and how
    they were drawn."""
    layers: tuple[str, ...]
    fingerprint: str
    """sha256 of the float model's layer names, shapes and weights (``Task.fingerprint``)."""
    weights: str | None = None
    weights_origin: str | None = None
    """How the float weights were made (``Task.weights_origin``); ``fingerprint`` is their hash."""
    weights_path: str | None = None
    """Studies before 2026-12-07 only: the absolute path of the cached weights (not written now:
    it names nothing on another machine)."""
    data_dir: str | None = None
    eval_samples: _Samples | None = None
    calib_samples: _Samples | None = None
    test_samples: _Samples | None = None
    text: dict[str, Any] | None = None
    kept_float: dict[str, int] = Field(default_factory=dict)
    """Module type -> count of the layers with weights the backend has no quantized version of."""
    excluded: tuple[str, ...] = ()
    """Quantizable layers left out of the search (a causal LM's ``lm_head`` by default)."""

    @field_validator("splits")
    @classmethod
    def _sizes(cls, splits: dict[str, Any]) -> dict[str, Any]:
        for name in ("train", "calib", "eval", "test"):
            size = splits.get(name)
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SAMPLES
            ):
                raise ValueError(f"{name} must be a count in [0, {MAX_SAMPLES}], not {size!r}")
        return splits


class Evaluation(_Record):
    """How P is scored; ``first_chunk`` and ``probes`` are fitted once, by the creator."""

    batch_size: _Batch
    threads: _Threads
    early_stop: Literal["exact", "stat", "off"]
    first_chunk: _Positive | None = None
    probes: _Positive | None = None

    @property
    def hardest_first(self) -> bool:
        """Samples the float model is least sure of go first (not with the statistical stop)."""
        return self.early_stop != "stat"


class GateRule(_Record):
    """The accuracy gate as a study stores it: a drop below the float model's P, a floor, or
    both (:class:`quide_search.metric.Gate` applies it to a measured float P)."""

    max_drop: _Fraction | None
    min_accuracy: _Fraction | None


class Search(_Record):
    precisions: tuple[str, ...]
    calibration_samples: _Samples | None = None
    """Calibration samples static activation scales are fitted on (None: no such precision)."""
    granularity: Literal["layer", "block", "type"]
    objective: Literal["iprime", "pareto"]
    max_size_mb: Annotated[float, Field(gt=0)] | None = None
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    excluded: dict[str, dict[str, str]] = {}
    """Layer -> {precision of ``precisions`` it cannot run: why}; left out of its choices."""

    def choices(self, layer: str) -> tuple[str, ...]:
        """The precisions ``layer`` may take: ``precisions`` less those it cannot run."""
        refused = self.excluded.get(layer, {})
        return tuple(q for q in self.precisions if q not in refused)

    def grouped_excluded(self, layers: Sequence[str]) -> dict[str, dict[str, str]]:
        """``excluded`` widened to whole search groups (``granularity``): a layer grouped with
        one that cannot run a precision takes one choice with it, so it never runs it either."""
        from quide_search.plan import group_layers

        out: dict[str, dict[str, str]] = {}
        for names in group_layers(layers, self.granularity).values():
            refused: dict[str, str] = {}
            for name in names:
                for q, why in self.excluded.get(name, {}).items():
                    refused.setdefault(q, why)
            out.update({name: refused for name in names if refused})
        return out

    def uniform(self, layers: Sequence[str], precision: str) -> dict[str, str]:
        """The uniform ``precision`` plan of ``layers`` as this search runs it: a layer (or
        its group) that cannot run ``precision`` at the nearest of its choices."""
        from quide_search.plan import uniform_layers

        return uniform_layers(layers, precision, self.grouped_excluded(layers), self.precisions)

    def check_groups(self, layers: Sequence[str]) -> None:
        """Refuse a grouping whose layers share no precision they can all run.

        Raises:
            ConfigError: Naming the group and what to do.
        """
        from quide_search.plan import group_layers

        widened = self.grouped_excluded(layers)
        for group, names in group_layers(layers, self.granularity).items():
            if all(q in widened.get(names[0], {}) for q in self.precisions):
                raise ConfigError(
                    f"every group of layers must share a precision it can run, but the layers "
                    f"of {group!r} share none of {', '.join(self.precisions)} (--granularity "
                    f"{self.granularity}). Use --granularity layer, or add 8 or fp to --bits."
                )

    def exclusion_line(self) -> str | None:
        """One line naming each precision left out of some layers, and why; None if none."""
        by_precision: dict[str, list[str]] = {}
        reasons: dict[str, str] = {}
        for layer, refused in self.excluded.items():
            for precision, why in refused.items():
                by_precision.setdefault(precision, []).append(layer)
                reasons.setdefault(precision, why)
        if not by_precision:
            return None
        parts = []
        for q, layers in by_precision.items():
            names = ", ".join(layers[:5]) + (
                f" and {len(layers) - 5} more" if len(layers) > 5 else ""
            )
            them, it = ("that layer", "it") if len(layers) == 1 else ("those layers", "they")
            parts.append(
                f"{q} is left out of {names} ({reasons[q]}): no plan puts {them} at {q}, and "
                f"the uniform {q} plan keeps {them} at the nearest precision {it} can run"
            )
        grouped = (
            f" With --granularity {self.granularity}, the layers grouped with them share it."
            if self.granularity != "layer"
            else ""
        )
        return "note: " + "; ".join(parts) + "." + grouped


# Dotted fields that must match on resume, each with the flag that sets it. The rest (seed,
# versions, where the weights came from, the fitted chunk schedule) is the creator's and is
# used as stored.
_MUST_MATCH = {
    "backend": "--backend",
    "backend_settings.chosen": "--backend, on a CPU whose flags choose the same kernels",
    "task.model": "--model",
    "task.dataset": "--dataset",
    "task.kind": "--model",
    "task.splits": "--dataset, --eval-samples, --calib-samples, --test-samples",
    "task.layers": "--model, --include-head",
    "task.fingerprint": "--model, --weights",
    "search.precisions": "--bits, --activations",
    "search.granularity": "--granularity",
    "search.objective": "--objective",
    "search.max_size_mb": "--max-size-mb",
    "search.max_latency_ms": "--max-latency-ms",
    "gate": "--max-accuracy-drop, --min-accuracy",
    "evaluation.batch_size": "--eval-batch-size",
    "evaluation.threads": "--threads",
    "evaluation.early_stop": "--early-stop",
    "latency.source": "--latency",
    "latency.device": "--device",
    "latency.method": "--device, --latency",
    "latency.batch_size": "--batch-size",
    "latency.threads": "--latency-threads",
    "latency.profile": "--latency model:PROFILE",
    "latency.decode": "--model",
}


class Protocol(_Record):
    """Everything that fixes what a study's numbers mean (schema 2).

    Attributes:
        backend: The quantization backend (``quanto``) and ``backend_version`` its version.
        task: The model, its weights' fingerprint and the splits.
        search: The per-layer precisions, their grouping, the objective and the limits.
        gate: The accuracy gate's settings (its baseline P is measured, stored apart).
        evaluation: How P is scored.
        latency: How T is obtained (:class:`~quide_search.latency.LatencyContext`).
        seed: The creator's sampler seed (joiners may use others).
        versions: quide-search, torch and optuna versions of the creator.
    """

    schema_version: Literal[2] = 2
    backend: str
    backend_version: str
    backend_settings: dict[str, Any] = {}
    """What the backend chose for this machine: ``chosen`` (ORT: ``reduce_range``, the
    activation type, ...; must match on resume) and what it was chosen from (``cpu_flags``)."""
    task: TaskRecord
    search: Search
    gate: GateRule
    evaluation: Evaluation
    latency: LatencyContext
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Return the protocol as plain JSON types (what the study stores)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: object, *, study: str) -> Protocol:
        """Read a stored protocol.

        Raises:
            StorageError: For a protocol of another schema (a study made by an earlier
                version) or one that is not a protocol; nothing is written.
        """
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != PROTOCOL_SCHEMA_VERSION:
            raise StorageError(
                f"study {study!r} must have a protocol of schema {PROTOCOL_SCHEMA_VERSION}, but "
                f"it has schema {version!r}: an earlier version of quide-search made it. Start "
                "a new study (--study NAME), or read this one with the version that made it."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise StorageError(
                f"study {study!r} has a malformed protocol: {where}: {first['msg']}. It was "
                "not written by this version of quide-search; start a new study."
            ) from e

    def check_resume(self, current: Protocol, *, study: str) -> None:
        """Refuse to go on with study ``study`` unless ``current`` matches where it must.

        Raises:
            ConfigError: Naming the first field that differs, the flags that set it, both
                values and what to do.
        """
        stored, now = self.to_dict(), current.to_dict()
        if "test" not in stored["task"]["splits"]:
            raise ConfigError(
                f"resuming study {study!r} needs a study with a held-out test split, but it was "
                "made by a version of quide-search before test splits (its float model and "
                "splits differ from today's). Start a new study with --study NAME; `show` and "
                "`export` still read this one."
            )
        self.check_fields(now, study=study)

    def check_fields(self, current: dict[str, Any], *, study: str) -> None:
        """Refuse a resume where ``current`` (a protocol's dict, or a part of one that the
        flags alone fix) differs from this protocol on a field that must match.

        Raises:
            ConfigError: Naming the first field that differs, its flags, both values.
        """
        stored = self.to_dict()
        for path, flags in _MUST_MATCH.items():
            before, after = _get(stored, path), _get(current, path)
            before = None if before is _ABSENT else before
            if after is not _ABSENT and before != after:
                raise ConfigError(
                    f"resuming study {study!r} needs the same {path} ({flags}) as when it was "
                    f"created, but it was {before!r} and is now {after!r}. Use the original "
                    "flags, or start a new study with --study NAME."
                )

    def gate_for(self, baseline_p: float) -> Gate:
        """The accuracy gate of this protocol around a measured float-model P."""
        from quide_search.metric import Gate

        return Gate(
            baseline_P=baseline_p, max_drop=self.gate.max_drop, min_accuracy=self.gate.min_accuracy
        )

    def with_chunking(self, first_chunk: int, probes: int | None) -> Protocol:
        """Return this protocol with the creator's fitted evaluation chunk schedule."""
        evaluation = self.evaluation.model_copy(
            update={"first_chunk": first_chunk, "probes": probes}
        )
        return self.model_copy(update={"evaluation": evaluation})


_ABSENT = object()  # a field that a partial protocol does not give: not compared


def _get(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return _ABSENT if data is not None else None
        data = data[key]
    return data
