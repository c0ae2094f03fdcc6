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
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from quide_search.errors import DataError
from quide_search.files import atomic_write_text, stamped, write_directory
from quide_search.plan import DEFAULT_BACKEND

__all__ = ["PLAN_FILE", "load_quantized", "save_quantized", "write_checkpoint"]

PLAN_FILE = "plan.json"
README_FILE = "README.md"
_FILE_MODE = 0o644


def save_quantized(
    model: nn.Module,
    record: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
) -> Path:
    """Write a frozen quantized ``model`` and its plan ``record`` as a checkpoint folder.

    Args:
        model: The quantized model (e.g. ``backend.apply(float_model, plan)``).
        record: Its plan record (at least ``backend``, ``model``, ``dataset``, ``layers``).
        out: The folder: new, empty, or an earlier checkpoint.
        tokenizer: A transformers tokenizer to save beside it (``save_pretrained``).

    Raises:
        ConfigError: If ``out`` is a file or a folder quide-search did not write.
    """
    return write_directory(
        out,
        lambda folder: write_checkpoint(model, record, folder, tokenizer=tokenizer),
        kind="checkpoint",
    )


def write_checkpoint(
    model: nn.Module, record: dict[str, Any], folder: Path, *, tokenizer: Any = None
) -> None:
    """Write a checkpoint's files into the existing, empty ``folder``: the backend's files,
    the tokenizer if any, ``plan.json`` and a ``README.md`` saying how to load them."""
    from quide_search.backends import get_backend

    backend = get_backend(str(record.get("backend", DEFAULT_BACKEND)))
    files = backend.save(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    recipe = backend.loading_recipe(model)
    record = {**record, "loading": {"files": files, "recipe": recipe,
                                    "needs": backend.recipe_needs}}  # fmt: skip
    atomic_write_text(folder / PLAN_FILE, json.dumps(stamped(record), indent=2) + "\n")
    atomic_write_text(folder / README_FILE, _readme(record, recipe))
    for path in folder.iterdir():  # some writers create 0600 files; a checkpoint is shared
        path.chmod(_FILE_MODE)


def _readme(record: dict[str, Any], recipe: str | None) -> str:
    """A short README of our own (replacing any a library wrote) on what this folder is."""
    from quide_search.plan import BitPlan

    counts = Counter(BitPlan.from_dict(record).layers.values())
    mix = ", ".join(f"{n} layer{'s' if n > 1 else ''} {p}" for p, n in counts.items())
    metrics = {k: f"{v:.4g}" if isinstance(v, float) else v
               for k, v in record.get("metrics", {}).items()}  # fmt: skip
    source = record.get("source") or {}
    model = record.get("model")
    skeleton = _skeleton_code(str(model), str(record.get("dataset")))
    builds_model = "`model`" not in str(record.get("loading", {}).get("needs", "`model`"))
    alone = (
        "\nWithout quide-search (the recipe in `plan.json`, `loading.recipe`): "
        + (
            ""
            if builds_model
            else "build `model` with your own code for the same architecture "
            "(its weights do not matter: every weight comes from this folder), "
        )
        + f'set `folder = "path/to/this/folder"`, then:\n\n```python\n{recipe.rstrip()}\n```\n'
        if recipe
        else "\nThe backend's own loader cannot rebuild some of these layers (transformers "
        "`Conv1D`, quantized as `nn.Linear`): load it with `load_quantized` as above.\n"
    )
    measured = f"C = {metrics.get('C')}, P = {metrics.get('P')} (search split)"
    if "P_test" in metrics:
        measured += f", P_test = {metrics['P_test']} (held-out test split)"
    if "T_confirmed_ms" in metrics:
        measured += f", T = {metrics['T_confirmed_ms']} ms (confirmed)"
    else:
        measured += f", T = {metrics.get('T_ms')} ms"
    task = (record.get("protocol") or {}).get("task") or {}
    shape = task.get("splits", {}).get("input_shape")
    kind = "int64 token ids" if task.get("kind") == "causal-lm" else "float32"
    inputs = f"\nInputs: {kind}, shape (N, {', '.join(map(str, shape))})." if shape else ""
    return f"""# Quantized {model} ({record.get("backend")} backend)

Written by quide-search from study `{source.get("study")}`, trial {source.get("trial")}:
{mix}. {measured}.
`plan.json` holds the plan, its metrics and the protocol they were measured under.
{inputs}

## Load it

```python
from quide_search import load_quantized
{skeleton}
model = load_quantized(model, "path/to/this/folder")
```
{alone}"""


def _skeleton_code(model: str, dataset: str) -> str:
    """Python that builds the float model the plan was applied to, for the README."""
    if model.startswith("hf:"):
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained({model.removeprefix('hf:')!r})\n"
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")'
        )
    return (
        "from quide_search.tasks import load_task\n"
        f"model = load_task(model={model!r}, dataset={dataset!r}).model  # or your own code"
    )


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
