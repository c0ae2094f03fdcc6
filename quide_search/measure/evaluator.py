"""Task score P of a model on a fixed split: top-1 accuracy, in batches, without autograd.

The evaluator knows nothing of Optuna; it turns the faults a trial can hit (non-finite outputs,
out-of-memory, errors inside forward) into :class:`TrialEvaluationError` so the study can record
them as failed trials.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.measure.chunking import chunk_bounds, fit_chunking
from quide_search.tasks.data import Split
from quide_search.tasks.task import Task

__all__ = ["EvalResult", "Evaluator", "check_task_runs", "logits_of"]

_MIN_CHUNKS = 40


@dataclass(frozen=True)
class Evaluator:
    """Top-1 accuracy on one split, prepared on the device once.

    Attributes:
        inputs: All inputs of the split, already on the device.
        labels: Their labels, on the device.
        batch_size: Samples per forward pass.
        first_chunk: Samples in the first forward pass; None for 1/40 of the split (see
            :meth:`fit_chunking` for a choice from the measured cost of a call).
        probes: Chunks that double before the rest goes in full batches; None: all do.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int = 256
    first_chunk: int | None = None
    probes: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval batch size must be >= 1, but got {self.batch_size}.")
        if self.first_chunk is not None and self.first_chunk < 1:
            raise ConfigError(f"--eval-chunk must be >= 1, but got {self.first_chunk}.")
        if self.probes is not None and self.probes < 1:
            raise ConfigError(f"eval probes must be >= 1 or None, but got {self.probes}.")
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
        result = self.evaluate_until(model)
        assert result.accuracy is not None
        return result.accuracy, result.perplexity

    @property
    def chunk(self) -> int:
        """Samples in the first forward pass: ``first_chunk``, else 1/40 of the split."""
        if self.first_chunk is None:
            return self.chunk_default
        return max(1, min(self.batch_size, self.samples, self.first_chunk))

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Yield (start, stop) of each forward pass: small first, then doubling.

        Small first chunks let a hopeless plan stop early (with the hardest samples first,
        that is where it shows); doubling keeps the number of passes for a plan that goes the
        distance near log2(40) + 1, not 40; past ``probes`` chunks the rest goes in full
        batches. The chunking is the same whether or not stopping is on, so a plan scores
        the same P either way.
        """
        return chunk_bounds(self.samples, self.batch_size, self.chunk, self.probes)

    def fit_chunking(self, model: nn.Module) -> Evaluator:
        """Return this evaluator with the chunk schedule early stopping can afford.

        Timed on ``model`` (the float model) by :func:`~quide_search.chunking.fit_chunking`.
        The result depends on timings, so a study stores it and every process that joins
        the study uses the stored value.
        """
        first, probes = fit_chunking(
            model, self.inputs, self.batch_size, self.chunk_default, partial(self._chunk, model)
        )
        return dataclasses.replace(self, first_chunk=first, probes=probes)

    def with_chunking(self, first: int, probes: int | None) -> Evaluator:
        """Return this evaluator with a given chunk schedule (a study's stored one)."""
        return dataclasses.replace(self, first_chunk=first, probes=probes)

    @property
    def chunk_default(self) -> int:
        """The first chunk without a fitted or given one: 1/40 of the split."""
        return max(1, min(self.batch_size, math.ceil(self.samples / _MIN_CHUNKS)))

    def evaluate_until(
        self,
        model: nn.Module,
        *,
        floor: float | None = None,
        confidence: float | None = None,
        on_chunk: Callable[[int, float], None] | None = None,
    ) -> EvalResult:
        """Score ``model`` chunk by chunk; stop once P cannot reach ``floor``.

        Without ``confidence`` the stop is exact: it happens only when P stays below ``floor``
        even if every remaining sample were right, so no plan that passes is ever stopped.
        With ``confidence`` (e.g. 0.999) it also stops when a Hoeffding-Serfling upper bound on
        P at that confidence (the seen samples are a uniform draw without replacement from the
        seeded, shuffled split) falls below ``floor``; that can stop a passing plan, with
        probability at most 1 - confidence.

        Args:
            on_chunk: Called after each chunk with the samples seen and the best P still
                reachable (for Optuna's intermediate values).

        Raises:
            TrialEvaluationError: If forward fails, runs out of memory, or yields NaN or inf.
        """
        per_sample = self.labels[0].numel()
        total = self.samples
        correct, nll, seen = 0, 0.0, 0
        try:
            with torch.no_grad():
                for start, stop in self.chunks():
                    hits, loss = self._chunk(model, start, stop)
                    correct, nll, seen = correct + hits, nll + loss, stop
                    reachable = (correct + (total - seen) * per_sample) / (total * per_sample)
                    if on_chunk is not None:
                        on_chunk(seen, reachable)
                    if seen < total and floor is not None:
                        bound = reachable
                        if confidence is not None:
                            bound = min(
                                bound,
                                _upper_bound(
                                    correct / (seen * per_sample), seen, total, confidence
                                ),
                            )
                        if bound < floor:
                            return EvalResult(None, None, seen, total, reachable)
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
        positions = int(self.labels.numel())
        perplexity = math.exp(nll / positions) if self.labels.dim() > 1 else None
        return EvalResult(correct / positions, perplexity, total, total, correct / positions)

    def hardest_first(self, model: nn.Module) -> Evaluator:
        """Return this evaluator with its samples reordered: the float model's least sure first.

        P is a sum over samples, so the order never changes it; but quantization errors
        gather where the float model's margin is small, so a plan that fails the gate shows
        its errors in the first chunks and the exact early stop comes sooner. (The
        statistical bound needs a random order: do not use this with it.)
        """
        margins = []
        with torch.no_grad():
            for start in range(0, self.samples, self.batch_size):
                logits = logits_of(model(self.inputs[start : start + self.batch_size])).float()
                top = logits.softmax(dim=-1).topk(2, dim=-1).values
                margin = top[..., 0] - top[..., 1]
                right = logits.argmax(dim=-1) == self.labels[start : start + self.batch_size]
                # Wrong samples first (negative), then the smallest margins.
                score = torch.where(right, margin, margin - 1.0)
                margins.append(score.flatten(1).mean(dim=1) if score.dim() > 1 else score)
        order = torch.argsort(torch.cat(margins), stable=True)
        return dataclasses.replace(self, inputs=self.inputs[order], labels=self.labels[order])

    def _chunk(self, model: nn.Module, start: int, stop: int) -> tuple[int, float]:
        logits = logits_of(model(self.inputs[start:stop]))
        if not _all_finite(logits):
            raise TrialEvaluationError(
                "model output contains NaN or inf; the plan is numerically unusable"
            )
        batch = self.labels[start:stop]
        hits = int((logits.argmax(dim=-1) == batch).sum())
        if batch.dim() == 1:
            return hits, 0.0
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, -2).float(), batch.flatten(), reduction="sum"
        )
        return hits, float(loss)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation, complete or stopped early.

    Attributes:
        accuracy: P, or None when the evaluation stopped before the end.
        perplexity: For token labels, when complete.
        samples: Samples scored (all of them unless stopped).
        total: Samples in the split.
        reachable: The highest P still possible when it stopped (P itself when complete).
    """

    accuracy: float | None
    perplexity: float | None
    samples: int
    total: int
    reachable: float

    @property
    def stopped(self) -> bool:
        """Whether the evaluation stopped before scoring every sample."""
        return self.accuracy is None


def _all_finite(logits: torch.Tensor) -> bool:
    """Whether no logit is NaN or inf.

    One sum answers for almost every batch (NaN and inf carry into it), at 1/50 of the cost
    of an element-wise check on a language model's logits (0.1 ms against 5 ms for 256 x 64
    x 256 here); only a sum that is not finite, which finite values can also give by
    overflowing, is checked element by element.
    """
    if math.isfinite(float(logits.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(logits).all())


def _upper_bound(mean: float, seen: int, total: int, confidence: float) -> float:
    """Hoeffding-Serfling upper confidence bound on a finite population's mean in [0, 1]."""
    shrink = 1.0 - (seen - 1) / total
    return mean + math.sqrt(shrink * math.log(1.0 / (1.0 - confidence)) / (2.0 * seen))


