"""In-place assembly from cached quantized layers equals quantizing a fresh copy."""

from __future__ import annotations

import random

import pytest
import torch

from quide_search.assembly import LayerCache
from quide_search.errors import PlanError
from quide_search.plan import BitPlan
from quide_search.quantize import apply_plan, model_bytes

QTYPES = ("none", "qint8", "qint4", "qint2", "qfloat8")


def _random_plans(layers: list[str], count: int, seed: int) -> list[BitPlan]:
    rng = random.Random(seed)
    return [
        BitPlan(model="m", dataset="d", layers={n: rng.choice(QTYPES) for n in layers})
        for _ in range(count)
    ]


def test_assembled_model_equals_a_quantized_copy(digits_task) -> None:  # type: ignore[no-untyped-def]
    model = digits_task.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache = LayerCache(model)
    x = digits_task.splits.eval.inputs[:128]
    for plan in _random_plans(list(digits_task.layers), 12, seed=1):
        copy = apply_plan(model, plan) if plan.quantized_layers() else model
        with torch.no_grad(), cache.assembled(plan) as assembled:
            assert torch.equal(assembled(x), copy(x))
            assert model_bytes(assembled) == model_bytes(copy)
    # The float model is itself again: same modules, same weights.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any("quanto" in type(m).__module__ for m in model.modules())
    # Each (layer, qtype) was quantized at most once.
    assert cache.built <= 4 * 4 and cache.hits > 0


def test_cache_bound_drops_least_recently_used(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = LayerCache(digits_task.model, limit_mb=0.02)  # ~20 KB: fc1 alone is larger in int8
    for plan in _random_plans(list(digits_task.layers), 6, seed=2):
        with cache.assembled(plan):
            pass
        assert cache.cached_bytes <= cache.limit_bytes or len(cache._cache) == 1


def test_failure_inside_restores_the_float_model(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = LayerCache(digits_task.model)
    plan = BitPlan(model="m", dataset="d", layers=dict.fromkeys(digits_task.layers, "qint4"))
    with pytest.raises(RuntimeError), cache.assembled(plan):
        raise RuntimeError("evaluation blew up")
    assert not any("quanto" in type(m).__module__ for m in digits_task.model.modules())
    bad = BitPlan(model="m", dataset="d", layers={"fc9": "qint8"})
    with pytest.raises(PlanError), cache.assembled(bad):
        pass
