"""Task score P of a model on a fixed split: top-1 accuracy, in batches, without autograd.

The evaluator knows nothing of Optuna; it turns the faults a trial can hit (non-finite outputs,
out-of-memory, errors inside forward) into :class:`TrialEvaluationError` so the study can record
them as failed trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from quide_search.data import Split
from quide_search.errors import ConfigError, TrialEvaluationError

__all__ = ["Evaluator"]


@dataclass(frozen=True)
class Evaluator:
    """Top-1 accuracy on one split, prepared on the device once.

    Attributes:
        inputs: All inputs of the split, already on the device.
        labels: Their labels, on the device.
        batch_size: Samples per forward pass.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval batch size must be >= 1, but got {self.batch_size}.")
        if self.inputs.shape[0] != self.labels.shape[0] or self.labels.shape[0] == 0:
            raise ConfigError(
                "inputs and labels must have the same, non-zero length, but got "
                f"{self.inputs.shape[0]} and {self.labels.shape[0]}."
            )

    @classmethod
    def from_split(cls, split: Split, *, device: torch.device, batch_size: int = 256) -> Evaluator:
        """Move a split to ``device`` once and wrap it."""
        return cls(split.inputs.to(device), split.labels.to(device), batch_size)

    @property
    def samples(self) -> int:
        """Number of samples one evaluation scores."""
        return int(self.labels.shape[0])

    def accuracy(self, model: nn.Module) -> float:
        """Return the fraction of labels whose arg-max prediction equals the label.

        Raises:
            TrialEvaluationError: If forward fails, runs out of memory, or yields NaN or inf.
        """
        return self.evaluate(model)[0]

    def evaluate(self, model: nn.Module) -> tuple[float, float | None]:
        """Return top-1 accuracy, and perplexity when the labels are token sequences.

        For a classifier each sample has one label; for a causal LM each eval window has one
        label per position (the next token), and accuracy counts every position.

        Raises:
            TrialEvaluationError: If forward fails, runs out of memory, or yields NaN or inf.
        """
        correct, nll = 0, 0.0
        try:
            with torch.no_grad():
                for start in range(0, self.samples, self.batch_size):
                    logits = _logits(model(self.inputs[start : start + self.batch_size]))
                    if not torch.isfinite(logits).all():
                        raise TrialEvaluationError(
                            "model output contains NaN or inf; the plan is numerically unusable"
                        )
                    batch = self.labels[start : start + self.batch_size]
                    correct += int((logits.argmax(dim=-1) == batch).sum())
                    if batch.dim() > 1:
                        nll += float(
                            torch.nn.functional.cross_entropy(
                                logits.flatten(0, -2).float(), batch.flatten(), reduction="sum"
                            )
                        )
        except TrialEvaluationError:
            raise
        except torch.cuda.OutOfMemoryError as e:
            raise TrialEvaluationError(f"out of GPU memory during evaluation: {e}") from e
        except MemoryError as e:
            raise TrialEvaluationError(f"out of memory during evaluation: {e}") from e
        except Exception as e:  # forward may raise anything; the trial fails, not the run
            raise TrialEvaluationError(
                f"forward pass failed during evaluation: {type(e).__name__}: {e}"
            ) from e
        total = int(self.labels.numel())
        perplexity = math.exp(nll / total) if self.labels.dim() > 1 else None
        return correct / total, perplexity


def _logits(output: object) -> torch.Tensor:
    # Hugging Face models return an object with .logits; plain modules return the tensor.
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise TrialEvaluationError(
            f"model forward must return a tensor of logits, but returned {type(output).__name__}"
        )
    return logits
