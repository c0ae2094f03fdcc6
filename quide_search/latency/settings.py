"""From settings to a latency source: resolve ``--latency``, describe it, build it."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError
from quide_search.latency._base import LatencyContext, LatencySource, SourceKind, TimingTarget
from quide_search.latency.profiles import parse_source, profile

if TYPE_CHECKING:
    import torch

    from quide_search.latency.table import LatencyTable

__all__ = ["latency_context", "make_source", "read_table_file"]


def latency_context(
    spec: str,
    *,
    device: torch.device,
    batch_size: int,
    threads: int,
    sample_ms: float | None,
    decode: Mapping[str, Any] | None = None,
) -> LatencyContext:
    """Describe how T will be obtained for ``--latency spec`` on ``device``.

    ``auto`` is ``measured`` on CUDA, where timing is steady and kernels are real, and
    ``table`` on a CPU, where a shared machine's timing is noisy and a deterministic table
    keeps the search repeatable; the outcome is confirmed by measurement either way.

    Raises:
        ConfigError: For a malformed ``spec`` or an unknown device profile.
    """
    import torch

    kind, arg = parse_source(spec)
    if kind == "auto":
        kind = "measured" if device.type == "cuda" else "table"
    common = {"batch_size": batch_size, "threads": threads, "torch_version": torch.__version__,
              "decode": decode}  # fmt: skip
    if kind == SourceKind.MODEL:
        target = profile(str(arg))
        return LatencyContext(
            source=f"model:{target.name}", device=target.name, method="analytic",
            profile=target.to_dict(), sample_ms=None, **common,  # type: ignore[arg-type]
        )  # fmt: skip
    cuda = device.type == "cuda"
    return LatencyContext(
        source=kind,
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        method="cuda_events" if cuda else "wall_clock",
        sample_ms=sample_ms,
        table_file=arg,
        **common,  # type: ignore[arg-type]
    )


def make_source(
    context: LatencyContext,
    target: TimingTarget,
    *,
    precisions: Sequence[str],
    stored: Mapping[str, Any] | None = None,
    stored_check: Sequence[Mapping[str, Any]] | None = None,
) -> LatencySource:
    """Build the source ``context`` describes, for the model ``target`` gives access to.

    Args:
        context: From :func:`latency_context` (a study's stored one).
        target: The model being searched.
        precisions: The study's choices (a table must cover them).
        stored: A table the study already holds; measured (or read from
            ``context.table_file``) when None.
        stored_check: That table's stored check; the table is checked now when None.

    Raises:
        ConfigError: For a table file that is missing or does not cover the choices.
        TrialEvaluationError: If measuring a table fails on a layer.
    """
    from quide_search.latency.analytic import AnalyticLatency
    from quide_search.latency.measured import MeasuredLatency
    from quide_search.latency.table import LatencyTable, TableLatency
    from quide_search.latency.table_check import TableCheck

    if context.kind is SourceKind.MODEL:
        return AnalyticLatency(context, target)
    if context.kind is SourceKind.MEASURED:
        return MeasuredLatency(context, target)
    table = None
    if stored is not None:
        table = LatencyTable.from_dict(stored)
        if stored_check is not None:
            return TableLatency(context, table, TableCheck.from_list(stored_check), target)
    elif context.table_file is not None:
        table = read_table_file(
            context.table_file, target.layers, precisions, excluded=target.excluded
        )
    return TableLatency.measure(context, target, precisions, table=table)


def read_table_file(
    path: str,
    layers: Sequence[str],
    precisions: Sequence[str],
    *,
    excluded: Mapping[str, Collection[str]] | None = None,
) -> LatencyTable:
    """Read ``--latency table:PATH`` and check it covers every choice of every layer.

    A row the table could not measure (its ``context.excluded``: the layer could not run that
    precision when the table was made, so the row holds another precision's time) covers
    nothing: it is refused where this search lets the layer take that precision.

    Raises:
        ConfigError: For a missing file, one that is not a table, or one that lacks a
            (layer, precision).
    """
    from quide_search.latency.table import read_table

    table = read_table(path)
    for precision in precisions:
        table.predict(dict.fromkeys(layers, precision))
    unmeasured = table.context.get("excluded") or {}
    now = excluded or {}
    for name in layers:
        for q in unmeasured.get(name, ()):
            if q in precisions and q not in now.get(name, ()):
                raise ConfigError(
                    f"the latency table {path!r} must have measured {name} under {q}, but its "
                    f"row there holds another precision's time ({name} could not run {q} when "
                    "the table was made). Measure a new table with --latency table."
                )
    return table
