"""MNIST through torchvision's loader, on MNIST-format files this test writes itself."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from quide_search.errors import DataError
from quide_search.tasks.data import DATASETS, DataRequest
from quide_search.tasks.resolver import load_task


def _write_idx(path: Path, data: torch.Tensor, magic: int) -> None:
    header = struct.pack(">II", magic, data.shape[0]) + b"".join(
        struct.pack(">I", d) for d in data.shape[1:]
    )
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


def _digits_like(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 images whose class is where a bright 6x6 block sits, plus noise: learnable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for i, k in enumerate(labels.tolist()):
        row, col = 2 + (k // 5) * 13, 1 + (k % 5) * 5
        images[i, row : row + 6, col : col + 6] = 255
    return images, labels


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 1200, 1), ("t10k", 1000, 2)):
        images, labels = _digits_like(n, seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 0x803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 0x801)
    return root


def test_mnist_splits_are_seeded_and_disjoint(mnist_dir: Path) -> None:
    load = DATASETS.get("mnist")
    splits = load(DataRequest(seed=0, data_dir=str(mnist_dir)))
    again = load(DataRequest(seed=0, data_dir=str(mnist_dir)))
    sizes = [len(s) for s in (splits.train, splits.calib, splits.eval, splits.test)]
    assert sizes == [1200, 500, 250, 249]  # a small test set is shared out evenly
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert torch.equal(splits.eval.inputs, again.eval.inputs)
    assert float(splits.eval.inputs.min()) >= 0.0 and float(splits.eval.inputs.max()) == 1.0
    # calib, eval and test come from the test set and share no image.
    calib = {tuple(x.flatten().tolist()) for x in splits.calib.inputs}
    test = {tuple(x.flatten().tolist()) for x in splits.test.inputs}
    assert not any(tuple(x.flatten().tolist()) in calib | test for x in splits.eval.inputs)
    assert not calib & test


def test_simplecnn_trains_on_mnist_files(mnist_dir: Path) -> None:
    task = load_task(model="simplecnn", dataset="mnist", data_dir=str(mnist_dir))
    with torch.no_grad():
        predicted = task.model(task.splits.eval.inputs).argmax(-1)
    accuracy = float((predicted == task.splits.eval.labels).float().mean())
    assert accuracy > 0.9  # the block position is easy to learn; chance is 0.1
    assert task.weights_path is not None and "mnist" in task.weights_path.name


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_files_name_the_layout_and_the_flag(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(DataError) as e:
        DATASETS.get(dataset)(DataRequest(data_dir=str(tmp_path)))
    message = str(e.value)
    assert "--download" in message and str(tmp_path) in message
    assert ("MNIST/raw" if dataset == "mnist" else "cifar-10-batches-py") in message
