"""A per-layer latency table (``--latency table``): each layer's change read in whole-model runs.

The table predicts a plan's T as the float model's measured T plus, for each layer, the
change its precision makes. Each change is read inside whole-model passes: in interleaved
rounds, the float model and every uniform plan run once each with forward hooks on their
layers (:mod:`._profiler`), and a layer's change under a precision is the median, over the
rounds, of (its time in that round's uniform plan - its time in that round's float model).
Timing layers alone, as the first tables did, missed random plans by 6-56 % on our 2-core
machines and could sum to T <= 0 on a busy one.

The prediction is deterministic, so a search on a noisy CPU repeats exactly. It is never
used unchecked: :mod:`.table_check` times plans whole before the search starts and falls
back to measured T when the table misses them, and a prediction outside what the check
timed fails its trial instead of becoming a score.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.latency._base import LatencyContext, LatencyResult, LatencySource, TimingTarget
from quide_search.latency._timer import torch_threads
from quide_search.latency.measured import MeasuredLatency
from quide_search.latency.table_check import TableCheck, check_table
from quide_search.plan import FLOAT

if TYPE_CHECKING:
    from quide_search.plan import BitPlan

__all__ = ["LatencyTable", "TableLatency", "read_table"]

TABLE_SCHEMA_VERSION = 3
"""3: changes read in whole-model runs (2, layers timed alone, is no longer read)."""


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds of each layer inside a whole-model pass under each precision, and the
    float model's whole T.

    Attributes:
        base_ms: Measured T of the float model.
        layers: layer name -> precision (``float`` included) -> ms spent in that layer in a
            pass of the model (the float time, plus the median change for the others).
        context: The measurement conditions (device, batch size, threads).
    """

    base_ms: float
    layers: Mapping[str, Mapping[str, float]]
    context: Mapping[str, Any]

    def predict(self, plan_layers: Mapping[str, str]) -> float:
        """Return the predicted T of a plan: float T plus each layer's change, unclamped.

        The sum can fall to or below 0 for a table far from the machine; the caller checks it
        (:meth:`TableCheck.guard`) rather than this method hiding it.

        Raises:
            ConfigError: If the plan uses a (layer, precision) the table lacks.
        """
        total = self.base_ms
        for name, precision in plan_layers.items():
            row = self.layers.get(name)
            if row is None or precision not in row or FLOAT not in row:
                raise ConfigError(
                    f"the latency table must hold layer {name!r} under {precision!r}, but it "
                    f"does not (it covers {len(self.layers)} layers). Measure a new table "
                    "with --latency table for this model and --bits."
                )
            total += row[precision] - row[FLOAT]
        return total

    def scaled(self, factor: float) -> LatencyTable:
        """This table with every layer's change from float multiplied by ``factor`` (recorded
        in the context as ``scale``)."""
        layers = {
            name: {q: row[FLOAT] + factor * (ms - row[FLOAT]) for q, ms in row.items()}
            for name, row in self.layers.items()
        }
        return LatencyTable(self.base_ms, layers, {**self.context, "scale": factor})

    def to_dict(self) -> dict[str, Any]:
        """Return the table as plain JSON types (stored in the study, or written to a file)."""
        return {
            "schema_version": TABLE_SCHEMA_VERSION,
            "base_ms": self.base_ms,
            "layers": {k: dict(v) for k, v in self.layers.items()},
            "context": dict(self.context),
        }

    @classmethod
    def from_dict(cls, data: object) -> LatencyTable:
        """Rebuild a table from :meth:`to_dict` output.

        Raises:
            ConfigError: If the data is not such a table.
        """
        if isinstance(data, Mapping) and data.get("schema_version") == 2 and "base_ms" in data:
            raise ConfigError(
                "a latency table of schema 2 (each layer timed alone) is no longer used: its "
                "sums missed measured T by up to 100 % and could fall to T <= 0. Measure a new "
                "one with --latency table in a new study (--study NAME)."
            )
        if not isinstance(data, Mapping) or data.get("schema_version") != TABLE_SCHEMA_VERSION:
            raise ConfigError(
                f"a latency table must be the JSON quide-search writes (schema "
                f"{TABLE_SCHEMA_VERSION}: base_ms, layers, context), but got another document. "
                "Save one with `quide-search show --study S --latency-table PATH`."
            )
        try:
            layers = {
                str(k): {str(q): _finite(ms) for q, ms in v.items()}
                for k, v in data["layers"].items()
            }
            context = data["context"]
            if not isinstance(context, Mapping):
                raise TypeError(f"context must be an object, but got {context!r}")
            return cls(base_ms=_finite(data["base_ms"]), layers=layers, context=context)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ConfigError(
                "a latency table must be the JSON that quide-search writes (base_ms, layers, "
                f"context), but reading it failed: {type(e).__name__}: {e}."
            ) from e


def _finite(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"every time must be a finite number of ms, but got {value!r}")
    return number


def read_table(path: str | Path) -> LatencyTable:
    """Read a table written by ``show --study S --latency-table PATH``.

    Raises:
        ConfigError: If the file is missing or not a table.
    """
    from quide_search.files import read_document

    file = Path(path)
    what = "--latency table:PATH"
    try:
        data = json.loads(read_document(file, what=what))
    except FileNotFoundError as e:
        raise ConfigError(
            f"{what} must name a readable JSON file, but {str(file)!r} does not exist. Give "
            "the path of a saved table."
        ) from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{what} {str(file)!r} is not a table's JSON: {e}.") from e
    return LatencyTable.from_dict(data)


