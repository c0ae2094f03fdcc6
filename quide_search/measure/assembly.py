"""Assemble a trial's model from cached quantized layers, changing only what the plan changes.

Deep-copying the whole model and re-quantizing every layer for each trial costs time and memory
in proportion to the model, whatever the plan. Instead the float model is kept once, untouched,
and each (layer, precision) is quantized at most once into a byte-bounded LRU cache. Trials run on
two *views* of the float model: copies of only the modules on the path from the root to each
quantizable layer, which share every tensor and every other module with it. A view keeps the
last plan's layers in place, so the next plan swaps only the layers whose precision differs: a plan
that changes one layer costs one swap, however many layers the model has.

The evaluation view holds, for each layer the backend runs by dequantizing its weight on every
call, a float twin with the weight dequantized once (:meth:`QuantBackend.float_twin`); its
outputs are bit for bit the backend's. The exact view holds the backend's own modules, for
latency and for anything that inspects the quantized layers. Both give the same outputs as
quantizing a fresh copy (a test compares outputs and bytes for random plans).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from quide_search.backends._base import model_bytes, storage_key
from quide_search.backends._kinds import LayerBackend
from quide_search.plan import FLOAT, BitPlan

__all__ = ["Assembler", "LayerCache"]


class Assembler(Protocol):
    """Where a study's trial models come from: :class:`LayerCache` (a layer-by-layer backend)
    or :class:`~quide_search.measure.builder.PlanBuilder` (a whole-model backend)."""

    model: nn.Module
    layers: list[str]
    built: int
    hits: int

    @property
    def baseline_bytes(self) -> int:
        """The bytes the float model stores."""

    def assemble(self, plan: BitPlan, *, exact: bool = False) -> nn.Module:
        """A model that computes ``plan``."""

    def stored_bytes(self, plan: BitPlan) -> int:
        """The bytes ``plan``'s model stores."""

    def layer_bytes(self, plan: BitPlan) -> dict[str, int]:
        """Each quantizable layer's stored bytes under ``plan``."""

    def kernel_paths(self, plan: BitPlan) -> dict[str, str]:
        """Each quantized layer of ``plan`` -> ``fallback`` or ``kernel:NAME``."""

    def bytes_by_precision(
        self, precisions: Sequence[str], refused: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, int]]:
        """Layer -> precision -> its stored bytes (none under a precision in ``refused``)."""


@dataclass(frozen=True)
class _Entry:
    """One quantized layer: the backend's module, its float twin if any, and its bytes."""

    exact: nn.Module
    twin: nn.Module | None
    held_bytes: int


