from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quide_search.errors import ConfigError
from quide_search.tasks.resolver import load_task


def test_training_is_deterministic_across_fresh_caches(
    digits_task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # Disturb the global RNG first: the cached weights must not depend on it.
    torch.rand(1000)
    monkeypatch.setenv("QUIDE_CACHE_DIR", str(tmp_path))
    again = load_task(model="simplecnn", dataset="digits")
    assert again.weights_path is not None and again.weights_path.parent == tmp_path
    for key, value in digits_task.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_trained_model_reaches_the_accuracy_floor(digits_task) -> None:  # type: ignore[no-untyped-def]
    split = digits_task.splits.eval
    with torch.no_grad():
        accuracy = (digits_task.model(split.inputs).argmax(1) == split.labels).float().mean()
    assert float(accuracy) >= 0.97
    assert len(split) == 500 and len(digits_task.splits.calib) == 200


def test_model_dataset_mismatch_is_an_error() -> None:
    with pytest.raises(ConfigError, match="Did you mean: 'digits'"):
        load_task(model="simplecnn", dataset="digitz")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_replaces_the_trained_default(
    tmp_path: Path,
    digits_task,  # type: ignore[no-untyped-def]
    suffix: str,
) -> None:
    from safetensors.torch import save_file

    state = {k: v * 0.5 for k, v in digits_task.model.state_dict().items()}
    path = tmp_path / f"half{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    task = load_task(model="simplecnn", dataset="digits", weights=str(path))
    assert task.weights_path == path
    for key, value in task.model.state_dict().items():
        assert torch.equal(value, state[key])
