"""A per-layer latency table (``--latency table``): time each (layer, precision) once, add up.

The table times each quantizable layer alone, on the input it sees in one step of the float
model, once per precision, and predicts a plan's T as the float model's measured T plus, for
each layer, the change its precision makes. The prediction is deterministic, so a search on
a noisy CPU repeats exactly; how far it is from measured T is checked on the uniform plans
when a study is created, and measured per model in ``benchmarks/latency_fidelity.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from quide_search.errors import ConfigError
from quide_search.latency._base import LatencyContext, LatencyResult, LatencySource, TimingTarget
from quide_search.latency._timer import time_model
from quide_search.latency.measured import MeasuredLatency
from quide_search.plan import FLOAT

if TYPE_CHECKING:
    from quide_search.plan import BitPlan

__all__ = ["LatencyTable", "TableLatency", "read_table"]

TABLE_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds of each layer alone under each precision, and of the whole float model.

    Attributes:
        base_ms: Measured T of the float model.
        layers: layer name -> precision (``float`` included) -> ms of that layer alone.
        context: The measurement conditions (device, batch size, threads).
    """

    base_ms: float
    layers: Mapping[str, Mapping[str, float]]
    context: Mapping[str, Any]

    def predict(self, plan_layers: Mapping[str, str]) -> float:
        """Return the predicted T of a plan: float T plus each layer's change.

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
        # A layer can time faster quantized than float; T stays positive whatever the sum.
        return max(total, 1e-6)

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
        if not isinstance(data, Mapping) or data.get("schema_version") != TABLE_SCHEMA_VERSION:
            raise ConfigError(
                f"a latency table must be the JSON quide-search writes (schema "
                f"{TABLE_SCHEMA_VERSION}: base_ms, layers, context), but got another document. "
                "Save one with `quide-search show --study S --latency-table PATH`."
            )
        try:
            layers = {
                str(k): {str(q): float(ms) for q, ms in v.items()}
                for k, v in data["layers"].items()
            }
            return cls(base_ms=float(data["base_ms"]), layers=layers, context=data["context"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ConfigError(
                "a latency table must be the JSON that quide-search writes (base_ms, layers, "
                f"context), but reading it failed: {type(e).__name__}: {e}."
            ) from e


def read_table(path: str | Path) -> LatencyTable:
    """Read a table written by ``show --study S --latency-table PATH``.

    Raises:
        ConfigError: If the file is missing or not a table.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            f"--latency table:PATH must name a readable JSON file, but {str(file)!r} could not "
            f"be read ({e.strerror or e}). Give the path of a saved table."
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--latency table:PATH {str(file)!r} is not JSON: {e}.") from e
    return LatencyTable.from_dict(data)


class TableLatency(LatencySource):
    """T predicted from a :class:`LatencyTable`.

    Args:
        context: The conditions the table was measured under (``source`` ``table``).
        table: The table.
    """

    def __init__(self, context: LatencyContext, table: LatencyTable) -> None:
        self.context = context
        self.table = table

    def latency(self, plan: BitPlan) -> LatencyResult:
        return LatencyResult(median_ms=self.table.predict(plan.layers))

    def predicted_ms(self, layers: Mapping[str, str]) -> float | None:
        return self.table.predict(layers)

    def stored(self) -> dict[str, Any] | None:
        return self.table.to_dict()

    @classmethod
    def measure(
        cls, context: LatencyContext, target: TimingTarget, precisions: Sequence[str]
    ) -> TableLatency:
        """Time the float model, then each layer alone under each precision (and float).

        Each layer entry is timed in single passes, without the CPU's sample floor: a table
        has hundreds of entries of a fraction of a ms each (with 5-ms samples llama_tiny's
        table took 273 s instead of 14 s), and the float model's T carries the floor.

        Raises:
            TrialEvaluationError: If a layer fails to quantize or run.
        """
        from quide_search.progress import bar, phase

        with phase("latency table: the float model's T"):
            float_plan_ms = MeasuredLatency(context, target).latency(_float_plan(target)).median_ms
        single = dataclasses.replace(context, sample_ms=None)
        inputs = target.step_inputs()
        table: dict[str, dict[str, float]] = {}
        choices = (FLOAT, *(q for q in precisions if q != FLOAT))
        desc = f"latency table: each layer timed alone at {len(choices)} precisions"
        for name in bar(target.layers, desc, unit="layer"):
            if name not in inputs:  # a layer the step never reaches costs nothing
                table[name] = dict.fromkeys(choices, 0.0)
                continue
            first, *rest = inputs[name]
            table[name] = {
                q: time_model(_Bound(target.layer(name, q), tuple(rest)), first, single).median_ms
                for q in choices
            }
        return cls(
            context, LatencyTable(float_plan_ms, table, {**context.to_dict(), "source": "table"})
        )


def _float_plan(target: TimingTarget) -> BitPlan:
    from quide_search.plan import BitPlan

    return BitPlan(model="float", dataset="-", layers=dict.fromkeys(target.layers, FLOAT))


class _Bound(nn.Module):
    """A layer called with its recorded extra positional inputs after the first."""

    def __init__(self, layer: nn.Module, rest: tuple[Any, ...]) -> None:
        super().__init__()
        self.layer = layer
        self.rest = rest

    def forward(self, x: Any) -> Any:
        return self.layer(x, *self.rest)
