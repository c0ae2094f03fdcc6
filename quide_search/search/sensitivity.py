"""Per-layer sensitivity, and the sensitivity-greedy plans that warm-start a search.

Quantizing one layer (or one search group) alone and comparing the outputs with the float
model's on the calibration split (its first :data:`SENSITIVITY_SAMPLES` samples) tells how
much that layer cares about its bits. The KL
divergence of the softmax outputs is smooth where accuracy is coarse, so the greedy allocation
ranks upgrades by it; the accuracy change is recorded beside it for people to read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quide_search.errors import ConfigError, TrialEvaluationError
from quide_search.plan import FLOAT, PRECISIONS, BitPlan, weight_bits

if TYPE_CHECKING:
    import torch

    from quide_search.measure.scorer import Scorer

# torch is imported by the measuring functions only: the report reads a stored table with
# sensitivity_rows, and a reading command does not import torch.

__all__ = [
    "SENSITIVITY_SAMPLES",
    "Sensitivity",
    "greedy_path",
    "greedy_plans",
    "measure_sensitivity",
    "plan_price",
    "plans_on_path",
    "sensitivity_rows",
    "warm_plans",
]

Sensitivity = dict[str, dict[str, dict[str, float]]]
"""search group -> precision -> {"kl": mean KL(float || quantized), "accuracy_change": dP}."""

_CALIB_BATCH = 64

SENSITIVITY_SAMPLES = 128
"""Calibration samples the sensitivity is measured on, at most (the first of the seeded split).

One forward pass per (group, precision) over these samples is most of a study's set-up. The
ranking of groups by KL, which is all the greedy allocation reads, is already stable at 128
samples: on ResNet-18/mnist-5k it costs a quarter of the 500-sample analysis and gives the same
search results (benchmarks/search_cost.py, RESULTS.md)."""


Choices = Sequence[str] | Mapping[str, Sequence[str]]
"""The precisions of a search: the same for every group, or group -> its own (a group whose
layers cannot all run a precision goes without it)."""


def group_choices(precisions: Choices, group: str) -> Sequence[str]:
    """The precisions ``group`` may take under ``precisions``."""
    return precisions[group] if isinstance(precisions, Mapping) else precisions


def measure_sensitivity(
    scorer: Scorer, groups: Mapping[str, Sequence[str]], precisions: Choices
) -> Sensitivity:
    """Quantize each group alone under each of its precisions and compare with the float
    outputs.

    Raises:
        ConfigError: If the task has no calibration split.
        TrialEvaluationError: If a layer fails to quantize or run.
    """
    import torch

    from quide_search.progress import bar

    calib = scorer.task.splits.calib.first(SENSITIVITY_SAMPLES)
    if len(calib) == 0:
        raise ConfigError(
            "sensitivity needs a calibration split, but the task has none. Give the task "
            "calibration data (a custom factory's calib_inputs), or run without it."
        )
    inputs = calib.inputs.to(scorer.device)
    labels = calib.labels.to(scorer.device)
    reference = _log_probs(scorer.model, inputs)
    score = _scoring(scorer, inputs, labels)
    float_score = score(scorer.model, reference)
    table: Sensitivity = {}
    desc = f"sensitivity: each layer group quantized alone, on {len(calib)} calibration samples"
    for group, names in bar(groups.items(), desc, total=len(groups), unit="group"):
        row = {}
        for precision in group_choices(precisions, group):
            if precision == FLOAT:
                continue
            plan = BitPlan(
                model=scorer.task.model_name,
                dataset=scorer.task.dataset_name,
                layers={n: (precision if n in names else FLOAT) for n in scorer.weight_counts},
                backend=scorer.backend.name,
            )
            model = scorer.cache.assemble(plan)
            quantized = _log_probs(model, inputs)
            change = score(model, quantized) - float_score
            kl = torch.nn.functional.kl_div(
                quantized.flatten(0, -2), reference.flatten(0, -2), log_target=True,
                reduction="batchmean",
            )  # fmt: skip
            row[precision] = {"kl": max(0.0, float(kl)), "accuracy_change": change}
        table[group] = row
    return table


def _log_probs(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    import torch

    from quide_search.measure.evaluator import logits_of

    parts = []
    try:
        with torch.no_grad():
            for start in range(0, inputs.shape[0], _CALIB_BATCH):
                logits = logits_of(model(inputs[start : start + _CALIB_BATCH])).float()
                parts.append(torch.log_softmax(logits, dim=-1))
    except Exception as e:  # forward may raise anything
        raise TrialEvaluationError(
            f"sensitivity forward pass failed: {type(e).__name__}: {e}"
        ) from e
    out = torch.cat(parts)
    if not torch.isfinite(out).all():
        # A layer that overflows is as sensitive as can be; keep the number finite.
        out = torch.nan_to_num(out, nan=-1e4, posinf=0.0, neginf=-1e4)
    return out


def _scoring(
    scorer: Scorer, inputs: torch.Tensor, labels: torch.Tensor
) -> Callable[[torch.nn.Module, torch.Tensor], float]:
    """Return P on the calibration split: top-1 accuracy, or the task's own score function."""
    import torch

    task_score = scorer.task.score
    if task_score is not None:

        def own(model: torch.nn.Module, log_probs: torch.Tensor) -> float:
            with torch.no_grad():
                return float(task_score(model, inputs, labels))

        return own

    def accuracy(model: torch.nn.Module, log_probs: torch.Tensor) -> float:
        return int((log_probs.argmax(dim=-1) == labels).sum()) / labels.numel()

    return accuracy