def logits_of(output: object) -> torch.Tensor:
    """Return the logits tensor of a model's output (a tensor, or an object with .logits)."""
    # Hugging Face models return an object with .logits; plain modules return the tensor.
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise TrialEvaluationError(
            f"model forward must return a tensor of logits, but returned {type(output).__name__}"
        )
    return logits


def check_task_runs(task: Task) -> None:
    """Run the float model on two eval samples; refuse a task it cannot score, at once.

    Called before a study exists, so a factory's wrong input shape or labels the model cannot
    predict is one error, not a traceback and an empty study.

    Raises:
        ConfigError: If the forward takes its input by keyword only, fails, returns no
            logits, or (top-1 accuracy) an eval or test label is not below the model's number
            of outputs.
    """
    keyword = _keyword_only_input(task.model)
    if keyword is not None:
        raise ConfigError(
            f"--model {task.model_name!r} must take its input as the first positional argument "
            f"of forward, as quide-search passes each batch, but its forward takes it by "
            f"keyword only ({keyword}=...). Have the factory return a wrapper module whose "
            f"forward(self, x) returns model({keyword}=x)."
        )
    split = task.splits.eval
    device = next((p.device for p in task.model.parameters()), torch.device("cpu"))
    sample = split.inputs[:2].to(device)
    try:
        with torch.no_grad():
            logits = logits_of(task.model(sample))
    except Exception as e:  # whatever the user's model raises is the message
        raise ConfigError(
            f"--model {task.model_name!r} must run on its eval inputs (shape "
            f"{tuple(split.inputs.shape[1:])} per sample), but its forward raised "
            f"{type(e).__name__}: {e}. Check the model and the inputs its task gives it."
        ) from e
    if task.score is not None or task.kind not in ("classifier", "custom") or not len(split):
        return
    classes = int(logits.shape[-1])
    labels = torch.cat([split.labels.flatten(), task.splits.test.labels.flatten()])
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ConfigError(
            f"eval and test labels must be class indices in [0, {classes - 1}] (the model has "
            f"{classes} outputs), but they range over [{low}, {high}]. Check the task's labels "
            "or the model's last layer."
        )


def _keyword_only_input(model: torch.nn.Module) -> str | None:
    """The name of the keyword-only parameter a forward takes its input by, or None where
    it takes a positional argument (as Hugging Face vision models' ``pixel_values`` can)."""
    import inspect

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a readable signature: try it
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)  # fmt: skip
    if any(p.kind in positional for p in parameters):
        return None
    keywords = [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = [p.name for p in keywords if p.default is inspect.Parameter.empty]
    names = required or [p.name for p in keywords]
    return names[0] if names else None
