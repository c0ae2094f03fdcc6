"""Which quantized layers run a low-bit kernel: quide-search's rules against the profiler."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from quide_search.config import RunConfig
from quide_search.plan import BitPlan
from quide_search.quantize import apply_plan, kernel_paths
from quide_search.study import load_study, run_search


def _ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.profiler.profile() as prof, torch.no_grad():
        model(x)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize(
    ("dtype", "qtype", "path", "op"),
    [
        (torch.bfloat16, "qint8", "kernel:int8pack", "aten::_weight_int8pack_mm"),
        (torch.bfloat16, "qint4", "kernel:tinygemm", "aten::_weight_int4pack_mm_for_cpu"),
        (torch.float32, "qint8", "fallback", None),
        (torch.float32, "qint4", "fallback", None),
        (torch.float32, "qint2", "fallback", None),
    ],
)
def test_rules_match_the_ops_that_run(
    dtype: torch.dtype, qtype: str, path: str, op: str | None
) -> None:
    net = nn.Sequential(nn.Linear(256, 256)).to(dtype)
    model = apply_plan(net, BitPlan(model="m", dataset="d", layers={"0": qtype}))
    assert kernel_paths(model) == {"0": path}
    ops = _ops(model, torch.randn(4, 256, dtype=dtype))
    low_bit = {o for o in ops if "pack_mm" in o}
    assert low_bit == ({op} if op else set())


def test_conv_layers_always_fall_back(digits_task) -> None:  # type: ignore[no-untyped-def]
    plan = BitPlan.uniform(
        model="simplecnn", dataset="digits", layers=digits_task.layers, qtype="qint8"
    )
    paths = kernel_paths(apply_plan(digits_task.model, plan))
    assert paths == dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], "fallback")


def test_trials_record_paths_and_the_run_warns(tmp_path: Path) -> None:
    summary = run_search(RunConfig(out_dir=str(tmp_path), device="cpu", trials=4), progress=False)
    study = load_study(
        study="simplecnn-digits", storage=f"sqlite:///{tmp_path}/simplecnn-digits.db"
    )
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.user_attrs["kernel_layers"] == []
        assert len(t.user_attrs["fallback_layers"]) == 4  # float32 on CPU: all dequantized
    assert (
        summary.latency_warning is not None
        and "100% of the quantized layers" in summary.latency_warning
    )
    modelled = run_search(
        RunConfig(
            out_dir=str(tmp_path / "m"), device="cpu", trials=2, latency="model:cpu-epyc-2c"
        ),
        progress=False,
    )
    assert modelled.latency_warning is None
