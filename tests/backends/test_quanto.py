"""The quanto backend: stored bytes, apply, float twins, save/load, hazards, precisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from quide_search.backends import get_backend, model_bytes
from quide_search.errors import ConfigError, PlanError
from quide_search.plan import BitPlan

QUANTO = get_backend("quanto")


def _plan(layers: dict[str, str]) -> BitPlan:
    return BitPlan(model="toy", dataset="toy", layers=layers)


def test_get_backend_names_the_choices() -> None:
    assert QUANTO.name == "quanto" and QUANTO.version().startswith("0.2")
    message = "--backend must be one of quanto, torchao, onnxruntime, but got 'quant'"
    with pytest.raises(ConfigError, match=message):
        get_backend("quant")
    assert dict(QUANTO.precisions(torch.device("cpu"))) == {
        "int8": 8, "int4": 4, "int2": 2, "fp8": 8,
        "w8a8": 8, "w4a8": 4, "w2a8": 2, "wf8a8": 8, "w8af8": 8, "w4af8": 4, "w2af8": 2,
        "wf8af8": 8,
    }  # fmt: skip
    assert [p for p in QUANTO.precisions(torch.device("cpu")) if QUANTO.calibrated(p)] == [
        "w8a8", "w4a8", "w2a8", "wf8a8", "w8af8", "w4af8", "w2af8", "wf8af8",
    ]  # fmt: skip


# Hand-computed sizes for Linear(64 -> 16, bias). Float: 16*64*4 + 16*4 = 4160 bytes.
# Every quantized layer keeps its fp32 bias (64 B) and quanto's scalar input/output scales (8 B).
#  int8/fp8: 1 byte per weight (1024) + one fp32 scale per output row (64)  -> 1160
#  int4: two weights per byte (512) + per-row fp32 scale (64) and shift (64) -> 712
#  int2: four weights per byte (256) + scale (64) + shift (64)                -> 456
@pytest.mark.parametrize(
    ("precision", "expected"),
    [("float", 4160), ("int8", 1160), ("fp8", 1160), ("int4", 712), ("int2", 456)],
)
def test_model_bytes_match_hand_computed_sizes(precision: str, expected: int) -> None:
    quantized = QUANTO.apply(nn.Sequential(nn.Linear(64, 16)), _plan({"0": precision}))
    assert model_bytes(quantized) == expected


def test_grouped_int4_counts_one_scale_and_shift_per_group() -> None:
    # in_features 256 > 128, so quanto uses groups of 128: 8 rows * 2 groups = 16 scales/shifts.
    model = nn.Sequential(nn.Linear(256, 8, bias=False))
    quantized = QUANTO.apply(model, _plan({"0": "int4"}))
    assert model_bytes(quantized) == 8 * 256 // 2 + 16 * 4 + 16 * 4 + 8


def test_tied_tensors_are_counted_once() -> None:
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    model[1].weight = model[0].weight
    assert model_bytes(model) == 8 * 8 * 4


def test_apply_leaves_the_float_model_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = QUANTO.apply(model, _plan({"0": "int4", "2": "int2"}))
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert type(quantized[0]).__name__ == "QConv2d"
    assert QUANTO.quantizable_layers(model) == {"0": 36, "2": 432}
    with pytest.raises(PlanError, match="not a quantizable layer"):
        QUANTO.apply(model, _plan({"1": "int8"}))


def test_apply_equals_quantos_own_quantize() -> None:
    from optimum.quanto import freeze, qint4, quantize

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    ours = QUANTO.apply(model, _plan({"0": "int4"}))
    theirs = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    theirs.load_state_dict(model.state_dict())
    quantize(theirs, weights=qint4, include=["0"])
    freeze(theirs)
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_save_and_load_reproduce_outputs_and_requantize_reads_the_map(tmp_path: Path) -> None:
    import json

    from optimum.quanto import requantize
    from safetensors.torch import load_file

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    plan = _plan({"0": "int4", "2": "int8"})
    quantized = QUANTO.apply(model, plan)
    assert QUANTO.save(quantized, tmp_path) == ["model.safetensors", "quantization_map.json"]
    qmap = json.loads((tmp_path / "quantization_map.json").read_text())
    assert (
        qmap
        == QUANTO.quantization_map(plan)
        == {
            "0": {"weights": "qint4", "activations": "none"},
            "2": {"weights": "qint8", "activations": "none"},
        }
    )
    x = torch.randn(5, 32)
    rebuilt = QUANTO.load(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)), tmp_path)
    plain = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    requantize(plain, load_file(str(tmp_path / "model.safetensors")), qmap)  # no quide-search
    with torch.no_grad():
        assert torch.equal(rebuilt(x), quantized(x)) and torch.equal(plain(x), quantized(x))
    assert model_bytes(rebuilt) == model_bytes(quantized)


@pytest.mark.parametrize("precision", ["int8", "int4", "int2", "fp8"])
@pytest.mark.parametrize(
    ("layer", "shapes"),
    [
        (lambda: nn.Linear(200, 48), [(7, 200), (3, 5, 200), (1, 200)]),
        (lambda: nn.Conv2d(16, 32, (3, 1), stride=2, groups=4), [(2, 16, 9, 9)]),
    ],
    ids=["linear", "grouped-conv"],
)
def test_float_twin_matches_quanto_bit_for_bit(precision: str, layer: Any, shapes: Any) -> None:
    torch.manual_seed(0)
    quantized = QUANTO.quantize_layer(layer().eval(), precision)
    twin = QUANTO.float_twin(quantized)
    assert twin is not None and not type(twin).__module__.startswith("optimum")
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            assert torch.equal(twin(x), quantized(x))


def test_no_twin_where_quanto_runs_a_kernel() -> None:
    # int8 weights with bfloat16 activations run torch's int8 weight-pack matmul on a CPU.
    quantized = QUANTO.quantize_layer(nn.Linear(64, 32).to(torch.bfloat16), "int8")
    assert QUANTO.kernel_path(quantized) == "kernel:int8pack"
    assert QUANTO.float_twin(quantized) is None


def test_int4_on_a_float16_cuda_model_is_refused_before_it_can_crash(toy_task) -> None:  # type: ignore[no-untyped-def]
    import copy
    import dataclasses

    from conftest import protocol_for

    from quide_search.measure.scorer import Scorer

    half = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).half()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert "AWQ" in (QUANTO.hazard(half, cuda, ("int8", "int4")) or "")
    assert QUANTO.hazard(half, cpu, ("int4",)) is None
    assert QUANTO.hazard(half, cuda, ("int8", "fp8")) is None
    assert QUANTO.hazard(nn.Linear(64, 10).to(torch.bfloat16), cuda, ("int4",)) is None
    task = dataclasses.replace(toy_task, model=copy.deepcopy(toy_task.model).half())
    with pytest.raises(ConfigError, match="leave 4 out of --bits"):
        Scorer.build(task, protocol_for(toy_task, bits=("int4",)), device=cuda)


@pytest.mark.parametrize("precision", ["int8", "int4", "int2", "fp8"])
def test_transformers_conv1d_is_quantized_as_the_linear_with_its_weight_transposed(
    precision: str,
) -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(48, 64)  # 64 inputs -> 48 outputs, weight (64, 48)
    torch.nn.init.normal_(conv.bias)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    assert Conv1D in QUANTO.layer_types()
    assert QUANTO.quantizable_layers(nn.Sequential(conv)) == {"0": 64 * 48}
    ours, theirs = QUANTO.quantize_layer(conv, precision), QUANTO.quantize_layer(linear, precision)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert torch.allclose(ours(x), conv(x), atol=0.5)  # a quantized layer, not another one
    assert model_bytes(ours) == model_bytes(theirs) < model_bytes(conv)
    assert isinstance(conv, Conv1D) and conv.weight.shape == (64, 48)  # the float layer is kept


def test_a_conv1d_checkpoint_reloads_into_a_fresh_conv1d_model(tmp_path: Path) -> None:
    from transformers.pytorch_utils import Conv1D

    def build() -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(Conv1D(16, 32), nn.ReLU(), Conv1D(4, 16))

    quantized = QUANTO.apply(build(), _plan({"0": "int4", "2": "int8"}))
    QUANTO.save(quantized, tmp_path)
    torch.manual_seed(9)
    rebuilt = QUANTO.load(nn.Sequential(Conv1D(16, 32), nn.ReLU(), Conv1D(4, 16)), tmp_path)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), quantized(x))


def test_layers_left_in_float_are_counted_by_kind() -> None:
    model = nn.Sequential(
        nn.Embedding(10, 8), nn.Conv1d(8, 8, 3), nn.ConvTranspose2d(2, 2, 2), nn.ConvTranspose2d(
            2, 2, 2), nn.BatchNorm2d(2), nn.LayerNorm(8), nn.Linear(8, 2), nn.Conv2d(2, 2, 1),
    )  # fmt: skip
    assert QUANTO.float_kinds(model) == {"Embedding": 1, "Conv1d": 1, "ConvTranspose2d": 2}
    assert QUANTO.float_kinds(QUANTO.apply(model, _plan({"6": "int8"}))) == {
        "Embedding": 1, "Conv1d": 1, "ConvTranspose2d": 2,
    }  # fmt: skip
