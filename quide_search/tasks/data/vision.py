"""MNIST and CIFAR-10 through torchvision's own loaders, read from ``--data-dir``.

Nothing is downloaded unless the user passes ``--download``: a missing dataset is a one-line
error naming the layout torchvision expects. The train split is the dataset's training set; the
eval, calibration and test splits are seeded, disjoint subsets of its test set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from quide_search.errors import DataError
from quide_search.tasks.data._base import (
    DataRequest,
    Split,
    Splits,
    register_dataset,
    seeded_splits,
)

__all__ = ["CALIB_SAMPLES", "EVAL_SAMPLES", "TEST_SAMPLES", "data_root"]

EVAL_SAMPLES = 5000
CALIB_SAMPLES = 500
TEST_SAMPLES = 4000

_LAYOUT = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}


def data_root(request: DataRequest) -> Path:
    """``--data-dir``, else ``$QUIDE_DATA_DIR``, else ``./data``."""
    from quide_search.tasks.catalog import data_dir_path

    return data_dir_path(request.data_dir)


def _open(name: str, factory: Callable[..., Any], request: DataRequest, train: bool) -> Any:
    root = data_root(request)
    try:
        return factory(root=str(root), train=train, download=request.download)
    except RuntimeError as e:
        if request.download:
            raise DataError(f"--download of {name} into {str(root)!r} failed: {e}") from e
        raise DataError(
            f"--dataset {name} needs its files under --data-dir ({str(root)!r} now) laid out "
            f"as {_LAYOUT[name]}, but they are not there. Pass --data-dir DIR where they are, "
            "or add --download to fetch them (needs network access)."
        ) from e


def _tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(dataset.data)
    # MNIST holds N x H x W, CIFAR-10 N x H x W x C, both uint8.
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return images.float().div(255.0).contiguous(), torch.as_tensor(dataset.targets).long()


def _load(name: str, factory: Callable[..., Any], request: DataRequest) -> Splits:
    train_x, train_y = _tensors(_open(name, factory, request, train=True))
    test_x, test_y = _tensors(_open(name, factory, request, train=False))
    # Of the test set: eval first, then calibration, then the held-out test split.
    room = len(test_y) - CALIB_SAMPLES - 1
    test_n = min(TEST_SAMPLES, room // 2)
    eval_n = min(EVAL_SAMPLES, room - test_n)
    if min(eval_n, test_n) < 1:
        raise DataError(
            f"the {name} test set must hold more than {CALIB_SAMPLES + 2} samples, but the one "
            f"in {str(data_root(request))!r} holds {len(test_y)}. Check the files."
        )
    _, calib, eval_, test = seeded_splits(
        test_x, test_y, seed=request.seed, calib=CALIB_SAMPLES, eval=eval_n, test=test_n
    )
    return Splits(
        name=name,
        train=Split(train_x, train_y),
        calib=calib,
        eval=eval_,
        test=test,
        input_shape=tuple(train_x.shape[1:]),
        num_classes=10,
        seed=request.seed,
    )


@register_dataset("mnist", needs="files under --data-dir, or --download")
def load_mnist_splits(request: DataRequest) -> Splits:
    """MNIST from ``<data-dir>/MNIST/raw``: train 60,000; eval 5,000, calib 500 and test 4,000
    of the test set."""
    from torchvision.datasets import MNIST

    return _load("mnist", MNIST, request)


@register_dataset("cifar10", needs="files under --data-dir, or --download")
def load_cifar10_splits(request: DataRequest) -> Splits:
    """CIFAR-10 from ``<data-dir>/cifar-10-batches-py``: train 50,000; eval/calib from test."""
    from torchvision.datasets import CIFAR10

    return _load("cifar10", CIFAR10, request)
