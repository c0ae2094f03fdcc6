"""quide-search: mixed-precision quantization plans that maximise the QuIDE Intelligence Index.

The public API is small and imported lazily, so ``import quide_search`` (and ``quide-search
--help``) stays instant: torch, optuna and optimum-quanto load only when a function needs them.

Example:
    >>> from quide_search import intelligence_index
    >>> round(intelligence_index(C=4.0, P=0.9, T_ms=1.0), 3)
    3.6
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# optimum-quanto imports torch's extension builder, which warns about a missing CUDA runtime on
# every CPU-only machine; the warning says nothing about quide-search's work.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__version__ = "0.1.0"

_EXPORTS = {
    "BitPlan": "quide_search.plan",
    "ConfigError": "quide_search.errors",
    "CustomTask": "quide_search.models.custom",
    "Gate": "quide_search.metric",
    "Metrics": "quide_search.metric",
    "PlanError": "quide_search.errors",
    "QuideError": "quide_search.errors",
    "RunConfig": "quide_search.config",
    "TrialEvaluationError": "quide_search.errors",
    "apply_plan": "quide_search.quantize",
    "evaluate_plan": "quide_search.replay",
    "export_plan": "quide_search.export",
    "gated_index": "quide_search.metric",
    "intelligence_index": "quide_search.metric",
    "load_plan": "quide_search.export",
    "load_quantized": "quide_search.checkpoint",
    "save_quantized": "quide_search.checkpoint",
    "load_task": "quide_search.task",
    "pareto_front": "quide_search.pareto",
    "register_dataset": "quide_search.data",
    "register_model": "quide_search.models",
    "run_search": "quide_search.study",
    "run_sweep": "quide_search.sweep",
}

__all__ = [
    "BitPlan",
    "ConfigError",
    "CustomTask",
    "Gate",
    "Metrics",
    "PlanError",
    "QuideError",
    "RunConfig",
    "TrialEvaluationError",
    "__version__",
    "apply_plan",
    "evaluate_plan",
    "export_plan",
    "gated_index",
    "intelligence_index",
    "load_plan",
    "load_quantized",
    "load_task",
    "pareto_front",
    "register_dataset",
    "register_model",
    "run_search",
    "run_sweep",
    "save_quantized",
]

if TYPE_CHECKING:
    from quide_search.checkpoint import load_quantized, save_quantized
    from quide_search.config import RunConfig
    from quide_search.data import register_dataset
    from quide_search.errors import ConfigError, PlanError, QuideError, TrialEvaluationError
    from quide_search.export import export_plan, load_plan
    from quide_search.metric import Gate, Metrics, gated_index, intelligence_index
    from quide_search.models import register_model
    from quide_search.models.custom import CustomTask
    from quide_search.pareto import pareto_front
    from quide_search.plan import BitPlan
    from quide_search.quantize import apply_plan
    from quide_search.replay import evaluate_plan
    from quide_search.study import run_search
    from quide_search.sweep import run_sweep
    from quide_search.task import load_task


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'quide_search' has no attribute {name!r}")