def greedy_path(
    sensitivity: Mapping[str, Mapping[str, Mapping[str, float]]],
    weights: Mapping[str, int],
    precisions: Choices,
    *,
    price: Callable[[Mapping[str, str]], float] | None = None,
) -> list[dict[str, str]]:
    """Return the plans (group -> precision) of a greedy bit allocation, fewest bits first.

    It starts with every group at its fewest bits, then repeatedly makes the upgrade that
    removes the most KL per unit of price, until every group holds its most bits. Float
    (``none``) counts as 32 bits and has KL 0.

    Args:
        sensitivity: From :func:`measure_sensitivity`.
        weights: group -> weight elements it holds.
        precisions: The choices (each group's own, or the same for all).
        price: What a plan costs (lower is better); default its total weight bits. With a
            latency table, :func:`plan_price` also counts T, so an upgrade that makes the
            model both more accurate and faster is free and comes first.
    """

    def kl(group: str, q: str) -> float:
        return 0.0 if q == FLOAT else float(sensitivity[group][q]["kl"])

    def total_bits(plan: Mapping[str, str]) -> float:
        return float(sum(weight_bits(q) * max(weights[g], 1) for g, q in plan.items()))

    cost = price or total_bits
    order = {g: sorted(group_choices(precisions, g), key=weight_bits) for g in weights}
    current = {g: min(order[g], key=lambda q, g=g: (weight_bits(q), kl(g, q))) for g in weights}  # type: ignore[misc]
    path = [dict(current)]
    while True:
        moves = []
        for g in weights:
            for q in order[g]:
                if weight_bits(q) <= weight_bits(current[g]):
                    continue
                gain = kl(g, current[g]) - kl(g, q)
                extra = cost({**current, g: q}) - cost(current)
                ratio = gain / extra if extra > 0 else float("inf") if gain >= 0 else -1e30
                moves.append((ratio, gain, -weight_bits(q), g, q))
        if not moves:
            return path
        *_, group, precision = max(moves)
        current[group] = precision
        path.append(dict(current))


def plan_price(
    layer_bytes: Mapping[str, Mapping[str, int]],
    other_bytes: int,
    groups: Mapping[str, Sequence[str]],
    latency_ms: Callable[[Mapping[str, str]], float] | None = None,
) -> Callable[[Mapping[str, str]], float]:
    """Return a plan's price for :func:`greedy_path`: -log of its I before P is known.

    I = C * P / log2(T + 1) with C = float bytes / stored bytes; for a fixed P, maximising
    I means minimising log(stored bytes) + log(log2(T + 1)). Without ``latency_ms`` the price
    is log(stored bytes) alone.

    Args:
        layer_bytes: layer -> precision -> the stored bytes of that layer.
        other_bytes: Stored bytes of everything that is never quantized.
        groups: search group -> its layers.
        latency_ms: Predicted T of a per-layer plan (a latency table's ``predict``).
    """

    def price(plan: Mapping[str, str]) -> float:
        layers = {name: plan[g] for g, names in groups.items() for name in names}
        stored = other_bytes + sum(layer_bytes[n][q] for n, q in layers.items())
        if latency_ms is None:
            return math.log(stored)
        return math.log(stored) + math.log(math.log2(latency_ms(layers) + 1.0))

    return price


