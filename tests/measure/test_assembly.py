"""Assembly from cached quantized layers equals quantizing a fresh copy, in both views."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from quide_search.backends import get_backend, model_bytes
from quide_search.errors import PlanError
from quide_search.measure.assembly import LayerCache
from quide_search.plan import BitPlan

QUANTO = get_backend("quanto")
PRECISIONS = ("float", "int8", "int4", "int2", "fp8")


def _cache(task, **kwargs) -> LayerCache:  # type: ignore[no-untyped-def]
    return LayerCache(task.model, QUANTO, task.layers(QUANTO), **kwargs)


def _paths(model: nn.Module, layers) -> dict[str, str]:  # type: ignore[no-untyped-def]
    modules = dict(model.named_modules())
    return {n: QUANTO.kernel_path(modules[n]) for n in layers if _is_quanto(modules[n])}


def _random_plans(layers: list[str], count: int, seed: int) -> list[BitPlan]:
    rng = random.Random(seed)
    return [
        BitPlan(model="m", dataset="d", layers={n: rng.choice(PRECISIONS) for n in layers})
        for _ in range(count)
    ]


def _is_quanto(module: nn.Module) -> bool:
    return type(module).__module__.startswith("optimum.quanto")


def test_both_views_equal_a_quantized_copy(digits_task) -> None:  # type: ignore[no-untyped-def]
    model = digits_task.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache = _cache(digits_task)
    x = digits_task.splits.eval.inputs[:128]
    layers = list(digits_task.layers(QUANTO))
    for plan in _random_plans(layers, 12, seed=1):
        copy = QUANTO.apply(model, plan)
        with torch.no_grad():
            expected = copy(x)
            assert torch.equal(cache.assemble(plan)(x), expected)
            exact = cache.assemble(plan, exact=True)
            assert torch.equal(exact(x), expected)
        assert cache.stored_bytes(plan) == model_bytes(exact) == model_bytes(copy)
        assert cache.kernel_paths(plan) == _paths(copy, layers)
    # The float model was never changed: same modules, same weights.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(_is_quanto(m) for m in model.modules())
    # Each (layer, precision) was quantized at most once.
    assert cache.built <= 4 * 4 and cache.hits > 0


def test_evaluation_view_uses_float_twins_where_quanto_falls_back(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = _cache(digits_task)
    layers = digits_task.layers(QUANTO)
    plan = BitPlan(model="m", dataset="d", layers=dict.fromkeys(layers, "int4"))
    assert set(cache.kernel_paths(plan).values()) == {"fallback"}  # float32 on a CPU
    evaluated = dict(cache.assemble(plan).named_modules())
    timed = dict(cache.assemble(plan, exact=True).named_modules())
    for name in layers:
        assert not _is_quanto(evaluated[name]) and _is_quanto(timed[name])
        assert evaluated[name].weight.dtype == torch.float32


def test_a_one_layer_change_swaps_one_layer(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = _cache(digits_task)
    names = list(digits_task.layers(QUANTO))
    base = dict.fromkeys(names, "int8")
    before = dict(cache.assemble(BitPlan(model="m", dataset="d", layers=base)).named_modules())
    changed = BitPlan(model="m", dataset="d", layers={**base, names[1]: "int2"})
    after = dict(cache.assemble(changed).named_modules())
    assert [n for n in names if after[n] is not before[n]] == [names[1]]
    # Back to float: the float model's own layer object is in place again.
    restored = cache.assemble(BitPlan(model="m", dataset="d", layers={}))
    assert all(dict(restored.named_modules())[n] is cache.module(n, "float") for n in names)


def test_a_tied_weight_is_still_stored_by_its_other_owner() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.hidden = nn.Linear(16, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.hidden(self.embed(x)))

    model = Tied().eval()
    cache = LayerCache(model, QUANTO, ["hidden", "head"])
    for layers in ({"head": "int8"}, {"hidden": "int4", "head": "int2"}, {"hidden": "int8"}):
        plan = BitPlan(model="m", dataset="d", layers=layers)
        copy = QUANTO.apply(model, plan)
        assert cache.stored_bytes(plan) == model_bytes(copy)
        x = torch.arange(10).unsqueeze(0)
        with torch.no_grad():
            assert torch.equal(cache.assemble(plan)(x), copy(x))


def test_cache_bound_drops_least_recently_used(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = _cache(digits_task, limit_mb=0.02)  # ~20 KB: fc1 alone is larger in int8
    layers = list(digits_task.layers(QUANTO))
    for plan in _random_plans(layers, 6, seed=2):
        cache.assemble(plan)
        assert cache.cached_bytes <= cache.limit_bytes or len(cache._cache) == 1
    # Dropped layers are rebuilt identically when needed again.
    plan = _random_plans(layers, 1, seed=3)[0]
    x = digits_task.splits.eval.inputs[:32]
    with torch.no_grad():
        assert torch.equal(cache.assemble(plan)(x), QUANTO.apply(digits_task.model, plan)(x))


def test_a_failure_leaves_the_float_model_alone(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = _cache(digits_task)
    layers = digits_task.layers(QUANTO)
    plan = BitPlan(model="m", dataset="d", layers=dict.fromkeys(layers, "int4"))
    with pytest.raises(RuntimeError):
        cache.assemble(plan)
        raise RuntimeError("evaluation blew up")
    assert not any(_is_quanto(m) for m in digits_task.model.modules())
    bad = BitPlan(model="m", dataset="d", layers={"fc9": "int8"})
    with pytest.raises(PlanError):
        cache.assemble(bad)


def test_a_transformers_model_runs_from_its_view(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama[0]).eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    cache = LayerCache(model, QUANTO, layers)
    plan = _random_plans(layers, 1, seed=4)[0]
    tokens = torch.arange(3, 12).unsqueeze(0)
    copy = QUANTO.apply(model, plan)
    with torch.no_grad():
        expected = copy(tokens).logits
        assert torch.equal(cache.assemble(plan)(tokens).logits, expected)
        generated = cache.assemble(plan, exact=True).generate(
            tokens, max_new_tokens=4, do_sample=False, pad_token_id=0
        )
        assert torch.equal(generated, copy.generate(
            tokens, max_new_tokens=4, do_sample=False, pad_token_id=0
        ))  # fmt: skip
    assert not any(_is_quanto(m) for m in model.modules())


def test_layer_bytes_are_what_the_quantized_layers_store(digits_task) -> None:  # type: ignore[no-untyped-def]
    cache = _cache(digits_task)
    layers = list(digits_task.layers(QUANTO))
    for plan in _random_plans(layers, 6, seed=5):
        modules = dict(QUANTO.apply(digits_task.model, plan).named_modules())
        assert cache.layer_bytes(plan) == {n: model_bytes(modules[n]) for n in layers}


def test_no_twins_when_the_model_is_large_next_to_the_bound(digits_task) -> None:  # type: ignore[no-untyped-def]
    bound_mb = 2 * model_bytes(digits_task.model) / 2**20  # the model is half the bound
    cache = _cache(digits_task, limit_mb=bound_mb)
    assert not cache.twins
    layers = digits_task.layers(QUANTO)
    plan = BitPlan(model="m", dataset="d", layers=dict.fromkeys(layers, "int4"))
    evaluated = dict(cache.assemble(plan).named_modules())
    assert all(_is_quanto(evaluated[name]) for name in layers)
    x = digits_task.splits.eval.inputs[:16]
    with torch.no_grad():
        assert torch.equal(cache.assemble(plan)(x), QUANTO.apply(digits_task.model, plan)(x))
    assert _cache(digits_task, limit_mb=4 * bound_mb).twins
