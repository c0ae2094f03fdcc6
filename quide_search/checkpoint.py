"""Quantized checkpoints: the plan, the quantized weights as safetensors, quanto's map.

The layout is the one optimum-quanto documents for serialising a quantized model::

    DIR/plan.json                the exported plan record (metrics, protocol, source)
    DIR/model.safetensors        the frozen quantized model's state dict
    DIR/quantization_map.json    quanto's quantization map

For a Hugging Face causal LM the directory is written by optimum-quanto's
``QuantizedModelForCausalLM.save_pretrained`` instead (``config.json``, ``model.safetensors``,
``quanto_qmap.json``), so ``QuantizedModelForCausalLM.from_pretrained(DIR)`` reloads it.

:func:`load_quantized` is ``optimum.quanto.requantize`` on a float skeleton of the model. A
folder is written beside its target and swapped in whole, so an interrupted export leaves the
old checkpoint or the new one, never a mix; a folder quide-search did not write is never
replaced (see :mod:`quide_search.files`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from quide_search.errors import DataError
from quide_search.files import atomic_write_text, stamped, write_directory

__all__ = [
    "HF_MAP_FILE",
    "MAP_FILE",
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "load_quantized",
    "save_quantized",
    "write_checkpoint",
]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantization_map.json"
HF_MAP_FILE = "quanto_qmap.json"
"""Name optimum-quanto's transformers wrappers give the map; the checkpoint of a Hugging Face
causal LM is written by ``QuantizedModelForCausalLM.save_pretrained`` (config, weights, map)."""


def save_quantized(model: nn.Module, record: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write a frozen quantized ``model`` and its plan ``record`` as a checkpoint folder.

    The folder is written beside ``out`` and swapped in whole (see
    :func:`quide_search.files.write_directory`): ``out`` may be new, empty or an earlier
    checkpoint; a folder holding anything quide-search did not write is refused.

    Raises:
        ConfigError: If ``out`` is a file or a folder quide-search did not write.
    """
    return write_directory(
        out, lambda folder: write_checkpoint(model, record, folder), kind="checkpoint"
    )


def write_checkpoint(model: nn.Module, record: dict[str, Any], folder: Path) -> None:
    """Write a checkpoint's files into the existing, empty ``folder``."""
    from safetensors.torch import save_file

    from quide_search.quantize import quantization_map_of, save_transformers_quantized

    if _is_transformers_model(model):
        save_transformers_quantized(model, str(folder))
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_text(folder / MAP_FILE, json.dumps(quantization_map_of(model), indent=2))
    atomic_write_text(folder / PLAN_FILE, json.dumps(stamped(record), indent=2) + "\n")


def _is_transformers_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def load_quantized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Quantize the float skeleton ``model`` in place with a checkpoint's weights; return it.

    ``model`` must be built the same way as the model that was exported (its float weights do
    not matter: every quantized layer's weights come from the checkpoint).

    Raises:
        DataError: If the directory lacks the checkpoint files.
        PlanError: If the map names layers the model lacks.
    """
    from safetensors.torch import load_file

    from quide_search.quantize import rebuild_quantized

    folder = Path(path)
    map_file = MAP_FILE if (folder / MAP_FILE).is_file() else HF_MAP_FILE
    missing = [n for n in (WEIGHTS_FILE, map_file) if not (folder / n).is_file()]
    if not (folder / map_file).is_file():
        missing[-1] = f"{MAP_FILE} (or {HF_MAP_FILE})"
    if missing:
        raise DataError(
            f"a quantized checkpoint directory must hold {WEIGHTS_FILE} and {MAP_FILE}, but "
            f"{str(folder)!r} lacks {', '.join(missing)}. Export one with "
            "`quide-search export --checkpoint`."
        )
    quantization_map = json.loads((folder / map_file).read_text(encoding="utf-8"))
    state = load_file(str(folder / WEIGHTS_FILE))
    return rebuild_quantized(model, state, quantization_map)
