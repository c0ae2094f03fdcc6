"""Causal LMs through the onnxruntime backend: the KV-cache graph, its layer map (Llama's
Linear, GPT-2's Conv1D), weight-only int8/int4 kernels, greedy decoding, and a study whose
exported folder reproduces P without torch."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from quide_search.backends.onnxruntime import OnnxRuntimeBackend
from quide_search.config import RunConfig
from quide_search.errors import ConfigError, PlanError
from quide_search.output.export import export_plan
from quide_search.output.replay import evaluate_plan
from quide_search.plan import BitPlan
from quide_search.study import run_search
from quide_search.tasks.models.causal_lm import TextTask
from quide_search.tasks.resolver import load_task

CPU = torch.device("cpu")
BACKEND = OnnxRuntimeBackend()


def _task(lm: tuple[Path, Path]) -> Any:
    folder, text = lm
    return load_task(model=f"hf:{folder}", text=TextTask(
        path=str(folder), text_file=str(text), seq_len=16, eval_windows=8, calib_windows=4,
    ))  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(scope="module")
def llama(tiny_llama: tuple[Path, Path]) -> Any:
    return _task(tiny_llama)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2: tuple[Path, Path]) -> Any:
    return _task(tiny_gpt2)


def _build(task: Any, layers: dict[str, str]) -> Any:
    plan = BitPlan(model="m", dataset="d", layers=layers, backend="onnxruntime")
    return BACKEND.build(task.model, plan, calibration=task.splits.calib.inputs)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_every_linear_and_conv1d_maps_to_its_own_node(name: str, request: Any) -> None:
    task = request.getfixturevalue(name)
    layers = list(BACKEND.quantizable_layers(task.model))
    # GPT-2's projections are transformers' Conv1D: quantizable here, as in quanto.
    assert len(layers) == 15 if name == "llama" else len(layers) == 9  # with lm_head
    exported = BACKEND._export(task.model, task.splits.calib.inputs)
    assert exported.decoder and exported.unmapped == {}
    assert sorted(exported.nodes) == sorted(layers)
    ops = {node.op for node in exported.nodes.values()}
    assert ops == ({"MatMul"} if name == "llama" else {"Gemm", "MatMul"})  # lm_head: MatMul


def test_the_float_graph_gives_torchs_logits_and_greedy_tokens(llama: Any) -> None:
    built = _build(llama, {})
    ids = llama.splits.eval.inputs[:3]
    with torch.no_grad():
        expected = llama.model(input_ids=ids).logits
        # Greedy decoding without a cache: the whole sequence again for each token.
        tokens = ids[:1, :6]
        for _ in range(5):
            chosen = llama.model(input_ids=tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, chosen], dim=1)
    assert torch.allclose(built.module(ids), expected, atol=1e-4)
    prompt = ids[:1, :6]
    assert torch.equal(built.module.generate(prompt, max_new_tokens=5), tokens)
    assert built.kernels == {} and built.module.decoder


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_weight_only_plans_run_matmulnbits_on_their_layers(name: str, request: Any) -> None:
    task = request.getfixturevalue(name)
    layers = [n for n in BACKEND.quantizable_layers(task.model) if n != "lm_head"]
    plan = {n: ("int4" if i % 2 else "int8") for i, n in enumerate(layers[:-1])}
    built = _build(task, plan)
    assert built.kernels == dict.fromkeys(plan, "kernel:MatMulNBits")
    assert built.stored_bytes < _build(task, {}).stored_bytes
    ids = task.splits.eval.inputs[:2]
    with torch.no_grad():
        expected = task.model(input_ids=ids).logits
    agree = (built.module(ids).argmax(-1) == expected.argmax(-1)).float().mean()
    assert agree >= 0.8  # int8/int4 of random weights: most top-1 tokens stay


def test_a_causal_lm_runs_weight_only_and_says_so(llama: Any) -> None:
    layers = [n for n in BACKEND.quantizable_layers(llama.model) if n != "lm_head"]
    unfit = BACKEND.unfit_layers(llama.model, CPU, ("w8a8", "int8", "int4"), layers)
    assert unfit == {n: {"w8a8": "a causal LM runs ORT's weight-only int8 and int4 only"}
                     for n in layers}  # fmt: skip
    with pytest.raises(ConfigError, match="runs a causal LM's layers weight-only .* not w8a8"):
        BACKEND.search_exclusions(llama.model, CPU, ("w8a8", "int8"), layers)
    assert BACKEND.hazard(llama.model, CPU, ("int8", "int4", "float")) is None
    assert BACKEND.default_bits(CPU, causal_lm=True) == ("int8", "int4")
    assert "w8a8" in BACKEND.default_bits(CPU)
    with pytest.raises(ConfigError, match="--activations must be none for a causal LM"):
        BACKEND.default_bits(CPU, ("int8",), causal_lm=True)
    with pytest.raises(PlanError, match="runs int8 or int4 weight-only .* Give it int8, int4"):
        _build(llama, {layers[0]: "w8a8"})
    # A model that is not float32 is refused before anything is traced.
    half = copy.deepcopy(llama.model).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="exports float32 causal LMs, but this one is"):
        BACKEND.unfit_layers(half, CPU, ("int8",), layers, example=llama.splits.calib.inputs)


def test_the_profile_of_a_decode_times_every_layer(llama: Any) -> None:
    from quide_search.tasks.models.causal_lm import GreedyDecode

    layers = list(BACKEND.quantizable_layers(llama.model))
    built = _build(llama, dict.fromkeys(layers[:7], "int4"))
    prompt = llama.splits.eval.inputs[:1, :8]
    calls: list[int] = []

    def decode(module: Any) -> object:
        calls.append(1)
        return GreedyDecode(module, 4, 0)(prompt)

    times = BACKEND.layer_profile(built, decode, 2)
    assert len(calls) == 3  # a warm-up, then the two profiled
    assert sorted(times) == sorted(layers) and all(ms > 0 for ms in times.values())


# In a fresh interpreter where importing torch or quide_search fails: the recipe of plan.json,
# then P (next-token top-1 accuracy over every token) of the exported model.
_ALONE = """
import json, sys
sys.modules["torch"] = None
sys.modules["quide_search"] = None
import numpy as np
folder, inputs, labels = sys.argv[1], sys.argv[2], sys.argv[3]
scope = {"folder": folder}
exec(json.load(open(folder + "/plan.json"))["loading"]["recipe"], scope)
x, y = np.load(inputs), np.load(labels)
hits = sum(int((scope["run"](x[i : i + 4]).argmax(-1) == y[i : i + 4]).sum())
           for i in range(0, len(x), 4))
