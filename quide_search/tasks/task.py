"""A task: a float model with the data it is scored on, ready for trials."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from quide_search.tasks.data import Splits

if TYPE_CHECKING:
    from quide_search.backends import QuantBackend
    from quide_search.tasks.models.custom import ScoreFn

__all__ = ["Task"]


@dataclass(frozen=True)
class Task:
    """A float model, its splits, and where its weights came from.

    Attributes:
        model_name: The ``--model`` it was built from.
        dataset_name: The dataset its splits come from.
        model: The float model, in eval mode, without gradients. Never changed by a trial.
        splits: Train, calibration and eval data.
        weights_path: The file its float weights came from (None: built or downloaded).
        weights_origin: How the float weights were made, machine-independent: ``trained:KEY``
            (trained here on the task's train split; KEY names epochs, seed and recipe),
            ``file`` (``--weights``), ``pretrained:NAME`` (published weights), ``factory``.
        kind: ``classifier``, ``causal-lm``, ``encoder`` or ``custom``.
        exclude: Layers never quantized (a causal LM's ``lm_head`` unless asked).
        decode: For a causal LM: prompt and generated tokens of one timed call, and the pad
            token.
        score: P of a model on inputs and labels, when not top-1 accuracy.
        example: The latency input, when not the first eval sample.
        tokenizer: A transformers model's tokenizer, saved beside its checkpoints.
    """

    model_name: str
    dataset_name: str
    model: nn.Module
    splits: Splits
    weights_path: Path | None
    kind: str = "classifier"
    weights_origin: str = "factory"
    exclude: tuple[str, ...] = ()
    decode: Mapping[str, int] | None = None
    score: ScoreFn | None = None
    example: torch.Tensor | None = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def layers(self, backend: QuantBackend) -> dict[str, int]:
        """Quantizable layer -> weight elements, in module order, without the exclusions."""
        found = backend.quantizable_layers(self.model)
        return {k: v for k, v in found.items() if k not in self.exclude}

    def example_input(self) -> torch.Tensor | None:
        """One model input (a batch of one): the first calibration sample, else the first
        eval sample; None for a task with neither."""
        for split in (self.splits.calib, self.splits.eval):
            if len(split):
                return split.first(1).inputs
        return None

    def decode_record(self) -> dict[str, Any] | None:
        """What one timed call of a causal LM is, as recorded with T; None for other tasks."""
        if self.decode is None:
            return None
        return {
            "prompt_tokens": self.decode["prompt_tokens"],
            "new_tokens": self.decode["new_tokens"],
            "per": "generated token",
        }

    def fingerprint(self) -> str:
        """sha256 over the float model's tensor names, shapes, dtypes and bytes.

        A resume with another model, or the same model with other weights, differs here.
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            data = tensor.detach().to("cpu").contiguous()
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
