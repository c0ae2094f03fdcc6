"""The onnxruntime backend: settings from the CPU's flags, layers found in the graph, real
kernels checked, and whole-model scoring through the scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import protocol_for
from fakes import FakeLatency
from onnx import numpy_helper
from torch import nn

from quide_search.backends import _onnx_graph as graphs
from quide_search.backends.cpu import cpu_flags
from quide_search.backends.onnxruntime import OnnxRuntimeBackend, OrtModel
from quide_search.errors import ConfigError, PlanError, TrialEvaluationError
from quide_search.measure.scorer import Scorer
from quide_search.plan import BitPlan

CPU = torch.device("cpu")
EPYC = ("avx2",)  # an AMD EPYC with AVX2 and no VNNI
XEON = ("avx2", "avx512f", "avx512_vnni", "amx_tile")  # Intel Xeon: VNNI and AMX


class SmallCNN(nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> Linear on 1x12x12 images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 12 * 12, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def _plan(layers: dict[str, str]) -> BitPlan:
    return BitPlan(model="m", dataset="d", layers=layers, backend="onnxruntime")


def test_the_kernel_settings_follow_the_cpus_flags() -> None:
    epyc, xeon = OnnxRuntimeBackend(flags=EPYC), OnnxRuntimeBackend(flags=XEON)
    assert epyc.settings.reduce_range and not xeon.settings.reduce_range
    for backend in (epyc, xeon):
        settings = backend.settings
        assert settings.activations == "uint8" and settings.accuracy_level == 4
        assert settings.int4_symmetric and settings.block_size == 128
    assert xeon.settings_record()["cpu_flags"] == list(XEON)
    assert epyc.settings_record()["chosen"]["reduce_range"] is True


def test_the_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n")
    assert cpu_flags(info) == ("avx2", "avx512f", "avx512_vnni", "amx_tile")
    assert cpu_flags(tmp_path / "missing") == ()  # not Linux: the least capable CPU


def test_the_protocol_records_the_settings(toy_task) -> None:  # type: ignore[no-untyped-def]
    protocol = protocol_for(toy_task, backend="onnxruntime", bits=("w8a8", "int4", "float"))
    assert protocol.backend_settings["chosen"]["reduce_range"] == (not _has_vnni())
    assert protocol.backend_settings["cpu_flags"] == list(cpu_flags())
    # A conv cannot run weight-only int4: left out of its choices, with the reason.
    assert protocol.search.excluded["conv"] == {
        "int4": "ORT's weight-only MatMulNBits runs Linear layers only"
    }


@pytest.mark.parametrize(("flags", "largest"), [(EPYC, 64), (XEON, 127)])
def test_reduce_range_reaches_the_int8_weights(flags: tuple[str, ...], largest: int) -> None:
    backend = OnnxRuntimeBackend(flags=flags)
    built = backend.build(SmallCNN(), _plan({"conv2": "w8a8"}), calibration=_images(32))
    graph = onnx.ModelProto.FromString(built.module.data).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer
               if t.name.endswith("_quantized") and len(t.dims) == 4]  # fmt: skip
    assert len(weights) == 1 and weights[0].dtype == np.int8
    assert int(np.abs(weights[0].astype(np.int32)).max()) == largest


def test_a_plan_runs_real_kernels_on_exactly_its_layers_and_keeps_p() -> None:
    backend, model, x = OnnxRuntimeBackend(), SmallCNN(), _images(64, seed=3)
    built = backend.build(model, _plan({"conv1": "w8a8", "conv2": "w8a8", "fc": "int4"}),
                          calibration=_images(32))  # fmt: skip
    assert built.kernels == {"conv1": "kernel:QLinearConv", "conv2": "kernel:QLinearConv",
                             "fc": "kernel:MatMulNBits"}  # fmt: skip
    with torch.no_grad():
        agree = (built.module(x).argmax(-1) == model(x).argmax(-1)).float().mean()
    assert float(agree) >= 0.9
    # int4 blocks of 128 along 2304 inputs: 10 x 2304 / 2 bytes of weights plus scales.
    assert 10 * 2304 / 2 <= built.layer_bytes["fc"] < 10 * 2304 / 2 * 1.2
    assert 16 * 16 * 9 <= built.layer_bytes["conv2"] < 16 * 16 * 9 * 1.5  # int8 + scales


def test_layers_map_to_their_nodes_in_resnet18() -> None:
    from torchvision.models import resnet18

    from quide_search.backends._ort_build import ExportedModel

    model = resnet18(num_classes=10).eval()
    backend = OnnxRuntimeBackend()
    layers = list(backend.quantizable_layers(model))
    exported = ExportedModel(model, layers, torch.rand(1, 3, 32, 32), backend.settings)
    assert exported.unmapped == {} and list(exported.nodes) == layers
    node = exported.nodes["layer2.0.downsample.0"]
    assert (node.node, node.op) == ("/layer2/layer2.0/downsample/downsample.0/Conv", "Conv")
    assert exported.nodes["fc"].op == "Gemm"


def test_a_scope_name_is_walked_down_the_module_tree() -> None:
    modules = {"layer2", "layer2.0", "layer2.0.downsample", "layer2.0.downsample.0", "relu"}
    assert graphs.layer_of("/layer2/layer2.0/downsample/downsample.0/Conv", modules) == (
        "layer2.0.downsample.0"
    )
    assert graphs.layer_of("/relu/Relu", modules) == "relu"
    assert graphs.layer_of("/Flatten", modules) is None
    assert graphs.layer_of("/nowhere/Conv", modules) is None


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.relu(self.shared(x))))


def test_a_layer_without_a_node_of_its_own_is_reported_not_dropped() -> None:
    backend, model, x = OnnxRuntimeBackend(), CalledTwice().eval(), torch.rand(16, 8)
    unfit = backend.unfit_layers(model, CPU, ("w8a8", "int8", "float"), ["shared", "out"],
                                 example=x[:1])  # fmt: skip
    assert set(unfit) == {"shared"} and set(unfit["shared"]) == {"w8a8", "int8"}
    assert "called 2 times" in unfit["shared"]["w8a8"]
    with pytest.raises(PlanError, match="layer shared cannot be quantized .* called 2 times"):
        backend.build(model, _plan({"shared": "w8a8"}), calibration=x)
    assert set(backend.build(model, _plan({"out": "int8"}), calibration=x).kernels) == {"out"}


def test_weight_only_on_a_convolution_is_refused_with_the_reason() -> None:
    with pytest.raises(PlanError, match="conv1 is a convolution.*MatMulNBits"):
        OnnxRuntimeBackend().build(SmallCNN(), _plan({"conv1": "int4"}), calibration=_images(8))


def test_a_planned_layer_ort_leaves_in_float_fails_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(graphs, "LOW_BIT_OPS", frozenset({"MatMulNBits"}))  # as if unfused
    with pytest.raises(TrialEvaluationError, match="left layer conv2 \\(w8a8\\) in float"):
        OnnxRuntimeBackend().build(SmallCNN(), _plan({"conv2": "w8a8"}), calibration=_images(8))


def test_int2_fp8_and_the_gpu_are_refused_with_the_reason() -> None:
    backend = OnnxRuntimeBackend()
    assert {"int2", "fp8", "w4a8"} <= set(backend.refusals(CPU))
    with pytest.raises(PlanError, match="'int2' is not among them"):
        backend.check_precisions(("int2",), CPU)
    assert backend.precisions(torch.device("cuda")) == {}
    with pytest.raises(ConfigError, match="--device must be cpu"):
        backend.default_bits(torch.device("cuda"))


def test_the_scorer_builds_each_plan_whole_and_scores_it_in_the_session(toy_task) -> None:  # type: ignore[no-untyped-def]
    protocol = protocol_for(toy_task, backend="onnxruntime", bits=("w8a8", "int8", "float"))
    scorer = Scorer.build(toy_task, protocol, device=CPU, latency=FakeLatency())
    plan = scorer.uniform_plan("w8a8")
    measured = scorer.measure(plan)
    model = scorer.cache.assemble(plan)
    assert isinstance(model, OrtModel)
    with torch.no_grad():
        kept = model(toy_task.splits.eval.inputs).argmax(-1) == toy_task.splits.eval.labels
    assert pytest.approx(float(kept.float().mean())) == measured.P
    assert measured.kernel_layers == ["conv", "fc1", "fc2"] and measured.fallback_layers == []
    assert measured.stored_bytes < scorer.baseline_bytes
    float_plan = scorer.measure(scorer.float_plan())
    assert float_plan.P == 1.0 and float_plan.stored_bytes == scorer.baseline_bytes


def _has_vnni() -> bool:
    return any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni", "amx_tile"))


class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fft.rfft(x, n=14).abs())


def test_a_model_that_cannot_be_exported_gets_one_line_naming_the_operator(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError) as caught:
        OnnxRuntimeBackend().unfit_layers(Spectral().eval(), CPU, ("w8a8",), ["fc"],
                                          example=torch.rand(1, 8))  # fmt: skip
    message = str(caught.value)
    assert "\n" not in message and "'aten::fft_rfft'" in message
    assert message.endswith("Use --backend quanto or torchao for this model.")
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's dump is silenced


def test_a_study_resumes_on_a_cpu_that_chooses_the_same_kernels_only(toy_task) -> None:  # type: ignore[no-untyped-def]
    protocol = protocol_for(toy_task, backend="onnxruntime", bits=("w8a8", "float"))
    mine = OnnxRuntimeBackend().settings
    # AVX-512F toggled: other flags, the same VNNI (or none), the same kernels.
    toggled = tuple(f for f in mine.cpu_flags if f != "avx512f")
    if toggled == mine.cpu_flags:
        toggled += ("avx512f",)
    same = OnnxRuntimeBackend(flags=toggled).settings_record()
    assert same["cpu_flags"] != list(mine.cpu_flags)
    protocol.check_fields({"backend_settings": same}, study="s")
    other = OnnxRuntimeBackend(flags=EPYC if not mine.reduce_range else XEON)
    with pytest.raises(ConfigError, match="needs the same backend_settings.chosen .*reduce_range"):
        protocol.check_fields({"backend_settings": other.settings_record()}, study="s")


def test_an_untrained_resnet18_runs_every_layer_in_int8(capfd: pytest.CaptureFixture[str]) -> None:
    """Its batch norms fold into equal biases, which the exporter shares through Identity
    nodes; each layer gets its own copy, or ORT leaves all but one unfused."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    backend = OnnxRuntimeBackend()
    layers = list(backend.quantizable_layers(model))
    built = backend.build(model, _plan(dict.fromkeys(layers, "w8a8")),
                          calibration=torch.rand(8, 3, 32, 32))  # fmt: skip
    assert set(built.kernels) == set(layers)
    assert sum(k == "kernel:QLinearConv" for k in built.kernels.values()) == 20
    # Each layer's int8 weight is counted as its own: one byte per weight, at least.
    for name in layers:
        weights = model.get_submodule(name).weight.numel()
        assert weights <= built.layer_bytes[name] < 1.2 * weights + 4096, name


