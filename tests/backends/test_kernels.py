"""Which quantized layers run a low-bit kernel: quide-search's rules against the profiler."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from quide_search.backends import get_backend
from quide_search.config import RunConfig
from quide_search.plan import BitPlan
from quide_search.study import load_study, run_search

QUANTO = get_backend("quanto")


def _ops(model: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.profiler.profile() as prof, torch.no_grad():
        model(x)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize(
    ("dtype", "precision", "path", "op"),
    [
        (torch.bfloat16, "int8", "kernel:int8pack", "aten::_weight_int8pack_mm"),
        (torch.bfloat16, "int4", "kernel:tinygemm", "aten::_weight_int4pack_mm_for_cpu"),
        (torch.float32, "int8", "fallback", None),
        (torch.float32, "int4", "fallback", None),
        (torch.float32, "int2", "fallback", None),
    ],
)
def test_rules_match_the_ops_that_run(
    dtype: torch.dtype, precision: str, path: str, op: str | None
) -> None:
    net = nn.Sequential(nn.Linear(256, 256)).to(dtype)
    model = QUANTO.apply(net, BitPlan(model="m", dataset="d", layers={"0": precision}))
    assert QUANTO.kernel_path(model[0]) == path
    ops = _ops(model, torch.randn(4, 256, dtype=dtype))
    low_bit = {o for o in ops if "pack_mm" in o}
    assert low_bit == ({op} if op else set())


def test_conv_layers_always_fall_back() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)).to(torch.bfloat16)
    for precision in ("int8", "int4"):
        plan = BitPlan(model="m", dataset="d", layers={"0": precision, "1": precision})
        quantized = QUANTO.apply(net, plan)
        assert [QUANTO.kernel_path(m) for m in quantized] == ["fallback", "fallback"]


def test_trials_record_paths_and_the_run_warns(tmp_path: Path) -> None:
    config = RunConfig(model="toytask:make", out_dir=str(tmp_path), device="cpu", trials=3,
                       latency="measured", latency_sample_ms=0.5, confirm_top=0)  # fmt: skip
    summary = run_search(config, progress=False)
    study = load_study(study=config.study_name, storage=config.storage_url)
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.user_attrs["kernel_layers"] == []
        assert len(t.user_attrs["fallback_layers"]) == 3  # float32 on CPU: all dequantized
    assert summary.latency_warning is not None
    assert "100% of the quantized layers" in summary.latency_warning
    modelled = run_search(
        RunConfig(model="toytask:make", out_dir=str(tmp_path / "m"), device="cpu", trials=2,
                  latency="model:cpu-epyc-2c"),
        progress=False,
    )  # fmt: skip
    assert modelled.latency_warning is None
