"""`--model package.module:factory` with a model defined only in this file."""

from __future__ import annotations

from pathlib import Path

import pytest

from quide_search.cli import main
from quide_search.config import RunConfig
from quide_search.errors import ConfigError
from quide_search.study import load_study, run_search

SPEC = "factories:make_task"


def test_factory_model_is_searched(tmp_path: Path) -> None:
    config = RunConfig(model=SPEC, out_dir=str(tmp_path), device="cpu", trials=4,
                       latency="model:cpu-epyc-2c")  # fmt: skip
    summary = run_search(config, progress=False)
    assert summary.completed + summary.pruned == 4 and summary.baseline["P"] == 1.0
    # The factory gave no calibration data: no sensitivity, so no warm-start plans.
    assert summary.warm_start_skipped is not None
    assert "sensitivity needs a calibration split" in summary.warm_start_skipped
    study = load_study(study=config.study_name, storage=config.storage_url)
    assert study.user_attrs["protocol"]["task"]["model"] == SPEC
    assert set(study.trials[0].params) == {"encode", "decode"}


def test_a_factorys_sweep_files_have_plain_names(tmp_path: Path) -> None:
    from quide_search.study.sweep import run_sweep

    config = RunConfig(model=SPEC, out_dir=str(tmp_path), device="cpu", bits=("float", "int8"),
                       latency="model:cpu-epyc-2c")  # fmt: skip
    result = run_sweep(config)
    # No colon (invalid on Windows, awkward for scp and make): the study's own plain name.
    assert result.json_path.name == "factories-make_task-custom.sweep.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "factories-make_task-custom.sweep.csv",
        "factories-make_task-custom.sweep.json",
    ]


def test_factory_score_function_gives_p(tmp_path: Path) -> None:
    config = RunConfig(
        model="factories:make_scored_task", out_dir=str(tmp_path), device="cpu",
        trials=3, latency="model:cpu-epyc-2c",
    )  # fmt: skip
    summary = run_search(config, progress=False)
    assert summary.baseline["P"] == 1.0
    assert summary.protocol["task"]["dataset"] == "agreement"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("factories:not_a_task", "must return quide_search.CustomTask"),
        ("factories:missing", "must name an importable function"),
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


def test_a_forward_that_takes_its_input_by_keyword_only_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in ("run", "sweep"):
        assert main([command, "--model", "factories:keyword_only_task", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "takes it by keyword only (pixel_values=...)" in err
        assert "forward(self, x) returns model(pixel_values=x)" in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_custom_task_takes_numpy_arrays_and_lists_and_checks_their_dtypes() -> None:
    import numpy as np
    import torch
    from torch import nn

    from quide_search import CustomTask

    model = nn.Linear(3, 2)
    task = CustomTask(model=model, eval_inputs=np.ones((4, 3)), eval_labels=[0, 1, 1, 0],
                      calib_inputs=np.zeros((2, 3), dtype=np.float32),
                      calib_labels=np.array([1, 0], dtype=np.int32))  # fmt: skip
    assert task.eval_inputs.dtype == torch.float32 and task.eval_labels.dtype == torch.int64
    assert task.calib_labels is not None and task.calib_labels.tolist() == [1, 0]
    tokens = CustomTask(model=model, eval_inputs=[[1, 2], [3, 4]], eval_labels=[0, 1])
    assert tokens.eval_inputs.dtype == torch.int64  # token ids stay integers
    with pytest.raises(ConfigError, match=r"CustomTask.eval_labels must hold integer class"):
        CustomTask(model=model, eval_inputs=np.ones((2, 3)), eval_labels=np.array([0.0, 1.0]))
    with pytest.raises(ConfigError, match=r"CustomTask.eval_inputs must be a tensor, a numpy"):
        CustomTask(model=model, eval_inputs=["a", "b"], eval_labels=[0, 1])
    scored = CustomTask(model=model, eval_inputs=np.ones((2, 3)), eval_labels=np.ones((2, 2)),
                        score=lambda m, x, y: 1.0)  # fmt: skip
    assert scored.eval_labels.dtype == torch.float32  # a score function reads any labels


def test_a_custom_task_holds_out_half_its_eval_data_unless_given_a_test_split() -> None:
    import torch
    from torch import nn

    from quide_search import CustomTask

    x = torch.arange(9).float().unsqueeze(1)
    task = CustomTask(model=nn.Linear(1, 2), eval_inputs=x, eval_labels=torch.arange(9) % 2)
    splits = task.splits()
    search = {int(v) for v in splits.eval.inputs[:, 0]}
    held = {int(v) for v in splits.test.inputs[:, 0]}
    assert (len(search), len(held)) == (5, 4) and search | held == set(range(9))
    assert torch.equal(splits.test.labels, splits.test.inputs[:, 0].long() % 2)
    assert torch.equal(task.splits().test.inputs, splits.test.inputs)  # seeded
    given = CustomTask(model=nn.Linear(1, 2), eval_inputs=x, eval_labels=torch.arange(9) % 2,
                       test_inputs=x[:3] + 100, test_labels=[1, 0, 1]).splits()  # fmt: skip
    assert len(given.eval) == 9 and given.test.inputs[:, 0].tolist() == [100.0, 101.0, 102.0]
    one = CustomTask(model=nn.Linear(1, 2), eval_inputs=x[:1], eval_labels=[0])
    with pytest.raises(ConfigError, match="at least 2 samples when no test_inputs"):
        one.splits()
    with pytest.raises(ConfigError, match="needs test_inputs and test_labels together, but only "
                       "test_inputs was given"):  # fmt: skip
        CustomTask(model=nn.Linear(1, 2), eval_inputs=x, eval_labels=torch.arange(9) % 2,
                   test_inputs=x[:3]).splits()  # fmt: skip
