"""What the backends ask of transformers models, without importing transformers."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["conv1d_type", "is_causal_lm", "is_transformers_model"]


def conv1d_type() -> tuple[type[nn.Module], ...]:
    """transformers' ``Conv1D`` (GPT-2's projections: ``x @ W + b`` with ``W`` of shape
    (in, out)) where transformers is already imported (a model of it is), else nothing."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return (conv1d,) if isinstance(conv1d, type) else ()


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (told by its MRO, so that
    transformers is not imported to ask)."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(model).__mro__
    )


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers model that generates text on its own: a decoder
    with ``generate`` (``can_generate()``), not an encoder-decoder."""
    if not is_transformers_model(model):
        return False
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    return (
        callable(can_generate)
        and bool(can_generate())
        and not getattr(config, "is_encoder_decoder", False)
    )
