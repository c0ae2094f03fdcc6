"""Quantized checkpoints: the plan record beside the backend's own saved model.

A checkpoint folder holds ``plan.json`` (the exported record: plan, metrics, protocol, source),
the files the plan's backend writes (for quanto: ``model.safetensors`` and
``quantization_map.json``, which ``optimum.quanto.requantize`` reloads without quide-search;
for a transformers causal LM, the layout of quanto's ``QuantizedModelForCausalLM``), and the
manifest of :mod:`quide_search.files`. A folder is written beside its target and swapped in
whole; a folder quide-search did not write is never replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from quide_search.errors import DataError
from quide_search.files import atomic_write_text, stamped, write_directory
from quide_search.plan import DEFAULT_BACKEND

__all__ = ["PLAN_FILE", "load_quantized", "save_quantized", "write_checkpoint"]

PLAN_FILE = "plan.json"


def save_quantized(model: nn.Module, record: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write a frozen quantized ``model`` and its plan ``record`` as a checkpoint folder.

    Args:
        model: The quantized model (e.g. ``backend.apply(float_model, plan)``).
        record: Its plan record (at least ``backend``, ``model``, ``dataset``, ``layers``).
        out: The folder: new, empty, or an earlier checkpoint.

    Raises:
        ConfigError: If ``out`` is a file or a folder quide-search did not write.
    """
    return write_directory(
        out, lambda folder: write_checkpoint(model, record, folder), kind="checkpoint"
    )


def write_checkpoint(model: nn.Module, record: dict[str, Any], folder: Path) -> None:
    """Write a checkpoint's files into the existing, empty ``folder``."""
    from quide_search.backends import get_backend

    get_backend(str(record.get("backend", DEFAULT_BACKEND))).save(model, folder)
    atomic_write_text(folder / PLAN_FILE, json.dumps(stamped(record), indent=2) + "\n")


def load_quantized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Quantize the float skeleton ``model`` in place with a checkpoint's weights; return it.

    ``model`` must be built the same way as the model that was exported (its float weights do
    not matter: every quantized layer's weights come from the checkpoint). The backend is the
    one ``plan.json`` names.

    Raises:
        DataError: If the folder lacks the checkpoint files.
        PlanError: If they name layers the model lacks.
    """
    from quide_search.backends import get_backend

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            f"a quantized checkpoint must be a folder, but {str(folder)!r} is not one. "
            "Export one with `quide-search export --checkpoint --out DIR`."
        )
    backend = DEFAULT_BACKEND
    plan_file = folder / PLAN_FILE
    if plan_file.is_file():
        backend = str(json.loads(plan_file.read_text(encoding="utf-8")).get("backend", backend))
    return get_backend(backend).load(model, folder)
