"""The contract every quantization backend keeps, run against each one in BACKENDS.

A new backend is registered in ``quide_search/backends/__init__.py``; this suite then runs on
it with no change (docs/extending.md). Each test names one promise the rest of the package
relies on: the scorer's layer cache, the search's choices, export and evaluate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from quide_search.backends import BACKENDS, QuantBackend, get_backend, model_bytes
from quide_search.backends._kinds import LayerBackend, WholeModelBackend
from quide_search.errors import PlanError
from quide_search.plan import FLOAT, PRECISIONS, BitPlan, activation_precision

CPU = torch.device("cpu")


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> QuantBackend:
    return get_backend(request.param)


def _of_kind(kind: type[QuantBackend]) -> list[str]:
    return [name for name in sorted(BACKENDS) if isinstance(get_backend(name), kind)]


@pytest.fixture(params=_of_kind(LayerBackend))
def layer_backend(request: pytest.FixtureRequest) -> LayerBackend:
    """Each backend that quantizes layer by layer (the scorer's layer cache)."""
    backend = get_backend(request.param)
    assert isinstance(backend, LayerBackend)
    return backend


@pytest.fixture(params=_of_kind(WholeModelBackend))
def whole_backend(request: pytest.FixtureRequest) -> WholeModelBackend:
    """Each backend that builds the whole model for a plan (the scorer's plan builder)."""
    backend = get_backend(request.param)
    assert isinstance(backend, WholeModelBackend)
    return backend


def _calibration() -> torch.Tensor:
    return torch.randn(16, 64, generator=torch.Generator().manual_seed(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    # Shapes every backend's kernels take (int4 packing needs multiples of 32 and 16).
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()


def _weight_only(backend: QuantBackend) -> list[str]:
    return [q for q in backend.precisions(CPU) if activation_precision(q) is None]


def test_it_names_itself_and_its_library_version(backend: QuantBackend) -> None:
    assert backend.name in BACKENDS and get_backend(backend.name).name == backend.name
    assert backend.version()[0].isdigit()
    assert backend.layer_types() and backend.layer_kinds()


def test_its_default_bits_are_among_what_it_offers(backend: QuantBackend) -> None:
    offered = backend.precisions(CPU)
    quantized = [q for q in backend.default_bits(CPU) if q != FLOAT]
    assert quantized and set(quantized) <= set(offered)
    assert all(offered[q] in (8, 4, 2) for q in quantized)


def test_it_refuses_each_precision_it_does_not_offer(backend: QuantBackend) -> None:
    offered = backend.precisions(CPU)
    for precision in (q for q in PRECISIONS if q not in offered and q != FLOAT):
        with pytest.raises(PlanError, match=f"(?s)(?=.*'?{precision}'? )(?=.*{backend.name})"):
            backend.check_precisions((precision,), CPU)
    backend.check_precisions((FLOAT, *offered), CPU)  # what it offers passes


def test_each_weight_only_precision_keeps_the_layers_outputs_and_stores_fewer_bytes(
    layer_backend: LayerBackend,
) -> None:
    backend = layer_backend
    layer = _model()[0]
    x = torch.randn(4, 64)
    with torch.no_grad():
        reference = layer(x)
        for precision in _weight_only(backend):
            quantized = backend.quantize_layer(layer, precision)
            error = (quantized(x) - reference).norm() / reference.norm()
            assert float(error) < 0.5, precision  # quantized, not broken
            assert model_bytes(quantized) < model_bytes(layer), precision
            assert isinstance(backend.kernel_path(quantized), str)
    assert layer.weight.dtype == torch.float32  # the float layer is never changed


def test_a_plan_applied_whole_quantizes_exactly_its_layers(layer_backend: LayerBackend) -> None:
    backend = layer_backend
    model = _model()
    precision = _weight_only(backend)[0]
    plan = BitPlan(model="m", dataset="d", layers={"0": precision, "2": FLOAT},
                   backend=backend.name)  # fmt: skip
    quantized = backend.apply(model, plan)
    assert model_bytes(quantized[0]) < model_bytes(model[0])
    assert model_bytes(quantized[2]) == model_bytes(model[2])  # float stays float
    assert model[0].weight.dtype == torch.float32  # a copy: the float model is left as it was
    assert type(model[0].weight) is nn.Parameter
    assert set(backend.quantization_map(plan)) == {"0"}


def test_every_backend_is_of_one_kind() -> None:
    assert set(_of_kind(LayerBackend)) | set(_of_kind(WholeModelBackend)) == set(BACKENDS)
    assert not set(_of_kind(LayerBackend)) & set(_of_kind(WholeModelBackend))


def test_a_layer_it_cannot_run_is_named_not_dropped(backend: QuantBackend) -> None:
    model = _model()
    layers = list(backend.quantizable_layers(model))
    assert layers == ["0", "2"]
    unfit = backend.unfit_layers(model, CPU, backend.default_bits(CPU), layers)
    assert set(unfit) <= set(layers) and all(isinstance(w, dict) for w in unfit.values())
    assert backend.hazard(model, CPU, _weight_only(backend), layers) is None


def test_a_saved_plan_loads_into_a_float_skeleton(backend: QuantBackend, tmp_path: Path) -> None:
    model = _model()
    plan = BitPlan(model="m", dataset="d", layers={"0": "int8"}, backend=backend.name)
    quantized = backend.apply(model, plan, calibration=_calibration())
    files = backend.save(quantized, tmp_path)
    assert files and all((tmp_path / f).exists() for f in files)
    loaded = backend.load(_model(), tmp_path)
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), quantized(x), atol=1e-5)


def test_a_built_plan_runs_low_bit_kernels_on_exactly_its_layers(
    whole_backend: WholeModelBackend,
) -> None:
    backend, model = whole_backend, _model()
    x = torch.randn(4, 64)
    with torch.no_grad():
        reference = model(x)
    float_built = backend.build(model, _plan(backend, {}), calibration=_calibration())
    assert float_built.kernels == {}
    for precision in backend.precisions(CPU):
        built = backend.build(model, _plan(backend, {"0": precision}), calibration=_calibration())
        assert set(built.kernels) == {"0"} and built.kernels["0"].startswith("kernel:")
        assert built.stored_bytes < float_built.stored_bytes, precision
        assert built.layer_bytes["0"] < float_built.layer_bytes["0"], precision
        assert built.layer_bytes["2"] == float_built.layer_bytes["2"], precision
        with torch.no_grad():
            error = (built.module(x) - reference).norm() / reference.norm()
        assert float(error) < 0.2, precision  # quantized, not broken
    assert model[0].weight.dtype == torch.float32  # the float model is left as it was


def test_a_whole_model_profile_gives_every_layer_a_time(whole_backend: WholeModelBackend) -> None:
    built = whole_backend.build(_model(), _plan(whole_backend, {}), calibration=_calibration())
    example = torch.randn(1, 64)
    times = whole_backend.layer_profile(built, lambda m: m(example), 2)
    assert set(times) == {"0", "2"} and all(ms > 0 for ms in times.values())


def test_a_whole_model_backend_needs_calibration_inputs(whole_backend: WholeModelBackend) -> None:
    with pytest.raises(PlanError, match="calibration"):
        whole_backend.build(_model(), _plan(whole_backend, {}), calibration=None)


def _plan(backend: QuantBackend, layers: dict[str, str]) -> BitPlan:
    return BitPlan(model="m", dataset="d", layers=layers, backend=backend.name)
