"""The protocol of a study: what its numbers mean, stored once and checked on every resume.

A study's C, P, T and I′ are only comparable between trials measured the same way. The
creator stores the settings that define them (model, data splits, bit choices, gate, latency
method, versions ...) as the study's ``protocol`` attribute, and every process that joins or
resumes the study must bring the same ones, or it is refused before it writes anything.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError
from quide_search.metric import LATENCY_UNIT

if TYPE_CHECKING:
    from quide_search.config import RunConfig
    from quide_search.scorer import Scorer

__all__ = ["PROTOCOL_SCHEMA_VERSION", "check_resume", "study_protocol"]

PROTOCOL_SCHEMA_VERSION = 1
# The protocol fields that must match for a resume: anything that changes what a number means.
# The rest (seed, versions, where the weights and data came from) is recorded and may differ.
_MUST_MATCH = (
    "model", "dataset", "splits", "bits", "gate", "latency", "eval_batch_size", "granularity",
    "objective", "latency_source", "limits",
)  # fmt: skip
# Fields added later: checked only against studies that stored them, so older studies resume.
_MUST_MATCH_SINCE = ("eval_threads",)
# Latency context fields stored apart (measured by the creator) or allowed to differ.
_LATENCY_STORED_APART = ("torch_version", "reference_ms", "sample_ms", "reference_qtypes")


def study_protocol(config: RunConfig, scorer: Scorer) -> dict[str, Any]:
    """Return the protocol of a study run with ``config`` on ``scorer``'s task, as JSON types.

    The creator's timing-dependent settings (chunk schedule, latency reference, sample
    floor) are not in it: they are measured once and added by the session.
    """
    import optimum.quanto
    import optuna
    import torch

    from quide_search import __version__

    text = config.task_options()["text"]
    table = config.latency.startswith("table")
    return {
        "schema_version": PROTOCOL_SCHEMA_VERSION,
        "model": scorer.task.model_name,
        "dataset": scorer.task.dataset_name,
        # What was asked for (a file, a published-weights name, or None: the trained default)
        # and the file the float model came from.
        "weights": config.weights,
        "weights_path": str(scorer.task.weights_path) if scorer.task.weights_path else None,
        "data_dir": config.data_dir,
        "eval_samples": config.eval_samples,
        "calib_samples": config.calib_samples,
        "latency_source": "table" if table else config.latency,
        "latency_table_file": config.latency.removeprefix("table:") if table else None,
        "objective": config.objective,
        "limits": {"max_size_mb": config.max_size_mb, "max_latency_ms": config.max_latency_ms},
        "splits": scorer.task.splits.describe(),
        "bits": list(config.bits),
        "granularity": config.granularity,
        "text": dataclasses.asdict(text) if text else None,
        "layers": list(scorer.weight_counts),
        "gate": config.gate_settings(),
        "latency": {
            k: v for k, v in scorer.context.to_dict().items() if k not in _LATENCY_STORED_APART
        },
        "eval_batch_size": config.eval_batch_size,
        # The threads P is evaluated with; T's own are latency.threads (--latency-threads).
        "eval_threads": torch.get_num_threads(),
        "seed": config.seed,
        "unit": LATENCY_UNIT,
        "versions": {
            "quide_search": __version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "optimum_quanto": getattr(optimum.quanto, "__version__", "unknown"),
        },
    }


def check_resume(stored: dict[str, Any], current: dict[str, Any], name: str) -> None:
    """Refuse to resume study ``name`` unless ``current`` matches ``stored`` where it must.

    Raises:
        ConfigError: Naming the first field that differs, both values and what to do.
    """
    for key in (*_MUST_MATCH, *(k for k in _MUST_MATCH_SINCE if k in stored)):
        if stored.get(key) != current.get(key):
            raise ConfigError(
                f"resuming study {name!r} needs the same {key} as when it was created, but it "
                f"was {stored.get(key)!r} and is now {current.get(key)!r}. Use the original "
                "flags, or start a new study with --study NAME."
            )
