"""Early stopping of an evaluation: the exact bound never drops a plan that passes."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quide_search.errors import TrialEvaluationError
from quide_search.evaluator import Evaluator


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


class _Costly(nn.Module):
    """The oracle, made slow: ``fixed`` seconds a call plus ``per_sample`` seconds a sample."""

    def __init__(self, fixed: float, per_sample: float) -> None:
        super().__init__()
        self.fixed, self.per_sample = fixed, per_sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.fixed + self.per_sample * x.shape[0])
        return x


def test_first_chunk_grows_when_each_call_has_a_fixed_cost() -> None:
    evaluator = _evaluator([True] * 1000, batch_size=250)
    # A call that costs the same for 25 samples as for 250: chunks would only add calls.
    fitted = evaluator.fit_first_chunk(_Costly(fixed=0.004, per_sample=0.0))
    assert fitted.chunk == 250
    assert list(fitted.chunks()) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    # Calls that cost only their samples: 1/40 first, as without fitting.
    fitted = evaluator.fit_first_chunk(_Costly(fixed=0.0, per_sample=0.0002))
    assert fitted.chunk == evaluator.chunk == 25


def test_fitted_first_chunk_runs_near_full_batch_throughput() -> None:
    evaluator = _evaluator([True] * 1000, batch_size=250)
    # 3 ms a call + 0.1 ms a sample: per sample, 25 samples cost 1.96x a full batch (28 ms
    # for 250), 50 cost 1.43x, 100 cost 1.16x. From 100 a full pass takes 6 calls, 118 ms,
    # against 112 ms in 4 plain calls: within 1.2x.
    fitted = evaluator.fit_first_chunk(_Costly(fixed=0.003, per_sample=0.0001))
    assert fitted.chunk == 100
    assert list(fitted.chunks())[:3] == [(0, 100), (100, 200), (200, 400)]


def test_fitted_chunking_keeps_a_full_pass_within_the_trial_budget() -> None:
    evaluator = _evaluator([True] * 16, batch_size=256)
    # Like a deep model on few samples: 6 ms a call + 1 ms a sample. A first chunk of 8
    # runs at 1.27x a full batch's cost per sample, but its pass (2 calls, 28 ms) costs
    # 1.27x the single plain call (22 ms): over 1.2x, so there is one chunk.
    fitted = evaluator.fit_first_chunk(_Costly(fixed=0.006, per_sample=0.001))
    assert fitted.chunk == 16 and list(fitted.chunks()) == [(0, 16)]


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


@pytest.mark.parametrize("samples", [2, 3, 12, 100, 1000, 1001])
def test_fitting_the_first_chunk_works_for_any_split_size(samples: int) -> None:
    evaluator = _evaluator([True] * samples, batch_size=256)
    fitted = evaluator.fit_first_chunk(_Costly(fixed=0.001, per_sample=0.0))
    # Calls that cost the same whatever their size: one chunk per full batch.
    assert fitted.chunk == min(samples, 256)
    assert fitted.evaluate(_Oracle())[0] == 1.0
