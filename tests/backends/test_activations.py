"""Static activation quantization on quanto: calibration, kernels, searches, sweeps, reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import toytask
from _procs import run_recipe
from torch import nn

from quide_search.backends import get_backend
from quide_search.backends.calibration import LayerInputs
from quide_search.config import RunConfig
from quide_search.errors import ConfigError, PlanError
from quide_search.output.record import load_plan
from quide_search.plan import BitPlan

QUANTO = get_backend("quanto")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def _calibration() -> torch.Tensor:
    return torch.randn(100, 64, generator=torch.Generator().manual_seed(3)) * 2


def test_the_input_scale_is_quantos_absmax_with_momentum_over_the_float_inputs() -> None:
    model, calib = _mlp(), _calibration()
    plan = BitPlan(model="m", dataset="d", layers={"0": "w8a8", "2": "w4a8"})
    quantized = QUANTO.apply(model, plan, calibration=calib)
    for name, layer_input in (("0", calib), ("2", torch.relu(model[0](calib)))):
        # By hand: batches of 32 in order, absmax / 127, averaged with momentum 0.9.
        scale = None
        for start in range(0, 100, 32):
            batch = layer_input[start : start + 32].detach().abs().max() / 127
            scale = batch if scale is None else 0.9 * scale + 0.1 * batch
        assert float(quantized.get_submodule(name).input_scale) == pytest.approx(float(scale))
    assert QUANTO.quantization_map(plan) == {
        "0": {"weights": "qint8", "activations": "qint8"},
        "2": {"weights": "qint4", "activations": "qint8"},
    }


def test_calibration_is_deterministic_and_quantizes_the_activations() -> None:
    model, calib = _mlp(), _calibration()
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(4))
    plan = BitPlan(model="m", dataset="d", layers={"0": "w8a8", "2": "w8a8"})
    weight_only = BitPlan(model="m", dataset="d", layers={"0": "int8", "2": "int8"})
    with torch.no_grad():
        first = QUANTO.apply(model, plan, calibration=calib)(x)
        again = QUANTO.apply(model, plan, calibration=calib)(x)
        other = QUANTO.apply(model, plan, calibration=calib[:40])(x)
        weights = QUANTO.apply(model, weight_only)(x)
        error = float((first - model(x)).abs().max())
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the scale comes from the data
    assert not torch.equal(first, weights)  # activations are really quantized
    assert error < 0.1


def test_a_calibrated_precision_without_calibration_data_is_refused() -> None:
    plan = BitPlan(model="m", dataset="d", layers={"0": "w8a8"})
    with pytest.raises(PlanError, match="calibrates static activation scales, but no calib"):
        QUANTO.apply(_mlp(), plan)


@pytest.mark.parametrize(
    ("precision", "path", "int_mm"),
    [("w8a8", "kernel:int_mm", True), ("w4a8", "fallback", False), ("w8af8", "fallback", False)],
)
def test_kernel_rules_match_the_ops_that_run(precision: str, path: str, int_mm: bool) -> None:
    model = QUANTO.apply(
        _mlp(),
        BitPlan(model="m", dataset="d", layers={"0": precision}),
        calibration=_calibration(),
    )
    assert QUANTO.kernel_path(model[0]) == path
    assert QUANTO.float_twin(model[0]) is None  # a twin would skip the input quantization
    with torch.profiler.profile() as prof, torch.no_grad():
        model(torch.randn(4, 64))
    assert ("aten::_int_mm" in {e.name for e in prof.events()}) is int_mm


def test_layer_inputs_are_what_the_float_layer_receives() -> None:
    model, calib = _mlp(), _calibration()
    captured = LayerInputs(model, calib)("2")
    assert [args[0].shape[0] for args in captured] == [32, 32, 32, 4]
    with torch.no_grad():
        assert torch.equal(torch.cat([a[0] for a in captured]), torch.relu(model[0](calib)))


def test_int4_weights_with_activations_meet_the_float16_cuda_hazard() -> None:
    model = _mlp().half()
    assert QUANTO.hazard(model, torch.device("cuda"), ["int8", "w4a8"]) is not None
    assert QUANTO.hazard(model, torch.device("cuda"), ["int8", "w8a8"]) is None


def test_a_study_searches_activation_precisions_and_evaluate_reproduces(tmp_path: Path) -> None:
    from quide_search import load_quantized
    from quide_search.measure.scorer import Scorer
    from quide_search.output.export import export_plan
    from quide_search.output.replay import evaluate_plan
    from quide_search.study import load_study, run_search
    from quide_search.study.summary import read_study
    from quide_search.tasks.resolver import load_task

    config = RunConfig(model="toytask:make", out_dir=str(tmp_path), device="cpu", trials=6,
                       bits=("int8", "w8a8", "w4a8"), latency="model:cpu-epyc-2c",
                       confirm_top=0)  # fmt: skip
    run_search(config, progress=False)
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert study.user_attrs["protocol"]["search"]["calibration_samples"] == 64
    seen = {q for t in study.trials for q in t.params.values()}
    assert {"w8a8", "w4a8"} <= seen
    calibrated = next(t for t in study.trials if "w8a8" in t.params.values())
    out = export_plan(study=config.study_name, storage=config.storage_url, out=tmp_path / "ck",
                      trial=calibrated.number, checkpoint=True, model="toytask:make")  # fmt: skip
    replay = evaluate_plan(out / "plan.json", device="cpu", model="toytask:make")
    assert replay.reproduced is True
    # The exported checkpoint (built by apply) computes what the study's layer cache computed.
    plan, _ = load_plan(out / "plan.json")
    task = load_task(model="toytask:make")
    _, protocol = read_study(study=config.study_name, storage=config.storage_url)
    trial_model = Scorer.build(task, protocol, device=torch.device("cpu")).cache.assemble(plan)
    reloaded = load_quantized(toytask.make().model, out)
    with torch.no_grad():
        x = task.splits.eval.inputs
        assert torch.equal(reloaded(x), trial_model(x))


def test_a_task_without_calibration_data_cannot_calibrate(tmp_path: Path) -> None:
    from quide_search.study import run_search

    config = RunConfig(model="factories:make_task", out_dir=str(tmp_path), device="cpu",
                       trials=1, bits=("int8", "w8a8"))  # fmt: skip
    with pytest.raises(ConfigError, match="has no calibration samples"):
        run_search(config, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any storage


def test_the_sweep_gains_w8a8_and_w4a8_rows(tmp_path: Path) -> None:
    from quide_search.plan import with_activations
    from quide_search.study.sweep import run_sweep

    bits = with_activations(("float", "int8", "int4"), ("none", "int8"))
    config = RunConfig(model="toytask:make", out_dir=str(tmp_path), device="cpu", bits=bits,
                       latency="model:cpu-epyc-2c")  # fmt: skip
    rows = {row["precision"]: row for row in run_sweep(config).rows}
    assert list(rows) == ["float", "int8", "w8a8", "int4", "w4a8"]
    # quanto stores an input and an output scale in every layer, weight-only ones too.
    assert rows["w8a8"]["stored_bytes"] == rows["int8"]["stored_bytes"]
    # Each row's P is that of the plan applied by hand, calibrated on the 64 calibration samples.
    task = toytask.make()
    for precision in ("w8a8", "w4a8"):
        layers = dict.fromkeys(QUANTO.quantizable_layers(task.model), precision)
        plan = BitPlan(model="toytask:make", dataset="custom", layers=layers)
        model = QUANTO.apply(task.model, plan, calibration=task.calib_inputs)
        with torch.no_grad():
            hits = (model(task.eval_inputs).argmax(-1) == task.eval_labels).sum()
        assert rows[precision]["P"] == int(hits) / 384
    assert rows["w8a8"]["P"] < rows["int8"]["P"]


def test_the_checkpoint_recipe_reloads_without_quide_search(tmp_path: Path) -> None:
    from quide_search.output.checkpoint import save_quantized

    model, calib = _mlp(), _calibration()
    plan = BitPlan(model="mlp", dataset="x", layers={"0": "w8a8", "2": "int4"})
    quantized = QUANTO.apply(model, plan, calibration=calib)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = quantized(x)
    out = save_quantized(quantized, plan.to_dict(), tmp_path / "ck")
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    recipe = json.loads((out / "plan.json").read_text())["loading"]["recipe"]
    assert len(recipe.splitlines()) <= 10
    run_recipe(
        "from torch import nn\n"
        "model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()\n",
        recipe,
        out,
        tmp_path / "io.pt",
    )