def test_the_default_bits_follow_the_activations_asked() -> None:
    from quide_search.plan import with_activations

    backend = OnnxRuntimeBackend()
    assert backend.default_bits(CPU) == ("w8a8", "int8", "int4", "float")
    for activations, expected in ((("int8",), ("w8a8", "float")),
                                  (("none", "int8"), ("int8", "w8a8", "float"))):  # fmt: skip
        paired = with_activations(backend.default_bits(CPU, activations), activations)
        assert paired == expected
        backend.check_precisions(paired, CPU)  # every one is offered
    with pytest.raises(ConfigError, match="--activations must be none or int8"):
        backend.default_bits(CPU, ("fp8",))


def test_a_layer_left_with_nothing_is_told_what_it_can_run() -> None:
    with pytest.raises(ConfigError, match=r"conv1 runs none of int8.*\(w8a8, fp\)"):
        OnnxRuntimeBackend().search_exclusions(SmallCNN(), CPU, ("int8",), ["conv1", "fc"])


def test_a_scope_takes_the_full_path_before_a_shorter_name() -> None:
    modules = {"f", "f.0", "f.0.0", "f.0.1", "f.0.1.0", "f.0.1.1", "f.0.1.1.0"}
    assert graphs.layer_of("/f/f.0/f.0.1/f.0.1.0/Gemm", modules) == "f.0.1.0"
    assert graphs.layer_of("/f/f.0/f.0.1/f.0.1.1/f.0.1.1.0/Gemm", modules) == "f.0.1.1.0"
    assert graphs.layer_of("/f/0/1/0/Gemm", modules) == "f.0.1.0"  # names under the path


def test_a_narrow_linear_takes_a_block_no_wider_than_its_inputs() -> None:
    from quide_search.backends._ort_build import block_size

    assert [block_size(k, 128) for k in (2304, 128, 100, 64, 16, 8)] == [128, 128, 64, 64, 16, 16]
    model = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    built = OnnxRuntimeBackend().build(model, _plan({"0": "int8"}), calibration=torch.rand(8, 16))
    # 16 x 256 int8 weights, one block of 16 per output: far under the float weight's bytes.
    assert 16 * 256 <= built.layer_bytes["0"] < 16 * 256 * 4


def test_an_export_is_shared_until_the_weights_change_in_place() -> None:
    from quide_search.backends.onnxruntime import _EXPORTS

    model, backend = SmallCNN(), OnnxRuntimeBackend()
    first = backend._export(model, _images(1))
    assert OnnxRuntimeBackend()._export(model, _images(4)) is first  # another backend, batch
    with torch.no_grad():
        model.fc.weight.mul_(2)
    second = backend._export(model, _images(1))
    assert second is not first and backend._export(model, _images(1)) is second
    assert [export for _, export in _EXPORTS[model].values()] == [second]  # the old is dropped
