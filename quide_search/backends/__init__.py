"""Quantization backends: the libraries that turn a plan into quantized modules.

Owns everything library-specific: :class:`QuantBackend` (``_base``) is the interface, and each
implementation is one file (``quanto``: optimum-quanto; ``torchao``: torchao; ``onnxruntime``:
ONNX Runtime; each the only module, with its private helpers, that imports its library).
quanto and torchao quantize layer by layer (:class:`LayerBackend`); onnxruntime builds the
whole model for each plan (:class:`WholeModelBackend`).
:func:`get_backend` looks one up by the name plans and studies record.

Layer: backends (imports latency and the foundation modules only).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports
from quide_search.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

    from quide_search.backends._base import QuantBackend, model_bytes
    from quide_search.plan import BitPlan

__all__ = ["BACKENDS", "QuantBackend", "apply_plan", "check_backend", "get_backend",
           "model_bytes"]  # fmt: skip

BACKENDS = {
    "quanto": "quide_search.backends.quanto:QuantoBackend",
    "torchao": "quide_search.backends.torchao:TorchaoBackend",
    "onnxruntime": "quide_search.backends.onnxruntime:OnnxRuntimeBackend",
}
"""Backend name -> where its class lives (imported only when it is used)."""


def check_backend(name: str) -> None:
    """Raise ConfigError unless ``name`` is a known backend (no import of the library)."""
    if name not in BACKENDS:
        raise ConfigError(
            f"--backend must be one of {', '.join(BACKENDS)}, but got {name!r}."
            + did_you_mean(name, BACKENDS)
        )


def get_backend(name: str) -> QuantBackend:
    """Return the backend ``name``.

    Raises:
        ConfigError: For an unknown name.
    """
    check_backend(name)
    module, _, cls = BACKENDS[name].partition(":")
    backend: QuantBackend = getattr(importlib.import_module(module), cls)()
    return backend


def apply_plan(
    model: nn.Module, plan: BitPlan, *, calibration: torch.Tensor | None = None
) -> nn.Module:
    """Return a frozen quantized copy of ``model`` with ``plan`` applied by its backend.

    Args:
        calibration: Model inputs (samples first) that static activation scales are fitted
            on, for a plan with calibrated precisions (quanto's ``w8a8``, ``w4a8``, ...).

    Raises:
        PlanError: If a plan layer is not a quantizable layer of ``model``, or the plan has
            calibrated precisions and no ``calibration``.
        TrialEvaluationError: If the backend fails on a layer.

    Example:
        >>> from quide_search import BitPlan, apply_plan
        >>> from quide_search.tasks.models import SimpleCNN
        >>> quantized = apply_plan(SimpleCNN(), BitPlan(model="simplecnn", dataset="digits",
        ...                                             layers={"fc2": "int8"}))
        >>> type(quantized.fc2).__name__
        'QLinear'
    """
    return get_backend(plan.backend).apply(model, plan, calibration=calibration)


__getattr__ = lazy_exports(
    __name__,
    {"QuantBackend": "quide_search.backends._base", "model_bytes": "quide_search.backends._base"},
)
