"""A causal-LM plan as a transformers model folder, loaded by ``from_pretrained`` alone.

``export --format transformers`` asks the plan's backend for the transformers quantization
config that expresses the plan (torchao: ``TorchAoConfig`` over an ``FqnToConfig`` with each
layer's config), loads the float model with it, checks that the result computes exactly what
the trial's model computes, and saves it with ``save_pretrained`` beside the tokenizer and
``plan.json``. ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` then reloads it
in any process, without quide-search.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, PlanError
from quide_search.files import atomic_write_text, stamped

if TYPE_CHECKING:
    from torch import nn

    from quide_search.protocol import Protocol
    from quide_search.tasks.task import Task

__all__ = ["build_transformers", "check_transformers", "write_transformers"]

RECIPE = """\
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(folder)
"""


def check_transformers(record: dict[str, Any], protocol: Protocol) -> None:
    """Refuse, from the study's records alone, a plan transformers cannot hold.

    Raises:
        ConfigError: If the study's model is not an ``hf:`` causal LM.
        PlanError: If the backend cannot express the plan for transformers.
    """
    from quide_search.backends import get_backend
    from quide_search.plan import BitPlan

    if protocol.task.kind != "causal-lm" or protocol.task.text is None:
        raise ConfigError(
            "--format transformers is for hf: causal language models, but the study's model "
            f"is {protocol.task.model!r}. Use --checkpoint for other models."
        )
    get_backend(protocol.backend).transformers_config(BitPlan.from_dict(record), None)


def build_transformers(record: dict[str, Any], protocol: Protocol, task: Task) -> nn.Module:
    """Return the plan's model as transformers loads it with the backend's config.

    Raises:
        ConfigError: If the study's model is not an ``hf:`` causal LM.
        PlanError: If the backend cannot express the plan for transformers, or the model
            transformers builds does not compute exactly what the trial's model computes.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from quide_search.backends import get_backend
    from quide_search.measure.scorer import apply_as_studied
    from quide_search.plan import BitPlan
    from quide_search.tasks.models.causal_lm import pretrained_source

    check_transformers(record, protocol)
    backend = get_backend(protocol.backend)
    plan = BitPlan.from_dict(record)
    config = backend.transformers_config(plan, task.model)
    path, local = pretrained_source(str((protocol.task.text or {})["path"]))
    dtype = next(task.model.parameters()).dtype
    built = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=config, local_files_only=local
    ).eval()
    trial_model = apply_as_studied(task, protocol, plan)
    probe = task.splits.eval.inputs[:2]
    with torch.no_grad():
        same = torch.equal(built(probe).logits, trial_model(probe).logits)
    if not same:
        raise PlanError(
            "--format transformers must give the trial's outputs, but the model transformers "
            f"builds with {type(config).__name__} differs from it. Use --checkpoint instead."
        )
    return built


def write_transformers(
    model: nn.Module, tokenizer: Any, record: dict[str, Any], folder: Path
) -> None:
    """Write ``save_pretrained``'s files, the tokenizer, ``plan.json`` (with the loading
    recipe) and a README into the empty ``folder``."""
    model.save_pretrained(str(folder))  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    files = sorted(p.name for p in folder.iterdir())
    loading = {"files": files, "recipe": RECIPE, "needs": "folder: this folder's path"}
    record = {**record, "loading": loading}
    atomic_write_text(folder / "plan.json", json.dumps(stamped(record), indent=2) + "\n")
    metrics = record.get("metrics") or {}
    atomic_write_text(
        folder / "README.md",
        f"# Quantized {record['model']} (transformers, {record['backend']} backend)\n\n"
        f"Trial {(record.get('source') or {}).get('trial')} of a quide-search study: "
        f"C = {metrics.get('C')}, P = {metrics.get('P')}. `plan.json` holds the plan, its "
        "metrics and the protocol they were measured under.\n\n"
        f'```python\nfolder = "path/to/this/folder"\n{RECIPE}```\n',
    )
