"""Output: what people and other programs read from a study.

Owns the terminal tables (``text``; a study's summary in ``summary_text``), the offline HTML
report (``htmlreport``), exported plan records and their schema (``record``, ``export``),
quantized checkpoints (``checkpoint``), re-measuring an exported plan (``replay``) and
optuna-dashboard on loopback (``dashboard``). It reads what :mod:`quide_search.study` stored
and writes only through :mod:`quide_search.files`.

Layer: output (imports study and everything below it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quide_search._lazy import lazy_exports

if TYPE_CHECKING:
    from quide_search.output.checkpoint import load_quantized, save_quantized
    from quide_search.output.export import export_plan
    from quide_search.output.record import load_plan
    from quide_search.output.replay import Replay, evaluate_plan

__all__ = ["Replay", "evaluate_plan", "export_plan", "load_quantized", "load_plan",
           "save_quantized"]  # fmt: skip

__getattr__ = lazy_exports(
    __name__,
    {
        "load_quantized": "quide_search.output.checkpoint",
        "save_quantized": "quide_search.output.checkpoint",
        "export_plan": "quide_search.output.export",
        "load_plan": "quide_search.output.record",
        "Replay": "quide_search.output.replay",
        "evaluate_plan": "quide_search.output.replay",
    },
)
