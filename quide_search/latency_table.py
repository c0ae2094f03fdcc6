"""A per-layer latency table (``--latency table``): measure each (layer, qtype) once, add up.

Measuring every plan's latency costs tens of timed passes per trial and its noise makes
searches hard to repeat. The table times each quantizable layer alone, on the input it sees in
the latency example, once per qtype, and predicts a plan's T as the measured float model's T
plus, for each layer, the change its qtype makes. Prediction is deterministic; its error is
checked against a measured T for the uniform plans and stored next to the table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quide_search.errors import ConfigError
from quide_search.latency import LatencyContext, measure_latency
from quide_search.latency_model import run_hooked
from quide_search.plan import FLOAT

if TYPE_CHECKING:
    from quide_search.assembly import LayerCache

__all__ = ["LatencyTable", "layer_inputs", "measure_table", "read_table"]

TABLE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds of each layer alone under each qtype, and of the whole float model.

    Attributes:
        base_ms: Measured T of the float model.
        layers: layer name -> qtype (``none`` included) -> milliseconds of that layer alone.
        context: The measurement conditions (device, batch size, threads).
    """

    base_ms: float
    layers: Mapping[str, Mapping[str, float]]
    context: Mapping[str, Any]

    def predict(self, plan_layers: Mapping[str, str]) -> float:
        """Return the predicted T of a plan: float T plus each layer's change.

        Raises:
            ConfigError: If the plan uses a (layer, qtype) the table lacks.
        """
        total = self.base_ms
        for name, qtype in plan_layers.items():
            row = self.layers.get(name)
            if row is None or qtype not in row or FLOAT not in row:
                raise ConfigError(
                    f"the latency table must hold layer {name!r} under {qtype!r}, but it does "
                    f"not (it covers {len(self.layers)} layers). Measure a new table with "
                    "--latency table for this model and --bits."
                )
            total += row[qtype] - row[FLOAT]
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
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Rebuild a table from :meth:`to_dict` output.

        Raises:
            ConfigError: If the data is not such a table.
        """
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
    """Read a table written by ``show --study S --latency-table PATH`` or the benchmarks.

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
    except json.JSONDecodeError as e:
        raise ConfigError(f"--latency table:PATH {str(file)!r} is not JSON: {e}.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--latency table:PATH {str(file)!r} must hold a JSON object.")
    return LatencyTable.from_dict(data)


def layer_inputs(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Run ``example`` once and return the positional inputs each named layer received."""
    modules = dict(model.named_modules())
    found: dict[str, Any] = {}
    hooks = []
    for name in names:

        def hook(module: nn.Module, args: Any, name: str = name) -> None:
            found.setdefault(name, tuple(a.detach().clone() for a in args))

        hooks.append(modules[name].register_forward_pre_hook(hook))
    run_hooked(model, example, hooks)
    return found


def measure_table(
    cache: LayerCache,
    example: torch.Tensor,
    *,
    layers: Sequence[str],
    qtypes: Sequence[str],
    context: LatencyContext,
    base_ms: float,
) -> LatencyTable:
    """Time each layer alone under each qtype (and float) on its input from ``example``.

    Each entry is timed in single passes, without the CPU's sample floor: a table has
    hundreds of entries of a fraction of a ms each, and with 5-ms samples llama_tiny's table
    (105 layers, 4 choices) took 273 s here instead of 14 s. The table's T is checked
    against measured T on the uniform plans anyway.

    Raises:
        TrialEvaluationError: If a layer fails to quantize or run.
    """
    context = dataclasses.replace(context, sample_ms=None)
    inputs = layer_inputs(cache.model, example, layers)
    table: dict[str, dict[str, float]] = {}
    for name in layers:
        if name not in inputs:  # a layer the example never reaches costs nothing
            table[name] = dict.fromkeys((FLOAT, *qtypes), 0.0)
            continue
        row = {}
        for qtype in (FLOAT, *(q for q in qtypes if q != FLOAT)):
            module = cache.module(name, qtype)
            timed = measure_latency(
                _Bound(module, inputs[name][1:]), inputs[name][0], context=context
            )
            row[qtype] = timed.median_ms
        table[name] = row
    return LatencyTable(base_ms=base_ms, layers=table, context=context.to_dict())


class _Bound(nn.Module):
    """A layer called with its recorded extra positional inputs after the first."""

    def __init__(self, layer: nn.Module, rest: tuple[Any, ...]) -> None:
        super().__init__()
        self.layer = layer
        self.rest = rest

    def forward(self, x: torch.Tensor) -> Any:
        return self.layer(x, *self.rest)