class LayerCache:
    """Quantized layers of one float model, built on demand and kept within ``limit_mb``.

    Args:
        model: The float model; it is never changed (trials run on views that share it).
        backend: Quantizes layers and says how they run.
        layers: The layers plans may quantize.
        limit_mb: Bound on the memory of cached quantized layers and their float twins (least
            recently used ones are dropped first; a plan's own layers are always built).
            Float twins are made only while the float model's bytes are at most a quarter
            of it; otherwise evaluation runs the backend's own modules.
        calibration: Layer name -> what it receives on calibration data, for the precisions
            the backend calibrates (:class:`~quide_search.backends.calibration.LayerInputs`
            over the float model).
    """

    def __init__(
        self,
        model: nn.Module,
        backend: LayerBackend,
        layers: Iterable[str],
        *,
        limit_mb: float = 4096.0,
        calibration: Callable[[str], Sequence[tuple[Any, ...]]] | None = None,
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.backend = backend
        self.limit_bytes = int(limit_mb * 2**20)
        self._modules = dict(model.named_modules())
        self.layers = list(layers)
        """The layers plans may quantize, in module order."""
        self._layers = set(self.layers)
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        # Bytes and kernel paths are small and never evicted: a rebuilt layer is the same.
        self._stored: dict[tuple[str, str], int] = {}
        self._paths: dict[tuple[str, str], str] = {}
        self._own_bytes = _own_bytes(model, self._modules, self._layers)
        self._float_layer_bytes = {name: model_bytes(self._modules[name]) for name in self._layers}
        self._baseline = model_bytes(model)
        # A twin is a float copy of its layer's weight: on a model that is large next to the
        # bound, twins would hold as much memory as the model itself, so there are none.
        self.twins = 4 * self._baseline <= self.limit_bytes
        self._views: dict[bool, _View] = {}
        self.built = 0
        self.hits = 0

    @property
    def baseline_bytes(self) -> int:
        """The bytes the float model stores (every tensor of its state dict)."""
        return self._baseline

    def bytes_by_precision(
        self, precisions: Sequence[str], refused: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, int]]:
        """Layer -> precision -> the stored bytes of that layer alone (stored bytes add up
        over layers); a layer has no entry under a precision in ``refused``."""
        return {
            name: {
                q: model_bytes(self.module(name, q))
                for q in (FLOAT, *precisions)
                if q not in refused.get(name, {})
            }
            for name in self.layers
        }

    @property
    def cached_bytes(self) -> int:
        """Memory held by the quantized layers (and float twins) now cached."""
        return sum(entry.held_bytes for entry in self._cache.values())

    def module(self, name: str, precision: str) -> nn.Module:
        """Return layer ``name`` under ``precision`` as the backend runs it (float: the layer).

        Raises:
            TrialEvaluationError: If the backend fails on the layer.
        """
        if precision == FLOAT:
            return self._modules[name]
        return self._get(name, precision).exact

    def assemble(self, plan: BitPlan, *, exact: bool = False) -> nn.Module:
        """Return a model that computes ``plan``: the float model with its layers quantized.

        Only the layers whose precision differs from the view's last plan are swapped. The model
        stays valid until the next ``assemble`` with the same ``exact``.

        Args:
            exact: the backend's own modules everywhere (for timing and inspection); otherwise
                layers it runs by dequantizing use a float twin with the same outputs.

        Raises:
            PlanError: If the plan names a layer the model lacks.
            TrialEvaluationError: If the backend fails on a layer.
        """
        plan.validate_layers(self._layers)
        if exact not in self._views:
            self._views[exact] = _View(self.model, self._modules, self._layers)
        view = self._views[exact]
        wanted = plan.quantized_layers()
        installed = view.installed
        for name in [n for n in installed if n not in wanted]:
            view.install(name, FLOAT, self._modules[name])
        for name, precision in wanted.items():
            if installed.get(name) != precision:
                entry = self._get(name, precision)
                view.install(name, precision, entry.exact if exact else entry.twin or entry.exact)
        return view.root

    def stored_bytes(self, plan: BitPlan) -> int:
        """Return the bytes ``plan``'s quantized model stores, from per-layer counts.

        Equal to ``model_bytes`` of the quantized model: a layer's own tensors are replaced
        by its quantized ones, tensors it shares with the rest of the model are kept.

        Raises:
            TrialEvaluationError: If the backend fails on a layer not built yet.
        """
        quantized = self._counted(plan)
        return self._baseline + sum(
            self._stored[name, precision] - self._own_bytes[name]
            for name, precision in quantized.items()
        )

    def layer_bytes(self, plan: BitPlan) -> dict[str, int]:
        """Return each quantizable layer's stored bytes under ``plan`` (its own state dict).

        Raises:
            TrialEvaluationError: If the backend fails on a layer not built yet.
        """
        quantized = self._counted(plan)
        return {**self._float_layer_bytes, **{n: self._stored[n, q] for n, q in quantized.items()}}

    def kernel_paths(self, plan: BitPlan) -> dict[str, str]:
        """Return, for each quantized layer of ``plan``, ``fallback`` or ``kernel:NAME``."""
        return {n: self._paths[n, q] for n, q in self._counted(plan).items()}

    def _counted(self, plan: BitPlan) -> dict[str, str]:
        """Return ``plan``'s quantized layers, building any whose bytes and path are unknown."""
        quantized = plan.quantized_layers()
        for name, precision in quantized.items():
            if (name, precision) not in self._stored:
                self._get(name, precision)
        return quantized

    def _get(self, name: str, precision: str) -> _Entry:
        key = (name, precision)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        inputs = None
        if self.calibration is not None and self.backend.calibrated(precision):
            inputs = self.calibration(name)
        exact = self.backend.quantize_layer(self._modules[name], precision, inputs)
        twin = self.backend.float_twin(exact) if self.twins else None
        self.built += 1
        self._stored[key] = model_bytes(exact)
        self._paths[key] = self.backend.kernel_path(exact)
        held = self._stored[key] + (model_bytes(twin) if twin is not None else 0)
        self._cache[key] = entry = _Entry(exact, twin, held)
        while self.cached_bytes > self.limit_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return entry


class _View:
    """The float model's modules from the root to each quantizable layer's parent, copied.

    The copies share parameters, buffers and every other module with the float model, so a
    view costs a few module objects, and swapping a layer in it leaves the float model alone.
    """

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], layers: set[str]) -> None:
        spine = {""} | {
            name.rsplit(".", i)[0] for name in layers for i in range(1, name.count(".") + 1)
        }
        self._parents: dict[str, nn.Module] = {}
        for name in sorted(spine, key=lambda n: (n.count(".") if n else -1, n)):
            clone = copy.copy(modules[name])
            clone._modules = dict(clone._modules)
            clone._parameters = dict(clone._parameters)
            clone._buffers = dict(clone._buffers)
            if name:
                parent, _, child = name.rpartition(".")
                self._parents[parent]._modules[child] = clone
            self._parents[name] = clone
        self.root = self._parents[""]
        self.installed: dict[str, str] = {}  # layer -> precision, for the layers not in float

    def install(self, name: str, precision: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        self._parents[parent]._modules[child] = module
        if precision == FLOAT:
            self.installed.pop(name, None)
        else:
            self.installed[name] = precision


def _own_bytes(
    model: nn.Module, modules: dict[str, nn.Module], layers: set[str]
) -> dict[str, int]:
    """Bytes of each layer's tensors that no other part of the model shares (tied weights)."""
    owners: dict[tuple[int, int], set[str]] = {}
    for key, tensor in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        owners.setdefault(storage_key(tensor), set()).add(owner)
    own = {}
    for name in layers:
        tensors = list(modules[name].state_dict().values())
        own[name] = sum(
            t.numel() * t.element_size() for t in tensors if owners[storage_key(t)] == {name}
        )
    return own
