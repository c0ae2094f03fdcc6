"""Trial faults are data: a plan whose model misbehaves fails its trial, the study goes on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from quide_search.config import RunConfig
from quide_search.study import load_study, run_search
from quide_search.tasks.data import Splits
from quide_search.tasks.models import MODELS, ModelSpec, register_model


def _is_int2(layer: nn.Module) -> bool:
    if getattr(getattr(layer, "weight_qtype", None), "name", None) == "qint2":  # quanto's name
        return True  # quanto's own module (latency, or a kernel path)
    # Evaluation runs a float twin holding the dequantized weight: int2 leaves 4 levels a row.
    weight = getattr(layer, "weight", None)
    return type(weight) is nn.Parameter and len(torch.unique(weight.detach()[0])) <= 4


class _Faulty(nn.Module):
    """A small digits classifier that misbehaves the way ``fault`` says once fc is int2."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault
        self.hidden = nn.Linear(64, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.relu(self.hidden(x.flatten(1))))
        if not _is_int2(self.fc):
            return logits
        if self.fault == "nan":
            return logits * float("nan")
        if self.fault == "inf":
            return logits + float("inf")
        if self.fault == "raise":
            raise KeyError("custom layer lost its buffer")
        if self.fault == "memory":
            raise MemoryError("cannot allocate 4 GiB")
        if self.fault == "cuda-oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise AssertionError(self.fault)


FAULTS = {
    "nan": "model output contains NaN or inf",
    "inf": "model output contains NaN or inf",
    "raise": "forward pass failed during evaluation: KeyError",
    "memory": "out of memory during evaluation: cannot allocate 4 GiB",
    "cuda-oom": "out of GPU memory during evaluation",
}


@pytest.fixture
def faulty_model(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"faulty-{request.param}"

    def build(splits: Splits, fault: str = request.param) -> nn.Module:
        return _Faulty(fault)

    register_model(ModelSpec(name=name, build=build, datasets=("digits",), description="test"))
    yield name
    MODELS.unregister(name)


def _run(tmp_path: Path, model: str, trials: int = 6) -> tuple[object, optuna.Study]:
    config = RunConfig(
        model=model,
        out_dir=str(tmp_path),
        device="cpu",
        trials=trials,
        bits=("int8", "int2"),
        early_stop="off",  # every trial reaches forward
        latency="model:cpu-epyc-2c",
    )
    summary = run_search(config, progress=False, echo=lambda _: None)
    return summary, load_study(study=config.study_name, storage=config.storage_url)


@pytest.mark.parametrize("faulty_model", list(FAULTS), indirect=True)
def test_fault_in_forward_fails_the_trial_only(tmp_path: Path, faulty_model: str) -> None:
    summary, study = _run(tmp_path, faulty_model)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert summary.completed == 6  # type: ignore[attr-defined]
    assert summary.failed == len(failed) >= 1  # type: ignore[attr-defined]
    fault = faulty_model.removeprefix("faulty-")
    for t in failed:
        assert t.params["fc"] == "int2"
        assert FAULTS[fault] in t.user_attrs["fail_reason"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.params["fc"] == "int8" for t in complete if "P" in t.user_attrs)
    raises = fault not in ("nan", "inf")
    if raises:  # a raising layer cannot be measured alone: no warm start
        skipped = study.user_attrs["warm_start_skipped"]
        assert skipped.startswith("sensitivity forward pass failed")


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_unmeasurable_latency_fails_the_trial(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    digits_task,
    bad: float,  # type: ignore[no-untyped-def]
) -> None:
    from quide_search.latency import _timer

    real = _timer._cpu_pass

    def broken_clock(model: nn.Module, example: torch.Tensor, passes: int) -> float:
        # Only the all-int2 plan has an unmeasurable T: the other plans, the warm starts and
        # their neighbours included, complete, so the study reaches its target.
        all_int2 = sum(_is_int2(m) for m in model.modules()) == 4
        return bad if all_int2 else real(model, example, passes)

    monkeypatch.setattr(_timer, "_cpu_pass", broken_clock)
    config = RunConfig(
        out_dir=str(tmp_path), device="cpu", trials=3, bits=("int8", "int2"), early_stop="off",
        latency="measured", latency_sample_ms=0.5, confirm_top=0,
    )  # fmt: skip
    summary = run_search(config, progress=False, echo=lambda _: None)
    study = load_study(study=config.study_name, storage=config.storage_url)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert summary.completed == 3 and summary.failed == len(failed) >= 1
    assert all("latency must be finite and > 0 ms" in t.user_attrs["fail_reason"] for t in failed)
    assert all("I_prime" not in t.user_attrs for t in failed)