class TableLatency(LatencySource):
    """T predicted from a checked :class:`LatencyTable`, or measured where the check failed.

    Args:
        context: The conditions the table was measured under (``source`` ``table``).
        table: The table.
        check: Its check (:func:`~quide_search.latency.table_check.check_table`).
        target: The model being searched: where the check failed, every plan is timed on it.
    """

    def __init__(
        self, context: LatencyContext, table: LatencyTable, check: TableCheck, target: TimingTarget
    ) -> None:
        self.context = context
        self.table = table
        self.check = check
        measured = dataclasses.replace(context, source="measured")
        self.fallback = None if check.passed else MeasuredLatency(measured, target)

    @property
    def label(self) -> str:
        return "table" if self.fallback is None else self.fallback.label

    @property
    def deterministic(self) -> bool:
        return self.fallback is None

    def latency(self, plan: BitPlan) -> LatencyResult:
        if self.fallback is not None:
            return self.fallback.latency(plan)
        return LatencyResult(median_ms=self._predict(plan.layers))

    def predicted_ms(self, layers: Mapping[str, str]) -> float | None:
        """The table's T of a plan, or ``inf`` where it lies outside what the check timed
        (a price for ranking plans: such a plan ranks last, and fails if it is tried)."""
        if self.fallback is not None:
            return None
        try:
            return self._predict(layers)
        except TrialEvaluationError:
            return math.inf

    def stored(self) -> dict[str, Any] | None:
        return self.table.to_dict()

    def _predict(self, layers: Mapping[str, str]) -> float:
        value = self.table.predict(layers)
        self.check.guard(value)
        return value

    @classmethod
    def measure(
        cls,
        context: LatencyContext,
        target: TimingTarget,
        precisions: Sequence[str],
        *,
        table: LatencyTable | None = None,
    ) -> TableLatency:
        """Measure a table (unless ``table`` is given), check it, and return the source
        (with the table on the base its check timed).

        Raises:
            TrialEvaluationError: If a plan fails to run while it is profiled or checked.
        """
        fresh = table is None
        if table is None:
            table = profile_table(context, target, precisions, time_base=False)
        table, check = check_table(table, target, context, precisions, rebase=fresh)
        return cls(context, table, check, target)


def profile_table(
    context: LatencyContext,
    target: TimingTarget,
    precisions: Sequence[str],
    *,
    time_base: bool = True,
) -> LatencyTable:
    """Read each layer's change under each precision in whole-model runs; time the float T.

    ``context.min_repeats`` rounds; each round runs the float model and every uniform plan
    once with hooks on the layers (:attr:`TimingTarget.layer_profile`), each round starting one
    plan later than the last. A layer's change under ``q`` is the median over rounds of
    (its ms in the uniform ``q`` plan - its ms in the float model of the same round), so a
    slow spell of the machine falls on both sides of each difference.

    Without ``time_base`` the float T is left NaN, for a caller that takes it from
    :func:`check_table` with ``rebase`` (the check times the float model anyway).

    Raises:
        TrialEvaluationError: If a plan fails to run.
    """
    from quide_search.progress import bar, phase

    choices = (FLOAT, *(q for q in precisions if q != FLOAT))
    plans = {q: _uniform(target, q, precisions) for q in choices}
    times: dict[str, list[Mapping[str, float]]] = {q: [] for q in choices}
    rounds = context.min_repeats
    desc = f"latency table: {len(choices)} uniform plans profiled whole, rounds"
    for round_ in bar(range(rounds), desc, unit="round"):
        start = round_ % len(choices)
        for q in choices[start:] + choices[:start]:
            times[q].append(_profiled(target, plans[q], context.threads))
    layers = {name: _layer_row(name, times) for name in target.layers}
    base_ms = math.nan
    if time_base:
        with phase("latency table: the float model's T"):
            base_ms = MeasuredLatency(context, target).latency(plans[FLOAT]).median_ms
    described = {**context.to_dict(), "source": "table", "profile_rounds": rounds}
    if target.excluded:  # rows measured at another precision: see read_table_file
        described["excluded"] = {name: sorted(qs) for name, qs in target.excluded.items()}
    return LatencyTable(base_ms, layers, described)


def _profiled(target: TimingTarget, plan: BitPlan, threads: int) -> Mapping[str, float]:
    """One hooked pass of ``plan`` at ``threads``; a forward that fails fails the table."""
    try:
        with torch_threads(threads):
            return target.layer_profile(plan)
    except TrialEvaluationError:
        raise
    except (RuntimeError, ValueError, MemoryError) as e:
        precision = next(iter(plan.layers.values()), FLOAT)
        raise TrialEvaluationError(
            f"the {precision} plan failed while the latency table profiled it: "
            f"{type(e).__name__}: {e}"
        ) from e


def _layer_row(name: str, times: Mapping[str, list[Mapping[str, float]]]) -> dict[str, float]:
    """One layer's ms per precision: its median float time plus its median paired change."""
    floats = times[FLOAT]
    base = statistics.median(t[name] for t in floats)
    row = {FLOAT: base}
    for q, runs in times.items():
        if q != FLOAT:
            changes = (run[name] - ref[name] for run, ref in zip(runs, floats, strict=True))
            row[q] = base + statistics.median(changes)
    return row


def _uniform(target: TimingTarget, precision: str, precisions: Sequence[str]) -> BitPlan:
    """Every layer at ``precision``, but a layer that cannot run it at the nearest of the
    search's ``precisions`` it can, as the study's own uniform plan (so its row under
    ``precision`` is never predicted from: no plan of the search puts it there)."""
    from quide_search.plan import BitPlan, uniform_layers

    layers = uniform_layers(target.layers, precision, target.excluded, precisions)
    return BitPlan(model="table", dataset="-", layers=layers)
