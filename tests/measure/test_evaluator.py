"""Early stopping of an evaluation: the exact bound never drops a plan that passes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quide_search.errors import TrialEvaluationError
from quide_search.measure.evaluator import Evaluator


class _Oracle(nn.Module):
    """Returns its input: inputs are the logits, so correctness is chosen by the test."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _evaluator(correct: list[bool], batch_size: int) -> Evaluator:
    labels = torch.zeros(len(correct), dtype=torch.long)
    logits = torch.zeros(len(correct), 3)
    for i, ok in enumerate(correct):
        logits[i, 0 if ok else 1] = 1.0
    return Evaluator(logits, labels, batch_size=batch_size)


@settings(max_examples=200, deadline=None)
@given(
    correct=st.lists(st.booleans(), min_size=1, max_size=300),
    floor=st.floats(0.0, 1.0),
    batch=st.integers(1, 64),
)
def test_exact_stop_only_drops_plans_below_the_floor(
    correct: list[bool], floor: float, batch: int
) -> None:
    evaluator = _evaluator(correct, batch)
    truth = sum(correct) / len(correct)
    result = evaluator.evaluate_until(_Oracle(), floor=floor)
    if result.stopped:
        assert truth < floor
        assert result.samples < result.total == len(correct)
        assert truth <= result.reachable < floor
    else:
        assert result.accuracy == truth
        assert result.samples == len(correct)


def test_a_hopeless_plan_stops_after_few_chunks() -> None:
    evaluator = _evaluator([i % 10 == 0 for i in range(1000)], batch_size=256)
    seen: list[tuple[int, float]] = []
    result = evaluator.evaluate_until(
        _Oracle(), floor=0.95, on_chunk=lambda n, r: seen.append((n, r))
    )
    # 1/40 of 1000 first, then doubling what was seen, up to the batch size.
    assert list(evaluator.chunks())[:6] == [(0, 25), (25, 50), (50, 100), (100, 200), (200, 400),
                                            (400, 656)]  # fmt: skip
    assert list(evaluator.chunks())[-1] == (912, 1000)
    assert result.stopped and result.samples == 100
    # Intermediate values: the best P still reachable after each chunk, never rising.
    assert seen == [(25, 0.978), (50, 0.955), (100, 0.91)]


def test_statistical_stop_is_earlier_than_exact() -> None:
    correct = [i % 10 != 0 for i in range(2000)]  # P = 0.9 against a floor of 0.97
    exact = _evaluator(correct, 256).evaluate_until(_Oracle(), floor=0.97)
    stat = _evaluator(correct, 256).evaluate_until(_Oracle(), floor=0.97, confidence=0.99)
    # Chunks end at 50, 100, 200, 400, 656, 912, ... Exact: 0.1 n errors must exceed
    # 0.03 * 2000, so n > 600: the chunk ending at 656. Hoeffding-Serfling at 99 %:
    # 0.9 + sqrt((1 - 399/2000) ln(100) / 800) = 0.968 < 0.97 at 400 (1.002 at 200).
    assert (exact.samples, stat.samples) == (656, 400)


def test_chunking_gives_the_same_p_with_and_without_a_floor() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    inputs, labels = torch.randn(333, 5), torch.randint(0, 4, (333,))
    evaluator = Evaluator(inputs, labels, batch_size=64)
    full = evaluator.evaluate(model)[0]
    gated = evaluator.evaluate_until(model, floor=0.0)
    assert gated.accuracy == full
    expected = int((model(inputs).argmax(-1) == labels).sum()) / 333
    assert full == expected


def test_hardest_first_keeps_p_and_stops_sooner() -> None:
    torch.manual_seed(1)
    model = nn.Linear(6, 3)
    inputs, labels = torch.randn(400, 6), torch.randint(0, 3, (400,))
    plain = Evaluator(inputs, labels, batch_size=64)
    hard = plain.hardest_first(model)
    assert hard.evaluate(model) == plain.evaluate(model)
    # The float model's wrong samples come first.
    wrong = int((model(inputs).argmax(-1) != labels).sum())
    assert not (model(hard.inputs[:wrong]).argmax(-1) == hard.labels[:wrong]).any()
    floor = plain.evaluate(model)[0] + 0.01  # this model cannot pass
    assert (
        hard.evaluate_until(model, floor=floor).samples
        < plain.evaluate_until(model, floor=floor).samples
    )


def test_p_does_not_depend_on_the_first_chunk() -> None:
    torch.manual_seed(2)
    model = nn.Linear(5, 4)
    inputs, labels = torch.randn(333, 5), torch.randint(0, 4, (333,))
    scores = {
        first: Evaluator(inputs, labels, batch_size=64, first_chunk=first).evaluate(model)
        for first in (1, 7, 64, 1000)
    }
    assert len(set(scores.values())) == 1
    assert Evaluator(inputs, labels, first_chunk=1000).chunk == 256  # capped at the batch


def test_non_finite_logits_fail_the_evaluation_and_huge_finite_ones_do_not() -> None:
    labels = torch.zeros(4, dtype=torch.long)
    for bad in (float("nan"), float("inf"), -float("inf")):
        logits = torch.ones(4, 3)
        logits[2, 1] = bad
        with pytest.raises(TrialEvaluationError, match="NaN or inf"):
            Evaluator(logits, labels).evaluate(_Oracle())
    # Finite, but their sum overflows float32: still a valid score.
    huge = torch.full((4, 3), 3e38)
    huge[:, 0] = 3.1e38
    assert Evaluator(huge, labels).evaluate(_Oracle())[0] == 1.0
