"""The analytic latency model: hand-computed estimates, and deterministic T in a study."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quide_search.errors import ConfigError
from quide_search.latency_model import (
    PROFILES,
    estimate_ms,
    layer_shapes,
    layer_weight_bytes,
    profile,
)
from quide_search.plan import BitPlan
from quide_search.quantize import apply_plan


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16))


@pytest.mark.parametrize(("qtype", "weight_bytes"), [("none", 4160), ("qint8", 1160)])
def test_estimate_matches_hand_computation(qtype: str, weight_bytes: int) -> None:
    net = _net()
    example = torch.zeros(3, 64)
    shapes = layer_shapes(net, example)
    assert [(s.name, s.macs, s.input_elems, s.output_elems) for s in shapes] == [
        ("0", 64 * 16, 64, 16)
    ]
    plan = BitPlan(model="m", dataset="d", layers={"0": qtype})
    model = apply_plan(net, plan) if qtype != "none" else net
    device = profile("cpu-epyc-2c")
    # The layer's stored bytes, as in test_quantize: int8 data, scales, bias, activation scales.
    moved = weight_bytes + 3 * (64 + 16) * device.activation_bytes
    memory = moved / (device.bandwidth_gbps * 1e9)
    compute = 2 * 64 * 16 * 3 / (device.peak_gflops * 1e9)
    expected = (max(memory, compute) + device.layer_overhead_us * 1e-6) * 1e3
    weights = layer_weight_bytes(model, shapes)
    assert weights == {"0": weight_bytes}
    assert estimate_ms(weights, shapes, device, 3) == pytest.approx(expected, rel=1e-12)


def test_conv_macs_and_fewer_bits_are_never_slower(digits_task) -> None:  # type: ignore[no-untyped-def]
    example = digits_task.splits.eval.inputs[:1]
    shapes = {s.name: s for s in layer_shapes(digits_task.model, example)}
    assert shapes["conv1"].macs == 8 * 8 * 16 * (1 * 3 * 3)  # output elements x kernel MACs
    assert shapes["fc2"].macs == 64 * 10
    for device in PROFILES.values():
        times = []
        for qtype in ("none", "qint8", "qint4", "qint2"):
            plan = BitPlan.uniform(
                model="simplecnn", dataset="digits", layers=digits_task.layers, qtype=qtype
            )
            model = apply_plan(digits_task.model, plan) if qtype != "none" else digits_task.model
            layers = list(shapes.values())
            times.append(estimate_ms(layer_weight_bytes(model, layers), layers, device, 1))
        assert times == sorted(times, reverse=True), (device.name, times)


def test_unknown_profile_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="Did you mean: 'cpu-epyc-2c'"):
        profile("cpu-epyc-2")
    for device in PROFILES.values():
        assert device.sources and device.bandwidth_gbps > 0 and device.peak_gflops > 0
