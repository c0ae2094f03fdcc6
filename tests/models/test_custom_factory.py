"""`--model package.module:factory` with a model defined only in this file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from quide_search import CustomTask
from quide_search.cli import main
from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.study import load_study, run_search

SPEC = "test_custom_factory:make_task"


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(16, 32)
        self.decode = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.tanh(self.encode(x)))


def make_task() -> CustomTask:
    torch.manual_seed(0)
    model = TwoLayer()
    x = torch.randn(200, 16)
    with torch.no_grad():
        y = model(x).argmax(-1)  # labels the float model gets right: P(fp32) = 1
    return CustomTask(model=model, eval_inputs=x, eval_labels=y, example=x[:1])


def agreement(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(inputs).argmax(-1) == labels).float().mean())


def make_scored_task() -> CustomTask:
    task = make_task()
    return CustomTask(
        model=task.model, eval_inputs=task.eval_inputs, eval_labels=task.eval_labels,
        score=agreement, name="agreement",
    )  # fmt: skip


def not_a_task() -> dict[str, int]:
    return {"model": 1}


def test_factory_model_is_searched(tmp_path: Path) -> None:
    config = RunConfig(model=SPEC, out_dir=str(tmp_path), device="cpu", trials=4)
    summary = run_search(config, progress=False)
    assert summary.completed + summary.pruned == 4 and summary.baseline["P"] == 1.0
    # The factory gave no calibration data: no sensitivity, so no warm-start plans.
    assert summary.warm_start_skipped is not None
    assert "sensitivity needs a calibration split" in summary.warm_start_skipped
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert study.user_attrs["protocol"]["model"] == SPEC
    assert set(study.trials[0].params) == {"encode", "decode"}


def test_factory_score_function_gives_p(tmp_path: Path) -> None:
    config = RunConfig(
        model="test_custom_factory:make_scored_task", out_dir=str(tmp_path), device="cpu",
        trials=3,
    )  # fmt: skip
    summary = run_search(config, progress=False)
    assert summary.baseline["P"] == 1.0
    assert summary.protocol["dataset"] == "agreement"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("test_custom_factory:not_a_task", "must return quide_search.CustomTask"),
        ("test_custom_factory:missing", "must name an importable function"),
        ("no_such_module_xyz:make", "must name an importable function"),
    ],
)
def test_bad_factories_are_one_line_errors(
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        run_search(RunConfig(model=spec, out_dir=str(tmp_path), device="cpu"), progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []  # no study was created
