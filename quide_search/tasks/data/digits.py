"""scikit-learn's bundled digits: 1,797 real 8x8 handwritten digits, no download needed."""

from __future__ import annotations

import torch

from quide_search.tasks.data._base import DataRequest, Splits, register_dataset, seeded_dataset

__all__ = ["CALIB_SAMPLES", "EVAL_SAMPLES", "TEST_SAMPLES", "load_digits_splits"]

EVAL_SAMPLES = 500
CALIB_SAMPLES = 200
TEST_SAMPLES = 300


@register_dataset("digits", needs="nothing (bundled with scikit-learn)")
def load_digits_splits(request: DataRequest) -> Splits:
    """Load the digits and cut seeded splits (eval 500, calib 200, test 300, train 797).

    Pixel values 0..16 are scaled to [0, 1]; inputs have shape (1, 8, 8).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    return seeded_dataset(
        "digits", images, labels, seed=request.seed, calib=CALIB_SAMPLES, eval=EVAL_SAMPLES,
        test=TEST_SAMPLES, num_classes=10,
    )  # fmt: skip
