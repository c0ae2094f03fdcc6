"""The torchao backend: precisions, stored bytes, kernels, refusals, plans and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from _procs import run_recipe
from torch import nn

from quide_search.backends import get_backend, model_bytes
from quide_search.config import RunConfig
from quide_search.errors import ConfigError, PlanError, TrialEvaluationError
from quide_search.output.checkpoint import save_quantized
from quide_search.plan import BitPlan
from quide_search.study import load_study

AO = get_backend("torchao")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32)).eval()


def _ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.profiler.profile() as prof, torch.no_grad():
        model(x)
    return {e.name for e in prof.events()}


def test_precisions_on_a_cpu_and_what_is_refused() -> None:
    assert AO.version() == "0.18.0"
    assert dict(AO.precisions(torch.device("cpu"))) == {"int8": 8, "int4": 4, "w8a8": 8, "fp8": 8}
    refusal = (
        "wf8af8 on the torchao backend is not offered: torchao's float8 weights and "
        "activations need a CUDA GPU of compute capability 8.9 or more, and this backend has "
        "not run them on one. On this device it offers int8, int4, w8a8, fp8"
    )
    with pytest.raises(PlanError, match=refusal):
        AO.check_precisions(("int8", "wf8af8"), torch.device("cpu"))
    with pytest.raises(PlanError, match="'int2' is not among them. It offers int8, int4, w8a8"):
        AO.check_precisions(("int8", "int2"), torch.device("cpu"))
    with pytest.raises(PlanError, match="--bits and --activations must give precisions the "
                       "torchao backend runs on cpu, but 'w4a8' is not among them"):  # fmt: skip
        AO.check_precisions(("w4a8",), torch.device("cpu"))  # torchao's W4A8 is not offered
    int4 = BitPlan(model="m", dataset="d", layers={"0": "int4"}, backend="torchao")
    with pytest.raises(PlanError, match="CPU int4 layout .* has none"):
        AO.transformers_config(int4, None)  # --format transformers: no safetensors form


# Hand-computed sizes for Linear(256 -> 64, bias): float 64*256*4 + 64*4 = 65792 bytes.
#  int8, w8a8: int8 weights (16384) + per-row fp32 scale (256) + int8 zero point (64)
#              + the fp32 bias (256)                                        -> 16960
#  int4: two weights per byte (8192) + an fp32 scale and zero point per group of 128 inputs
#        per row (2 groups x 64 rows x 2 x 4 = 1024) + bias (256)               ->  9472
#  fp8:  float8 weights (16384) + per-row fp32 scale (256) + bias (256)        -> 16896
@pytest.mark.parametrize(
    ("precision", "expected"), [("float", 65792), ("int8", 16960), ("w8a8", 16960),
                                ("int4", 9472), ("fp8", 16896)],
)  # fmt: skip
def test_stored_bytes_are_those_inside_torchaos_tensors(precision: str, expected: int) -> None:
    layer = nn.Linear(256, 64)
    quantized = layer if precision == "float" else AO.quantize_layer(layer, precision)
    assert model_bytes(quantized) == expected
    assert type(layer.weight) is nn.Parameter and layer.weight.dtype == torch.float32


@pytest.mark.parametrize(
    ("precision", "path", "op"),
    [("int8", "fallback", None), ("w8a8", "kernel:int_mm", "aten::_int_mm"),
     ("int4", "kernel:int4pack_mm_cpu", "aten::_weight_int4pack_mm_for_cpu"),
     ("fp8", "fallback", None)],
)  # fmt: skip
def test_kernel_paths_match_the_ops_that_run(precision: str, path: str, op: str | None) -> None:
    quantized = AO.quantize_layer(nn.Linear(256, 64), precision)
    assert AO.kernel_path(quantized) == path
    ops = _ops(quantized, torch.randn(2, 256))
    low_bit = {"aten::_int_mm", "aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int8pack_mm",
               "aten::_scaled_mm"}  # fmt: skip
    assert ops & low_bit == ({op} if op else set())


def test_on_cuda_int4_and_float8_activations_are_refused_with_the_reason() -> None:
    # No GPU here; what a CUDA device is offered reads only its type.
    cuda = torch.device("cuda")
    assert list(AO.precisions(cuda)) == ["int8", "w8a8", "fp8"]
    with pytest.raises(PlanError, match="int4 on the torchao backend is offered on a CPU only"):
        AO.check_precisions(("int8", "int4"), cuda)
    assert list(AO.refusals(cuda)) == ["int4", "wf8af8"]
    assert list(AO.refusals(torch.device("cpu"))) == ["wf8af8"]


def test_an_fp8_checkpoint_reloads_with_its_recipe(tmp_path: Path) -> None:
    model = _mlp()
    plan = BitPlan(model="mlp", dataset="x", layers={"0": "fp8", "2": "int8"}, backend="torchao")
    quantized = AO.apply(model, plan)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.save({"x": x, "y": quantized(x)}, tmp_path / "io.pt")
    out = save_quantized(quantized, plan.to_dict(), tmp_path / "ck")
    assert json.loads((out / "torchao_plan.json").read_text())["0"] == {
        "precision": "fp8", "config": "Float8WeightOnlyConfig", "kwargs": {},
    }  # fmt: skip
    skeleton = (
        "from torch import nn\n"
        "model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32)).eval()\n"
    )
    recipe = json.loads((out / "plan.json").read_text())["loading"]["recipe"]
    run_recipe(skeleton, recipe, out, tmp_path / "io.pt")


def test_int4_shapes_the_kernel_refuses_leave_those_layers_choices(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 10), nn.Linear(100, 32))
    message = AO.hazard(model, torch.device("cpu"), ("int8", "int4"))
    assert message is not None and "1 (64 -> 10), 2 (100 -> 32) do not" in message
    assert AO.hazard(model, torch.device("cpu"), ("int8", "w8a8")) is None
    # Layers left out of the search (a causal LM's lm_head) are not checked.
    assert AO.hazard(model, torch.device("cpu"), ("int8", "int4"), ["0"]) is None
    unfit = AO.unfit_layers(model, torch.device("cpu"), ("int8", "int4"), ["0", "1", "2"])
    assert set(unfit) == {"1", "2"} and "its shape 64 -> 10 " in unfit["1"]["int4"]
    # A search takes int4 out of fc2's choices only (64 -> 10), says so, and records it.
    from quide_search.study import run_search

    lines: list[str] = []
    config = RunConfig(backend="torchao", bits=("int8", "int4"), out_dir=str(tmp_path), trials=6,
                       latency="model:cpu-epyc-2c", device="cpu", warm_start=False)  # fmt: skip
    summary = run_search(config, progress=False, echo=lines.append)
    excluded = summary.protocol["search"]["excluded"]
    assert list(excluded) == ["fc2"] and list(excluded["fc2"]) == ["int4"]
    assert [
        line
        for line in lines
        if line.startswith("note: int4 is left out of fc2 (its shape 64 -> 10 ")
    ] != []
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert all(t.params["fc2"] == "int8" for t in study.trials)
    uniform = [t for t in study.trials if t.user_attrs.get("warm_start") == "uniform"]
    assert sorted(t.params["fc1"] for t in uniform) == ["int4", "int8"]


@pytest.mark.parametrize(
    ("model", "bits", "message"),
    [  # no layer runs int4 / a layer runs none of --bits
        ("factories:make_task", ("int8", "int4"), r"encode \(16 -> 32\), decode \(32 -> 4\) do"),
        ("simplecnn", ("int4",), "fc2 runs none of int4 on the torchao backend"),
    ],
)
def test_int4_is_refused_where_no_layer_or_one_layer_can_run_nothing(
    model: str, bits: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    from quide_search.study import run_search

    config = RunConfig(model=model, backend="torchao", bits=bits, out_dir=str(tmp_path),
                       latency="model:cpu-epyc-2c", device="cpu")  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        run_search(config, progress=False)
    assert list(tmp_path.iterdir()) == []  # refused before any storage


def test_a_layer_torchao_passes_over_is_an_error_never_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchao.quantization

    monkeypatch.setattr(torchao.quantization, "quantize_", lambda module, config: None)
    with pytest.raises(TrialEvaluationError, match="torchao left a Linear in float"):
        AO.quantize_layer(nn.Linear(256, 64), "int8")


def test_a_mixed_plan_runs_and_its_checkpoint_reloads_without_quide_search(
    tmp_path: Path,
) -> None:
    model = _mlp()
    plan = BitPlan(model="mlp", dataset="x", layers={"0": "int4", "2": "w8a8"}, backend="torchao")
    quantized = AO.apply(model, plan)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, reference = quantized(x), model(x)
    assert float((expected - reference).abs().max()) < 0.05  # close to float, not equal
    assert not torch.equal(expected, reference)
    assert AO.quantization_map(plan)["2"] == {
        "weights": "int8", "activations": "int8",
        "config": "Int8DynamicActivationInt8WeightConfig",
    }  # fmt: skip
    out = save_quantized(quantized, plan.to_dict(), tmp_path / "ck")
    assert json.loads((out / "torchao_plan.json").read_text()) == {
        "0": {"precision": "int4", "config": "PrototypeInt4WeightOnlyConfig",
              "kwargs": {"group_size": 128}},
        "2": {"precision": "w8a8", "config": "Int8DynamicActivationInt8WeightConfig",
              "kwargs": {}},
    }  # fmt: skip
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    loading = json.loads((out / "plan.json").read_text())["loading"]
    assert loading["files"] == ["model.pt", "torchao_plan.json"]
    assert len(loading["recipe"].splitlines()) <= 10
    # The recipe in plan.json, in a fresh process that imports only torch and torchao.
    skeleton = (
        "from torch import nn\n"
        "model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32)).eval()\n"
    )
    run_recipe(skeleton, loading["recipe"], out, tmp_path / "io.pt")
    reloaded = AO.load(_mlp(), out)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)


def test_a_torchao_study_on_digits_records_backend_kernels_and_reproduces(
    tmp_path: Path,
) -> None:
    from quide_search.output.export import export_plan
    from quide_search.output.replay import evaluate_plan
    from quide_search.output.text import format_replay
    from quide_search.study import load_study, run_search

    config = RunConfig(backend="torchao", bits=("int8", "w8a8"), out_dir=str(tmp_path),
                       latency="model:cpu-epyc-2c", device="cpu", trials=6)  # fmt: skip
    summary = run_search(config, progress=False)
    assert summary.completed == 6 and summary.failed == 0
    assert summary.protocol["backend"] == "torchao"
    assert summary.protocol["task"]["kept_float"] == {"Conv2d": 2}
    study = load_study(study=config.study_name, storage=config.storage_url)
    for trial in study.trials:
        plan = trial.user_attrs.get("layers") or trial.params
        w8a8 = sorted(n for n, q in plan.items() if q == "w8a8")
        assert trial.user_attrs["kernel_layers"] == w8a8
    out = export_plan(study=config.study_name, storage=config.storage_url,
                      out=tmp_path / "plan.json")  # fmt: skip
    record = json.loads(out.read_text())
    assert record["backend"] == "torchao"
    assert {v["activations"] for v in record["quantization_map"].values()} <= {"int8", "none"}
    assert evaluate_plan(out, device="cpu").reproduced is True
    # A plan with w8a8 layers applied by quanto (static W8A8, calibrated): scored under the
    # same protocol, and never compared with the P torchao's dynamic W8A8 stored.
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    layers = {t.number: t.user_attrs.get("layers") or t.params for t in done}
    mixed = next(n for n, plan in layers.items() if "w8a8" in plan.values())
    out = export_plan(study=config.study_name, storage=config.storage_url, trial=mixed,
                      out=tmp_path / "mixed.json")  # fmt: skip
    record = json.loads(out.read_text())
    other = evaluate_plan(out, device="cpu", backend="quanto")
    assert (other.plan.backend, other.stored_backend) == ("quanto", "torchao")
    assert other.reproduced is None
    assert dict(other.plan.layers) == record["layers"]
    assert other.measured.C > 1.0
    assert abs(other.measured.P - record["metrics"]["P"]) <= 0.03
    assert "measured with torchao, so P is not compared" in format_replay(other)


def test_a_mixed_plan_on_a_tiny_llama_runs_and_reloads_exactly(
    tiny_llama: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    folder, _ = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    layers = [n for n in AO.quantizable_layers(model) if n != "lm_head"]
    cycle = ("int8", "int4", "w8a8")
    plan = BitPlan(model="tiny", dataset="x", backend="torchao",
                   layers={n: cycle[i % 3] for i, n in enumerate(layers)})  # fmt: skip
    quantized = AO.apply(model, plan)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, reference = quantized(ids).logits, model(ids).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, reference)
    assert float((logits - reference).abs().max()) < 0.5
    kernels = {n: AO.kernel_path(quantized.get_submodule(n)) for n in layers}
    assert {kernels[n] for n in layers[1::3]} == {"kernel:int4pack_mm_cpu"}
    assert {kernels[n] for n in layers[2::3]} == {"kernel:int_mm"}
    assert model_bytes(quantized) < model_bytes(model)
    AO.save(quantized, tmp_path)
    skeleton = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(AO.load(skeleton, tmp_path)(ids).logits, logits)


def test_run_without_bits_searches_what_torchao_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quide_search.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--backend", "torchao", "--trials", "2", "--device", "cpu", "--no-progress",
            "--latency", "model:cpu-epyc-2c", "--no-warm-start"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        out.count("note: int4 is left out of fc2 (its shape 64 -> 10 does not fit") == 2
    )  # start, summary
    study = load_study(study="simplecnn-digits", storage="sqlite:///studies/simplecnn-digits.db")
    assert study.user_attrs["protocol"]["search"]["precisions"] == ["int8", "int4"]
    # Its plan, edited by hand: a precision torchao does not run, a C it does not store.
    assert main(["export", "--study", "simplecnn-digits", "--out", "plan.json"]) == 0
    record = json.loads((tmp_path / "plan.json").read_text())
    (tmp_path / "int2.json").write_text(json.dumps({**record, "layers": {"fc1": "int2"}}))
    (tmp_path / "c.json").write_text(
        json.dumps({**record, "metrics": {**record["metrics"], "C": 5.0}})
    )
    capsys.readouterr()
    assert main(["evaluate", "--plan", "int2.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "puts fc1 at int2 (it offers int8, int4" in err
    assert main(["evaluate", "--plan", "c.json"]) == 1
    assert "the stored C 5 is not the C of the bytes this plan stores" in capsys.readouterr().out


def test_a_sweep_row_says_which_layers_it_keeps_at_another_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quide_search.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--backend", "torchao", "--bits", "8,4", "--device", "cpu",
            "--latency", "model:cpu-epyc-2c"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: int4 is left out of fc2" in out and "int4 (fc2=int8)" in out
    csv = (tmp_path / "studies" / "simplecnn-digits.sweep.csv").read_text().splitlines()
    assert csv[0].endswith(",other_layers,knee") and ",fc2=int8," in csv[-1]
