"""The plan builder: each plan built whole once while kept, the kept ones bounded by memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from quide_search.backends._kinds import BuiltModel, WholeModelBackend
from quide_search.measure.builder import HELD_PER_STORED, PlanBuilder
from quide_search.plan import PRECISIONS, BitPlan

MIB = 2**20


class CountingBackend(WholeModelBackend):
    """Builds a stand-in model whose stored bytes are 1 MiB per quantized layer, plus 1 MiB."""

    name = "counting"

    def __init__(self) -> None:
        self.builds: list[dict[str, str]] = []

    def version(self) -> str:
        return "0"

    def precisions(self, device: torch.device) -> Mapping[str, int]:
        return {"int8": PRECISIONS["int8"]}

    def layer_types(self) -> tuple[type[nn.Module], ...]:
        return (nn.Linear,)

    def build(self, model: nn.Module, plan: BitPlan, *, calibration: torch.Tensor | None = None,
              threads: int | None = None) -> BuiltModel:  # fmt: skip
        wanted = plan.quantized_layers()
        self.builds.append(wanted)
        size = (1 + len(wanted)) * MIB
        return BuiltModel(nn.Identity(), size, dict.fromkeys(("0", "1"), size),
                          {n: "kernel:Fake" for n in wanted})  # fmt: skip

    def layer_profile(
        self, built: BuiltModel, call: Callable[[nn.Module], object], runs: int
    ) -> dict[str, float]:
        return {}

    def quantization_map(self, plan: BitPlan) -> dict[str, Any]:
        return {}

    def save(self, model: nn.Module, folder: Any) -> list[str]:
        return []

    def load(self, skeleton: nn.Module, folder: Any) -> nn.Module:
        return skeleton


def _plan(layers: dict[str, str]) -> BitPlan:
    return BitPlan(model="m", dataset="d", layers=layers, backend="counting")


def test_a_kept_plan_is_not_built_again_and_the_oldest_goes_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = CountingBackend()
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    # Each plan below holds 2 x its bytes here: float 2 MiB, one layer 4 MiB, both 6 MiB.
    monkeypatch.setattr("quide_search.measure.builder.HELD_PER_STORED", 2)
    builder = PlanBuilder(model, backend, ["0", "1"], calibration=None, threads=1, limit_mb=10)
    float_plan, one, both = _plan({}), _plan({"0": "int8"}), _plan({"0": "int8", "1": "int8"})
    assert builder.stored_bytes(float_plan) == MIB and builder.kernel_paths(one) == {
        "0": "kernel:Fake"
    }
    assert builder.assemble(_plan({"0": "int8", "1": "float"})) is not None  # the same as one
    assert (builder.built, builder.hits) == (2, 1) and builder.held_bytes == 6 * MIB
    builder.stored_bytes(both)  # 12 MiB with the others: the float plan, least recent, goes
    assert builder.held_bytes == 10 * MIB and builder.built == 3
    builder.stored_bytes(float_plan)  # built again; `one` goes
    assert builder.built == 4 and len(backend.builds) == 4 and builder.held_bytes == 8 * MIB
    builder.stored_bytes(both)
    assert builder.built == 4  # still kept
    assert builder.baseline_bytes == MIB  # the float plan, kept: no build
    assert builder.built == 4


def test_no_more_than_keep_plans_are_kept() -> None:
    backend = CountingBackend()
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    builder = PlanBuilder(model, backend, ["0", "1"], calibration=None, threads=1, keep=2)
    plans = [_plan({}), _plan({"0": "int8"}), _plan({"1": "int8"})]
    for plan in plans:
        builder.get(plan)
    assert builder.held_bytes == HELD_PER_STORED * 4 * MIB  # the two single-layer plans
    builder.get(plans[0])
    assert builder.built == 4
