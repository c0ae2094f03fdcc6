"""quide-search: mixed-precision quantization plans that maximise the QuIDE Intelligence Index.

The public API is small and imported lazily, so ``import quide_search`` (and ``quide-search
--help``) stays instant: torch, optuna and optimum-quanto load only when a function needs them.

Example:
    >>> from quide_search import intelligence_index
    >>> round(intelligence_index(C=4.0, P=0.9, T_ms=1.0), 3)
    3.6
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports
from quide_search._version import __version__

# optimum-quanto imports torch's extension builder, which warns about a missing CUDA runtime on
# every CPU-only machine; the warning says nothing about quide-search's work.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

_EXPORTS = {
    "BitPlan": "quide_search.plan",
    "ConfigError": "quide_search.errors",
    "Finalist": "quide_search.results",
    "CustomTask": "quide_search.tasks.models.custom",
    "Gate": "quide_search.metric",
    "Metrics": "quide_search.metric",
    "PlanError": "quide_search.errors",
    "Protocol": "quide_search.protocol",
    "QuideError": "quide_search.errors",
    "RunConfig": "quide_search.config",
    "TrialEvaluationError": "quide_search.errors",
    "TrialRow": "quide_search.records",
    "apply_plan": "quide_search.backends",
    "evaluate_plan": "quide_search.output.replay",
    "export_plan": "quide_search.output.export",
    "gated_index": "quide_search.metric",
    "get_backend": "quide_search.backends",
    "intelligence_index": "quide_search.metric",
    "load_plan": "quide_search.output.record",
    "load_quantized": "quide_search.output.checkpoint",
    "load_task": "quide_search.tasks.resolver",
    "pareto_front": "quide_search.study.pareto",
    "register_dataset": "quide_search.tasks.data",
    "register_model": "quide_search.tasks.models",
    "run_search": "quide_search.study.run",
    "run_sweep": "quide_search.study.sweep",
    "save_quantized": "quide_search.output.checkpoint",
}

__all__ = [
    "BitPlan",
    "ConfigError",
    "CustomTask",
    "Finalist",
    "Gate",
    "Metrics",
    "PlanError",
    "Protocol",
    "QuideError",
    "RunConfig",
    "TrialEvaluationError",
    "TrialRow",
    "__version__",
    "apply_plan",
    "evaluate_plan",
    "export_plan",
    "gated_index",
    "get_backend",
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
    from quide_search.backends import apply_plan, get_backend
    from quide_search.config import RunConfig
    from quide_search.errors import ConfigError, PlanError, QuideError, TrialEvaluationError
    from quide_search.metric import Gate, Metrics, gated_index, intelligence_index
    from quide_search.output.checkpoint import load_quantized, save_quantized
    from quide_search.output.export import export_plan
    from quide_search.output.record import load_plan
    from quide_search.output.replay import evaluate_plan
    from quide_search.plan import BitPlan
    from quide_search.protocol import Protocol
    from quide_search.records import TrialRow
    from quide_search.results import Finalist
    from quide_search.study.pareto import pareto_front
    from quide_search.study.run import run_search
    from quide_search.study.sweep import run_sweep
    from quide_search.tasks.data import register_dataset
    from quide_search.tasks.models import register_model
    from quide_search.tasks.models.custom import CustomTask
    from quide_search.tasks.resolver import load_task

__getattr__ = lazy_exports(__name__, _EXPORTS)
