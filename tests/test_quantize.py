from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from quide_search.errors import PlanError
from quide_search.plan import BitPlan
from quide_search.quantize import (
    apply_plan,
    dequantized_twin,
    kernel_hazard,
    kernel_paths,
    model_bytes,
    quantizable_layers,
    quantize_layer,
    rebuild_quantized,
)


def _plan(layers: dict[str, str]) -> BitPlan:
    return BitPlan(model="toy", dataset="toy", layers=layers)


# Hand-computed sizes for Linear(64 -> 16, bias). Float: 16*64*4 + 16*4 = 4160 bytes.
# Every quantized layer keeps its fp32 bias (64 B) and quanto's scalar input/output scales (8 B).
#  qint8/qfloat8: 1 byte per weight (1024) + one fp32 scale per output row (64) -> 1160
#  qint4: two weights per byte (512) + per-row fp32 scale (64) and shift (64)      -> 712
#  qint2: four weights per byte (256) + scale (64) + shift (64)                      -> 456
@pytest.mark.parametrize(
    ("qtype", "expected"),
    [("none", 4160), ("qint8", 1160), ("qfloat8", 1160), ("qint4", 712), ("qint2", 456)],
)
def test_model_bytes_match_hand_computed_sizes(qtype: str, expected: int) -> None:
    model = nn.Sequential(nn.Linear(64, 16))
    quantized = apply_plan(model, _plan({"0": qtype}))
    assert model_bytes(quantized) == expected


def test_grouped_int4_counts_one_scale_and_shift_per_group() -> None:
    # in_features 256 > 128, so quanto uses groups of 128: 8 rows * 2 groups = 16 scales/shifts.
    model = nn.Sequential(nn.Linear(256, 8, bias=False))
    quantized = apply_plan(model, _plan({"0": "qint4"}))
    assert model_bytes(quantized) == 8 * 256 // 2 + 16 * 4 + 16 * 4 + 8


def test_tied_tensors_are_counted_once() -> None:
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    model[1].weight = model[0].weight
    assert model_bytes(model) == 8 * 8 * 4


def test_apply_plan_leaves_float_model_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = apply_plan(model, _plan({"0": "qint4", "2": "qint2"}))
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert type(quantized[0]).__name__ == "QConv2d"
    assert quantizable_layers(model) == {"0": 36, "2": 432}


def test_apply_plan_rejects_unknown_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(PlanError, match="not a quantizable layer"):
        apply_plan(model, _plan({"1": "qint8"}))


def test_requantize_from_state_dict_reproduces_outputs() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    plan = _plan({"0": "qint4", "2": "qint8"})
    quantized = apply_plan(model, plan)
    x = torch.randn(5, 32)
    skeleton = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    rebuilt = rebuild_quantized(skeleton, quantized.state_dict(), plan.quantization_map())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), quantized(x))
    assert model_bytes(rebuilt) == model_bytes(quantized)


@pytest.mark.parametrize("qtype", ["qint8", "qint4", "qint2", "qfloat8"])
@pytest.mark.parametrize(
    ("layer", "shapes"),
    [
        (lambda: nn.Linear(200, 48), [(7, 200), (3, 5, 200), (1, 200)]),
        (lambda: nn.Linear(128, 256, bias=False), [(2, 9, 128)]),
        (lambda: nn.Conv2d(3, 16, 3, padding=1), [(4, 3, 8, 8)]),
        (lambda: nn.Conv2d(16, 32, (3, 1), stride=2, groups=4), [(2, 16, 9, 9)]),
    ],
)
def test_dequantized_twin_matches_quanto_bit_for_bit(qtype: str, layer: Any, shapes: Any) -> None:
    torch.manual_seed(0)
    quantized = quantize_layer(layer().eval(), qtype)
    twin = dequantized_twin(quantized)
    assert twin is not None and "quanto" not in type(twin).__module__
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            assert torch.equal(twin(x), quantized(x))


def test_no_twin_where_quanto_runs_a_kernel() -> None:
    # int8 weights with bfloat16 activations run torch's int8 weight-pack matmul on a CPU.
    quantized = quantize_layer(nn.Linear(64, 32).to(torch.bfloat16), "qint8")
    assert kernel_paths(quantized) == {"": "kernel:int8pack"}
    assert dequantized_twin(quantized) is None


def test_int4_on_a_float16_cuda_model_is_refused_before_it_can_crash(digits_task) -> None:  # type: ignore[no-untyped-def]
    from quide_search.config import RunConfig
    from quide_search.errors import ConfigError
    from quide_search.scorer import Scorer
    from quide_search.task import Task

    half = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).half()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert "AWQ" in (kernel_hazard(half, cuda, ("qint8", "qint4")) or "")
    assert kernel_hazard(half, cpu, ("qint4",)) is None
    assert kernel_hazard(half, cuda, ("qint8", "qfloat8")) is None
    assert kernel_hazard(nn.Linear(64, 10).to(torch.bfloat16), cuda, ("qint4",)) is None
    task = Task("half", "digits", half, digits_task.splits, None)
    with pytest.raises(ConfigError, match="leave 4 out of --bits"):
        Scorer.for_config(task, RunConfig(bits=("qint4",)), device=cuda)
