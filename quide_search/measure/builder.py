"""Build each trial's whole model with a backend that cannot assemble plans from layers.

A :class:`~quide_search.backends._base.WholeModelBackend` (ONNX Runtime) makes the model for a
plan in one piece: the graph is exported and calibrated once per model inside the backend, and
each plan costs one quantization and one session. :class:`PlanBuilder` keeps the last few
plans built (the confirmation step alternates between a handful) and answers the same
questions as :class:`~quide_search.measure.assembly.LayerCache` (the model, its stored bytes,
which kernels run), so the scorer, the latency sources and the confirmation speak to either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from quide_search.backends._kinds import BuiltModel, WholeModelBackend
from quide_search.plan import FLOAT, BitPlan

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["HELD_PER_STORED", "PlanBuilder"]

HELD_PER_STORED = 5
"""Memory a built plan holds per byte it stores, measured: ResNet-18 sessions of ORT 1.32 held
about 220 MB each for a 45 MB float graph (the process's peak over some 45 kept plans)."""


class PlanBuilder:
    """Whole models built for plans, the most recent kept within ``limit_mb``.

    Args:
        model: The float model; never changed.
        backend: Builds a plan's model.
        layers: The layers plans may quantize, in module order.
        calibration: Model inputs (samples first) the backend builds and calibrates on.
        threads: Threads each built model runs with (the latency's: T is timed on it, and
            P is the same at any thread count).
        limit_mb: Bound on the memory of the built plans kept, each counted as
            :data:`HELD_PER_STORED` times its stored bytes (the graph, and the session's
            prepacked copies of its weights and its arena); the least recently used go first,
            the last one built always stays.
        keep: At most this many plans kept: the handful a confirmation or a table check
            alternates between, which would otherwise be rebuilt in every round.
    """

    def __init__(
        self,
        model: nn.Module,
        backend: WholeModelBackend,
        layers: Iterable[str],
        *,
        calibration: torch.Tensor | None,
        threads: int | None,
        limit_mb: float = 4096.0,
        keep: int = 12,
    ) -> None:
        self.model = model
        self.backend = backend
        self.layers = list(layers)
        self.calibration = calibration
        self.threads = threads
        self.limit_bytes = int(limit_mb * 2**20)
        self.keep = keep
        self._built: OrderedDict[tuple[tuple[str, str], ...], BuiltModel] = OrderedDict()
        self.built = 0
        self.hits = 0

    @property
    def baseline_bytes(self) -> int:
        """The bytes the float model stores in the backend's form (ORT: the float graph's
        initializers, batch norms folded into convolutions)."""
        return self.get(self._plan({})).stored_bytes

    def get(self, plan: BitPlan) -> BuiltModel:
        """The model built for ``plan`` (built now unless it is still kept).

        Raises:
            PlanError: If the plan names a layer the model lacks, or one the backend cannot
                give its precision.
            TrialEvaluationError: If the backend fails, or runs a planned layer in float.
        """
        plan.validate_layers(self.layers)
        key = tuple(sorted(plan.quantized_layers().items()))
        if key in self._built:
            self.hits += 1
            self._built.move_to_end(key)
            return self._built[key]
        built = self.backend.build(
            self.model, plan, calibration=self.calibration, threads=self.threads
        )
        self.built += 1
        self._built[key] = built
        while len(self._built) > 1 and (
            self.held_bytes > self.limit_bytes or len(self._built) > self.keep
        ):
            self._built.popitem(last=False)
        return built

    @property
    def held_bytes(self) -> int:
        """Memory held by the built plans kept, as :attr:`limit_bytes` counts it."""
        return sum(HELD_PER_STORED * built.stored_bytes for built in self._built.values())

    def assemble(self, plan: BitPlan, *, exact: bool = False) -> nn.Module:
        """The module that runs ``plan`` (``exact`` changes nothing: there are no twins)."""
        return self.get(plan).module

    def stored_bytes(self, plan: BitPlan) -> int:
        """The bytes ``plan``'s model stores."""
        return self.get(plan).stored_bytes

    def layer_bytes(self, plan: BitPlan) -> dict[str, int]:
        """Each quantizable layer's stored bytes under ``plan``."""
        return dict(self.get(plan).layer_bytes)

    def kernel_paths(self, plan: BitPlan) -> dict[str, str]:
        """Each quantized layer of ``plan`` -> ``kernel:OP`` (a build that would run one in
        float fails instead)."""
        return dict(self.get(plan).kernels)

    def bytes_by_precision(
        self, precisions: Sequence[str], refused: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, int]]:
        """Layer -> precision -> its stored bytes, from one uniform plan per precision (a
        layer has no entry under a precision in ``refused``)."""
        table: dict[str, dict[str, int]] = {name: {} for name in self.layers}
        for q in (FLOAT, *precisions):
            able = [n for n in self.layers if q not in refused.get(n, {})]
            sizes = self.layer_bytes(self._plan(dict.fromkeys(able, q)))
            for name in able:
                table[name][q] = sizes[name]
        return table

    def layer_profile(
        self, plan: BitPlan, call: Callable[[nn.Module], object], runs: int
    ) -> dict[str, float]:
        """Each layer's time in ``plan``'s model, in ms per ``call`` (one timed call of the
        built module), from the runtime's profiler over ``runs`` calls."""
        return self.backend.layer_profile(self.get(plan), call, runs)

    def _plan(self, layers: dict[str, str]) -> BitPlan:
        return BitPlan(model="model", dataset="data", layers=layers, backend=self.backend.name)
