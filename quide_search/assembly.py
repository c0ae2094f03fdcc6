"""Assemble a trial's model in place: cached quantized layers swapped into the float model.

Deep-copying the whole model and re-quantizing every layer for each trial costs time and memory
in proportion to the model, whatever the plan. Instead the float model is kept once, each
(layer, qtype) is quantized at most once into a byte-bounded LRU cache, and a plan is applied by
swapping those modules into the float model and swapping the float ones back afterwards. The
result is the same model as quantizing a fresh copy (a test compares outputs and bytes).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

from torch import nn

from quide_search.plan import FLOAT, BitPlan
from quide_search.quantize import model_bytes, quantizable_layers, quantize_layer

__all__ = ["LayerCache"]


class LayerCache:
    """Quantized layers of one float model, built on demand and kept within ``limit_mb``.

    Args:
        model: The float model; plans are assembled into it in place, then undone.
        limit_mb: Bound on the stored bytes of cached quantized layers (least recently used
            ones are dropped first; a plan's own layers are always built).
    """

    def __init__(self, model: nn.Module, *, limit_mb: float = 4096.0) -> None:
        self.model = model
        self.limit_bytes = int(limit_mb * 2**20)
        self._modules = dict(model.named_modules())
        self._layers = set(quantizable_layers(model))
        self._cache: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
        self.built = 0
        self.hits = 0

    @property
    def cached_bytes(self) -> int:
        """Stored bytes of the quantized layers now cached."""
        return sum(self._sizes.values())

    def module(self, name: str, qtype: str) -> nn.Module:
        """Return layer ``name`` under ``qtype`` (``none``: the float layer), built at most once.

        Raises:
            TrialEvaluationError: If quanto fails on the layer.
        """
        if qtype == FLOAT:
            return self._modules[name]
        return self._get(name, qtype)

    def _get(self, name: str, qtype: str) -> nn.Module:
        key = (name, qtype)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        module = quantize_layer(self._modules[name], qtype)
        self.built += 1
        self._cache[key] = module
        self._sizes[key] = model_bytes(module)
        while self.cached_bytes > self.limit_bytes and len(self._cache) > 1:
            oldest, _ = self._cache.popitem(last=False)
            del self._sizes[oldest]
        return module

    @contextlib.contextmanager
    def assembled(self, plan: BitPlan) -> Iterator[nn.Module]:
        """Yield the float model with ``plan``'s quantized layers swapped in; undo on exit.

        Raises:
            PlanError: If the plan names a layer the model lacks.
            TrialEvaluationError: If quanto fails on a layer.
        """
        plan.validate_layers(self._layers)
        swapped: list[tuple[str, nn.Module]] = []
        try:
            for name, qtype in plan.quantized_layers().items():
                quantized = self._get(name, qtype)
                swapped.append((name, self._modules[name]))
                self._set(name, quantized)
            yield self.model
        finally:
            for name, original in reversed(swapped):
                self._set(name, original)

    def _set(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self._modules[parent_name] if parent_name else self.model
        setattr(parent, child, module)
