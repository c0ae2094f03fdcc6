"""Quantized checkpoints: the plan, the quantized weights as safetensors, quanto's map.

The layout is the one optimum-quanto documents for serialising a quantized model::

    DIR/plan.json                the exported plan record (metrics, protocol, source)
    DIR/model.safetensors        the frozen quantized model's state dict
    DIR/quantization_map.json    quanto's quantization map

For a Hugging Face causal LM the directory is written by optimum-quanto's
``QuantizedModelForCausalLM.save_pretrained`` instead (``config.json``, ``model.safetensors``,
``quanto_qmap.json``), so ``QuantizedModelForCausalLM.from_pretrained(DIR)`` reloads it.

and :func:`load_quantized` is ``optimum.quanto.requantize`` on a float skeleton of the model.
A directory is written beside its target and renamed into place, so an interrupted export
leaves the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from quide_search.errors import DataError
from quide_search.plan import atomic_write_text

__all__ = [
    "HF_MAP_FILE",
    "MAP_FILE",
    "PLAN_FILE",
    "WEIGHTS_FILE",
    "load_quantized",
    "save_quantized",
]

PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantization_map.json"
HF_MAP_FILE = "quanto_qmap.json"
"""Name optimum-quanto's transformers wrappers give the map; the checkpoint of a Hugging Face
causal LM is written by ``QuantizedModelForCausalLM.save_pretrained`` (config, weights, map)."""


def save_quantized(model: nn.Module, record: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write a frozen quantized ``model`` and its plan ``record`` as a checkpoint directory."""
    from safetensors.torch import save_file

    from quide_search.quantize import quantization_map_of, save_transformers_quantized

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if _is_transformers_model(model):
            save_transformers_quantized(model, str(staging))
        else:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            atomic_write_text(staging / MAP_FILE, json.dumps(quantization_map_of(model), indent=2))
        atomic_write_text(staging / PLAN_FILE, json.dumps(record, indent=2) + "\n")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _is_transformers_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


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
