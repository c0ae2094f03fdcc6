"""The analytic estimate: hand-computed values, conv MACs, fewer bits never slower."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quide_search.backends import get_backend, model_bytes
from quide_search.errors import ConfigError
from quide_search.latency import PROFILES, parse_source
from quide_search.latency._probe import layer_shapes
from quide_search.latency.analytic import estimate_ms
from quide_search.latency.profiles import profile
from quide_search.plan import BitPlan

QUANTO = get_backend("quanto")


@pytest.mark.parametrize(("precision", "weight_bytes"), [("float", 4160), ("int8", 1160)])
def test_estimate_matches_hand_computation(precision: str, weight_bytes: int) -> None:
    net = nn.Sequential(nn.Linear(64, 16))
    shapes = layer_shapes(net, torch.zeros(3, 64), ["0"])
    assert [(s.name, s.macs, s.input_elems, s.output_elems) for s in shapes] == [
        ("0", 64 * 16, 64, 16)
    ]
    model = QUANTO.apply(net, BitPlan(model="m", dataset="d", layers={"0": precision}))
    device = profile("cpu-epyc-2c")
    # The layer's stored bytes, as in test_quanto: int8 data, scales, bias, activation scales.
    moved = weight_bytes + 3 * (64 + 16) * device.activation_bytes
    memory = moved / (device.bandwidth_gbps * 1e9)
    compute = 2 * 64 * 16 * 3 / (device.peak_gflops * 1e9)
    expected = (max(memory, compute) + device.layer_overhead_us * 1e-6) * 1e3
    assert model_bytes(model[0]) == weight_bytes
    assert estimate_ms({"0": weight_bytes}, shapes, device, 3) == pytest.approx(
        expected, rel=1e-12
    )


def test_a_transformers_conv1d_does_the_work_of_its_linear() -> None:
    from transformers.pytorch_utils import Conv1D

    shapes = layer_shapes(nn.Sequential(Conv1D(16, 64)), torch.zeros(3, 5, 64), ["0"])
    assert [(s.macs, s.input_elems, s.output_elems) for s in shapes] == [
        (5 * 64 * 16, 5 * 64, 5 * 16)
    ]


def test_conv_macs_and_fewer_bits_are_never_slower(toy_scorer) -> None:  # type: ignore[no-untyped-def]
    layers = list(toy_scorer.weight_counts)
    shapes = {s.name: s for s in layer_shapes(toy_scorer.model, toy_scorer.target.example, layers)}
    assert shapes["conv"].macs == 8 * 8 * 4 * (1 * 3 * 3)  # output elements x kernel MACs
    assert shapes["fc2"].macs == 16 * 4
    for device in PROFILES.values():
        times = [
            estimate_ms(toy_scorer.cache.layer_bytes(toy_scorer.uniform_plan(p)),
                        list(shapes.values()), device, 1)
            for p in ("float", "int8", "int4", "int2")
        ]  # fmt: skip
        assert times == sorted(times, reverse=True), (device.name, times)


def test_sources_and_profiles_are_checked_without_torch() -> None:
    assert parse_source("model:gpu-h100-sxm") == ("model", "gpu-h100-sxm")
    assert parse_source("table:saved.json") == ("table", "saved.json")
    assert parse_source("auto") == ("auto", None)
    with pytest.raises(ConfigError, match="Did you mean: 'cpu-epyc-2c'"):
        parse_source("model:cpu-epyc-2")
    for bad in ("measured:x", "guess", "table:", "model:"):
        with pytest.raises(ConfigError, match="--latency must be 'auto', 'measured'"):
            parse_source(bad)
    for device in PROFILES.values():
        assert device.sources and device.bandwidth_gbps > 0 and device.peak_gflops > 0