print(json.dumps({"P": hits / y.size}))
"""


def test_a_study_exports_a_folder_that_reproduces_p_without_torch(
    tiny_llama: tuple[Path, Path], llama: Any, tmp_path: Path
) -> None:
    folder, text = tiny_llama
    config = RunConfig(model=f"hf:{folder}", text_file=str(text), seq_len=16, eval_windows=8,
                       out_dir=str(tmp_path), device="cpu", trials=4, backend="onnxruntime",
                       bits=("int8", "int4"),
                       study="lm", latency="measured", latency_sample_ms=1.0,
                       early_stop="off")  # fmt: skip
    run_search(config, progress=False)
    storage = f"sqlite:///{tmp_path}/lm.db"
    out = export_plan(study="lm", storage=storage, out=tmp_path / "onnx", fmt="onnx")
    record = json.loads((out / "plan.json").read_text())
    assert set(record["layers"].values()) <= {"int8", "int4", "float"}
    assert "Inputs: int64 token ids, shape (N, 16)." in (out / "README.md").read_text()
    split = llama.splits.eval
    np.save(tmp_path / "x.npy", split.inputs.numpy())
    np.save(tmp_path / "y.npy", split.labels.numpy())
    probe = subprocess.run(
        [sys.executable, "-c", _ALONE, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(probe.stdout)["P"] == pytest.approx(record["metrics"]["P"], abs=1e-12)
    replay = evaluate_plan(export_plan(study="lm", storage=storage, out=tmp_path / "p.json"),
                           device="cpu")  # fmt: skip
    assert replay.reproduced is True


def test_the_warm_up_calls_profile_events_are_dropped() -> None:
    from quide_search.backends.onnxruntime import _after_first_call

    # 3 calls of 4 session runs each: a model_run event starts each run, then a node event.
    events: list[dict[str, Any]] = []
    for run in range(12):
        events.append({"name": "model_run", "ts": 100 * run})
        events.append({"name": f"n{run}_kernel_time", "cat": "Node", "ts": 100 * run + 10})
    kept = _after_first_call(events, calls=3)
    assert [e["name"] for e in kept if e.get("cat") == "Node"] == [
        f"n{run}_kernel_time" for run in range(4, 12)
    ]  # the first call's four runs are gone, the other calls' eight stay


def test_a_whole_models_profile_is_per_generated_token(llama: Any) -> None:
    from quide_search.measure.builder import PlanBuilder
    from quide_search.measure.target import timing_target

    layers = BACKEND.quantizable_layers(llama.model)
    builder = PlanBuilder(llama.model, BACKEND, layers, calibration=None, threads=1)
    decoded: list[int] = []

    class Decoder(torch.nn.Module):  # stands for a built model: records each generate
        def generate(self, prompt: torch.Tensor, *, max_new_tokens: int, **_: Any) -> Any:
            decoded.append(max_new_tokens)
            return prompt

    def profile(plan: BitPlan, call: Any, runs: int) -> dict[str, float]:
        call(Decoder())  # one timed call: a greedy decode of the task's new tokens
        return dict.fromkeys(layers, 32.0)  # ms per call

    builder.layer_profile = profile  # type: ignore[method-assign]
    target = timing_target(llama, builder, 1, CPU)
    per_token = target.layer_profile(BitPlan(model="m", dataset="d", layers={}))
    assert decoded == [16] and target.per_call == 16
    assert per_token == dict.fromkeys(layers, 2.0)  # 32 ms a call over 16 tokens
