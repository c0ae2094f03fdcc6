"""Hugging Face causal LMs: a 2-block Llama built from a config, scored on a text file."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from quide_search.backends import get_backend
from quide_search.config import RunConfig
from quide_search.errors import DataError, PlanError
from quide_search.study import load_study, run_search
from quide_search.tasks.models.causal_lm import TextTask
from quide_search.tasks.resolver import load_task

QUANTO = get_backend("quanto")

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _task(tiny_llama: tuple[Path, Path], **kw: object):  # type: ignore[no-untyped-def]
    folder, text = tiny_llama
    options = {"seq_len": 24, "eval_windows": 8, "calib_windows": 4, **kw}
    return load_task(
        model=f"hf:{folder}", text=TextTask(path=str(folder), text_file=str(text), **options)
    )  # type: ignore[arg-type]


def test_windows_layers_and_head_exclusion(tiny_llama: tuple[Path, Path]) -> None:
    task = _task(tiny_llama)
    assert task.kind == "causal-lm" and task.dataset_name == "text:text.txt"
    assert task.splits.eval.inputs.shape == (8, 24) and task.splits.calib.inputs.shape == (4, 24)
    # The held-out test windows: as many as eval's, cut from the seeded window order after
    # eval and calib, so no window position serves two splits.
    assert task.splits.test.inputs.shape == (8, 24)
    from transformers import AutoTokenizer

    folder, text = tiny_llama
    ids = AutoTokenizer.from_pretrained(str(folder))(text.read_text())["input_ids"]
    count = len(ids) // 25
    windows = torch.tensor(ids[: count * 25]).view(count, 25)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    assert count >= 20 and len(set(order[:20].tolist())) == 20
    assert torch.equal(task.splits.eval.inputs, windows[order[:8], :-1])
    assert torch.equal(task.splits.test.inputs, windows[order[12:20], :-1])
    # Labels are the inputs shifted by one token.
    assert torch.equal(task.splits.eval.inputs[:, 1:], task.splits.eval.labels[:, :-1])
    kinds = ["self_attn"] * 4 + ["mlp"] * 3
    pairs = list(zip(kinds, LINEARS, strict=True))
    expected = [f"model.layers.{b}.{k}.{n}" for b in (0, 1) for k, n in pairs]
    assert list(task.layers(QUANTO)) == expected
    assert "lm_head" in _task(tiny_llama, include_head=True).layers(QUANTO)


def test_p_and_perplexity_match_a_hand_computation(tiny_llama: tuple[Path, Path]) -> None:
    from quide_search.measure.evaluator import Evaluator

    task = _task(tiny_llama)
    accuracy, perplexity = Evaluator.from_split(
        task.splits.eval, device=torch.device("cpu"), batch_size=3
    ).evaluate(task.model)
    with torch.no_grad():
        logits = task.model(task.splits.eval.inputs).logits
    labels = task.splits.eval.labels
    assert accuracy == float((logits.argmax(-1) == labels).float().mean())
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert perplexity == pytest.approx(math.exp(float(nll)), rel=1e-5)


def _lm_config(folder: Path, text: Path, out: Path, **kw: Any) -> RunConfig:
    """A short search of a tiny causal LM with an analytic T and no accuracy gate."""
    return RunConfig(
        model=f"hf:{folder}", text_file=str(text), seq_len=24, eval_windows=8, out_dir=str(out),
        device="cpu", min_accuracy=0.0, max_accuracy_drop=None, latency="model:cpu-epyc-2c", **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("granularity", "params"), [("type", 7), ("block", 2)])
def test_grouped_search_on_a_causal_lm(
    tiny_llama: tuple[Path, Path], tmp_path: Path, granularity: str, params: int
) -> None:
    folder, text = tiny_llama
    config = _lm_config(folder, text, tmp_path, trials=5, granularity=granularity)
    summary = run_search(config, progress=False)
    assert summary.completed == 5 and summary.failed == 0
    study = load_study(study=config.study_name, storage=config.storage_url)
    protocol = study.user_attrs["protocol"]
    assert protocol["search"]["granularity"] == granularity
    assert protocol["task"]["text"]["seq_len"] == 24
    assert protocol["latency"]["source"] == "model:cpu-epyc-2c"
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert len(t.params) == params and len(t.user_attrs["layers"]) == 14
        assert t.user_attrs["perplexity"] > 1.0 and t.user_attrs["T_ms"] > 0
        if granularity == "type":  # every layer of a type carries the type's choice
            for layer, precision in t.user_attrs["layers"].items():
                assert precision == t.params[layer.rsplit(".", 1)[-1]]


def test_measured_t_is_per_generated_token(tiny_llama: tuple[Path, Path]) -> None:
    import dataclasses

    import torch
    from conftest import protocol_for

    from quide_search.measure.scorer import Scorer

    task = _task(tiny_llama, eval_windows=4)
    protocol = protocol_for(task, latency="measured", latency_sample_ms=0.5, threads=1,
                            min_accuracy=0.0, max_accuracy_drop=None)  # fmt: skip
    assert protocol.latency.decode == {"prompt_tokens": 24, "new_tokens": 16,
                                       "per": "generated token"}  # fmt: skip
    fewer = dataclasses.replace(protocol.latency, max_repeats=20)
    scorer = Scorer.build(task, protocol.model_copy(update={"latency": fewer}),
                          device=torch.device("cpu"))  # fmt: skip
    # One timed call is a greedy decode of 16 tokens; T is a call's time per token.
    assert scorer.target.per_call == 16
    call = scorer.target.runnable(scorer.float_plan())
    assert call(scorer.target.example).shape == (1, 24 + 16)
    result = scorer.time_plan(scorer.float_plan())
    assert result.repeats == 20 and result.median_ms > 0
    assert result.median_ms == pytest.approx(statistics.median(result.samples))
    assert max(result.samples) < 16 * result.median_ms  # per token, not per call


def test_checkpoint_reloads_the_quanto_way_for_transformers(
    tiny_llama: tuple[Path, Path], tmp_path: Path
) -> None:
    from optimum.quanto import QuantizedModelForCausalLM
    from transformers import AutoTokenizer

    from quide_search.output.export import export_plan
    from quide_search.output.record import load_plan

    folder, text = tiny_llama
    config = _lm_config(folder, text, tmp_path, trials=3)
    run_search(config, progress=False)
    out = export_plan(
        study=config.study_name, storage=config.storage_url, trial=1, out=tmp_path / "ck",
        checkpoint=True,
    )  # fmt: skip
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "quanto_qmap.json", "plan.json",
            "tokenizer.json", "README.md"} <= files  # fmt: skip
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}
    readme = (out / "README.md").read_text()
    assert readme.startswith(f"# Quantized hf:{folder} (quanto backend)")
    assert "QuantizedModelForCausalLM" in readme and "Hub" not in readme
    plan, _ = load_plan(out / "plan.json")
    task = _task(tiny_llama)
    trial_model = QUANTO.apply(task.model, plan)
    reloaded = QuantizedModelForCausalLM.from_pretrained(str(out))
    x = task.splits.eval.inputs
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, trial_model(x).logits)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer("one two .")["input_ids"]
    assert ids == task.tokenizer("one two .")["input_ids"] == [5, 6, 3]


def test_missing_model_or_text_is_one_clear_error(
    tiny_llama: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, text = tiny_llama
    with pytest.raises(DataError, match="must name a local model directory"):
        load_task(
            model=f"hf:{tmp_path}/none",
            text=TextTask(path=f"{tmp_path}/none", text_file=str(text)),
        )
    with pytest.raises(DataError, match="--text-file must name a UTF-8 text file"):
        load_task(model=f"hf:{folder}", text=TextTask(path=str(folder), text_file=None))
    short = tmp_path / "short.txt"
    short.write_text("one two three")
    with pytest.raises(DataError, match=r"at least 3 windows \(eval, calibration, test\)"):
        load_task(model=f"hf:{folder}", text=TextTask(path=str(folder), text_file=str(short)))


def test_gpt2_conv1d_layers_are_searched_exported_and_reloaded(
    tiny_gpt2: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from quide_search import load_quantized
    from quide_search.output.export import export_plan
    from quide_search.output.record import load_plan
    from quide_search.output.replay import evaluate_plan
    from quide_search.output.summary_text import format_summary

    folder, text = tiny_gpt2
    config = _lm_config(folder, text, tmp_path, trials=4)
    summary = run_search(config, progress=False)
    projections = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert summary.protocol["task"]["layers"] == [
        f"transformer.h.{i}.{p}" for i in range(2) for p in projections
    ]
    assert summary.completed == 4 and summary.failed == 0
    assert summary.protocol["task"]["kept_float"] == {"Embedding": 2}  # wte, wpe
    assert summary.protocol["task"]["excluded"] == ["lm_head"]
    assert "kept in float: 2 Embedding (the quanto backend" in format_summary(summary)
    study = load_study(study=config.study_name, storage=config.storage_url)
    # A uniform int4 GPT-2 stores less than the float one: its Conv1D weights are counted in C.
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    int4 = next(t for t in done if set(t.params.values()) == {"int4"})
    assert int4.user_attrs["C"] > 2.0
    out = export_plan(study=config.study_name, storage=config.storage_url, trial=int4.number,
                      out=tmp_path / "ck", checkpoint=True)  # fmt: skip
    assert "load it with `load_quantized`" in (out / "README.md").read_text()
    plan, _ = load_plan(out / "plan.json")
    fresh = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    trial_model = QUANTO.apply(fresh, plan)
    reloaded = load_quantized(AutoModelForCausalLM.from_pretrained(str(folder)).eval(), out)
    x = torch.tensor([[4, 5, 6, 7, 3, 8, 9]])
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, trial_model(x).logits)
    # The text moved: evaluate is told where it is now, and reproduces P exactly.
    record = json.loads((out / "plan.json").read_text())
    assert record["protocol"]["task"]["text"]["text_file"] == str(text)
    record["protocol"]["task"]["text"]["text_file"] = str(tmp_path / "moved.txt")
    (tmp_path / "moved.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="--text-file must name a UTF-8 text file"):
        evaluate_plan(tmp_path / "moved.json", device="cpu")
    replay = evaluate_plan(tmp_path / "moved.json", device="cpu", text_file=str(text))
    assert replay.reproduced


def test_a_relative_text_file_is_recorded_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = RunConfig(model="hf:some/model", text_file="text.txt").task_options()
    assert options["text"].text_file == str(tmp_path / "text.txt")


def test_a_torchao_plan_exports_for_transformers_and_reloads_without_quide_search(
    tiny_llama: tuple[Path, Path], tmp_path: Path
) -> None:
    from _procs import run_recipe

    from quide_search.output.export import export_plan
    from quide_search.output.record import load_plan

    folder, text = tiny_llama
    bits = ("int8", "w8a8", "fp8")
    # No warm starts: their plans follow the sensitivity measured on this CPU, which differs
    # between CPUs; the seeded sampler's fourth plan mixes all three precisions everywhere.
    config = _lm_config(folder, text, tmp_path, trials=4, backend="torchao", bits=bits,
                        warm_start=False)  # fmt: skip
    run_search(config, progress=False)
    study = load_study(study=config.study_name, storage=config.storage_url)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    mixed = next(t for t in done if len(set(t.params.values())) == 3)  # seeded: trial 3
    out = export_plan(study=config.study_name, storage=config.storage_url, trial=mixed.number,
                      out=tmp_path / "hf", fmt="transformers")  # fmt: skip
    assert {"config.json", "model.safetensors", "tokenizer.json", "plan.json"} <= {
        p.name for p in out.iterdir()
    }
    plan, record = load_plan(out / "plan.json")
    assert set(plan.quantized_layers().values()) == set(bits)
    task = _task(tiny_llama)
    trial_model = get_backend("torchao").apply(task.model, plan)
    x = task.splits.eval.inputs
    with torch.no_grad():
        torch.save({"x": x, "y": trial_model(x).logits}, tmp_path / "io.pt")
    # The recipe in plan.json, in a fresh process: transformers (and torchao) only.
    run_recipe("", record["loading"]["recipe"], out, tmp_path / "io.pt", outputs=".logits")


def test_plans_transformers_cannot_hold_are_refused_before_writing(
    tiny_llama: tuple[Path, Path], tmp_path: Path
) -> None:
    from quide_search.output.export import export_plan

    folder, text = tiny_llama
    config = _lm_config(folder, text, tmp_path, trials=1, bits=("int8",))
    run_search(config, progress=False)
    with pytest.raises(PlanError, match="optimum-quanto integration quantizes on load only"):
        export_plan(study=config.study_name, storage=config.storage_url, trial="best",
                    out=tmp_path / "hf", fmt="transformers")  # fmt: skip
    assert not (tmp_path / "hf").exists()
