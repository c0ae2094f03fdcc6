"""What a study's reader is told about its T: fallback layers, and the way to real kernels."""

from __future__ import annotations

import optuna
import pytest

from quide_search.records import StudyKey, TrialKey
from quide_search.study.warnings import latency_warnings


def _study(device: str, fallback: int, kernel: int) -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr(StudyKey.PROTOCOL, {"latency": {"device": device, "method": "wall_clock",
                                                        "source": "table"}})  # fmt: skip
    trial = study.ask()
    trial.set_user_attr(TrialKey.FALLBACK_LAYERS, [f"f{i}" for i in range(fallback)])
    trial.set_user_attr(TrialKey.KERNEL_LAYERS, [f"k{i}" for i in range(kernel)])
    study.tell(trial, 1.0)
    return study


def test_a_cpu_study_of_fallback_layers_is_pointed_to_onnxruntime() -> None:
    warning = latency_warnings(_study("cpu", fallback=3, kernel=1))
    assert warning is not None
    assert warning.startswith("warning: 75% of the quantized layers in this study ran no low-bit")
    assert "--backend onnxruntime runs w8a8 and int4 plans with real int8/int4 kernels" in warning


@pytest.mark.parametrize(("device", "fallback", "kernel"), [("NVIDIA H100", 3, 1), ("cpu", 1, 3)])
def test_no_onnxruntime_advice_off_a_cpu_or_where_kernels_ran(
    device: str, fallback: int, kernel: int
) -> None:
    warning = latency_warnings(_study(device, fallback, kernel))
    assert warning is None or "onnxruntime" not in warning
    assert (warning is None) == (fallback <= kernel)
