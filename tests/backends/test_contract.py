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
from quide_search.errors import PlanError
from quide_search.plan import FLOAT, PRECISIONS, BitPlan, activation_precision

CPU = torch.device("cpu")


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> QuantBackend:
    return get_backend(request.param)


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
    assert set(backend.default_bits(CPU)) <= set(offered)
    assert all(bits in (8, 4, 2) for bits in (offered[q] for q in backend.default_bits(CPU)))


def test_it_refuses_each_precision_it_does_not_offer(backend: QuantBackend) -> None:
    offered = backend.precisions(CPU)
    for precision in (q for q in PRECISIONS if q not in offered and q != FLOAT):
        with pytest.raises(PlanError, match=f"(?s)(?=.*'?{precision}'? )(?=.*{backend.name})"):
            backend.check_precisions((precision,), CPU)
    backend.check_precisions((FLOAT, *offered), CPU)  # what it offers passes


def test_each_weight_only_precision_keeps_the_layers_outputs_and_stores_fewer_bytes(
    backend: QuantBackend,
) -> None:
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


def test_a_plan_applied_whole_quantizes_exactly_its_layers(backend: QuantBackend) -> None:
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
    quantized = backend.apply(model, plan)
    files = backend.save(quantized, tmp_path)
    assert files and all((tmp_path / f).exists() for f in files)
    loaded = backend.load(_model(), tmp_path)
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), quantized(x), atol=1e-5)