def greedy_plans(
    sensitivity: Mapping[str, Mapping[str, Mapping[str, float]]],
    weights: Mapping[str, int],
    precisions: Sequence[str],
    *,
    budgets: int = 5,
    price: Callable[[Mapping[str, str]], float] | None = None,
) -> list[dict[str, str]]:
    """Return sensitivity-greedy plans at ``budgets`` average-bit budgets, distinct, not uniform.

    The budgets are spread between the fewest and the most quantized bits of the choices;
    each plan is the last one on the greedy path whose weighted average bits stays within its
    budget.
    """
    return plans_on_path(
        greedy_path(sensitivity, weights, precisions, price=price),
        weights,
        precisions,
        budgets=budgets,
    )


def plans_on_path(
    path: Sequence[Mapping[str, str]],
    weights: Mapping[str, int],
    precisions: Choices,
    *,
    budgets: int = 5,
) -> list[dict[str, str]]:
    """Return the plans of :func:`greedy_plans` taken from an already computed greedy path."""
    total = sum(max(n, 1) for n in weights.values())

    def average(plan: Mapping[str, str]) -> float:
        return sum(weight_bits(plan[g]) * max(n, 1) for g, n in weights.items()) / total

    every = {q for g in weights for q in group_choices(precisions, g)}
    quantized = [PRECISIONS[q] for q in every if q != FLOAT]
    low, high = min(quantized), max(quantized)
    levels = [low + (high - low) * i / (budgets + 1) for i in range(1, budgets + 1)]
    if FLOAT in every:  # a few float layers on top of the most quantized bits
        levels += [high + 0.5, high + 2.0]
    plans: list[dict[str, str]] = []
    for budget in levels:
        within = [p for p in path if average(p) <= budget + 1e-9]
        plan = dict(within[-1] if within else path[0])
        if plan not in plans and len(set(plan.values())) > 1:
            plans.append(plan)
    return plans


def sensitivity_rows(
    sensitivity: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    """Return one row per (group, precision), most sensitive first, for tables and JSON."""
    rows = [
        {"group": g, "precision": q, "kl": v["kl"], "accuracy_change": v["accuracy_change"]}
        for g, row in sensitivity.items()
        for q, v in row.items()
    ]
    return sorted(rows, key=lambda r: -r["kl"])


def _table_prediction(scorer: Scorer) -> Callable[[Mapping[str, str]], float] | None:
    """T from the study's latency table, if T comes from one (None: bytes alone price plans)."""
    source = scorer.latency
    if source.predicted_ms({}) is None:
        return None

    def predict(layers: Mapping[str, str]) -> float:
        value = source.predicted_ms(layers)
        assert value is not None  # a source that predicts one plan predicts all
        return value

    return predict


def warm_plans(
    scorer: Scorer,
    groups: Mapping[str, Sequence[str]],
    precisions: Choices,
    sensitivity: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return the warm-start plans (group -> precision) at bit budgets, and the whole greedy path.

    Plans are priced by their predicted I without P: exact stored bytes, and, with a latency
    table (``--latency table``), T from it. With T measured per trial or modelled, the price is
    the stored bytes alone, so the queue never depends on timing noise and repeats exactly.
    """
    counts = scorer.weight_counts
    weights = {g: sum(counts[n] for n in names) for g, names in groups.items()}
    every = list(dict.fromkeys(q for g in groups for q in group_choices(precisions, g)))
    sizes, rest = scorer.layer_bytes(every)
    price = plan_price(sizes, rest, groups, _table_prediction(scorer))
    path = greedy_path(sensitivity, weights, precisions, price=price)
    return plans_on_path(path, weights, precisions), path
