"""ImageNet-1K validation images in ImageFolder layout, with torchvision's standard transform.

``--data-dir`` holds one folder per class (the validation set arranged by class, as
torchvision's ``ImageFolder`` reads it; sorted folder names give the class indices, which for
the 1,000 WordNet ids are the indices ResNet-18's published weights use). Seeded, disjoint
subsets of ``--eval-samples`` (default 10,000), ``--calib-samples`` (default 512) and
``--test-samples`` (default 10,000, the held-out test split) images are decoded once,
resized to 256, centre-cropped to 224 and normalised with ImageNet's mean and std.
They are held as float32 tensors: 10,000 images take about 6 GB (so the defaults, 12 GB).
"""

from __future__ import annotations

import torch

from quide_search.errors import DataError
from quide_search.tasks.data._base import DataRequest, Split, Splits, register_dataset
from quide_search.tasks.data.vision import data_root

__all__ = ["CALIB_SAMPLES", "EVAL_SAMPLES", "TEST_SAMPLES"]

EVAL_SAMPLES = 10_000
CALIB_SAMPLES = 512
TEST_SAMPLES = 10_000
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@register_dataset("imagenet", needs="an ImageFolder under --data-dir (one folder per class)")
def load_imagenet_splits(request: DataRequest) -> Splits:
    """Decode seeded eval, calibration and test subsets of an ImageFolder of validation images."""
    from torchvision import datasets, transforms

    root = data_root(request)
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(_MEAN, _STD),
        ]
    )
    try:
        folder = datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, OSError) as e:
        raise DataError(
            f"--dataset imagenet needs --data-dir ({str(root)!r} now) in ImageFolder layout: "
            "one folder per class holding its images (e.g. the ILSVRC2012 validation set "
            f"sorted into its 1,000 WordNet-id folders). {e}"
        ) from e
    calib_n = request.calib_samples or CALIB_SAMPLES
    if len(folder) <= calib_n + 1:
        raise DataError(
            f"--calib-samples ({calib_n}) must be at most {len(folder) - 2}: the {len(folder)} "
            f"images in {str(root)!r} need room for eval and test images too. Lower "
            "--calib-samples or use the full validation set."
        )
    eval_n = min(request.eval_samples or EVAL_SAMPLES, len(folder) - calib_n - 1)
    test_n = min(request.test_samples or TEST_SAMPLES, len(folder) - calib_n - eval_n)
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(request.seed))

    def decode(indices: torch.Tensor) -> Split:
        images, labels = zip(*(folder[int(i)] for i in indices), strict=True)
        return Split(torch.stack(images), torch.tensor(labels, dtype=torch.long))

    eval_ = decode(order[:eval_n])
    empty = Split(eval_.inputs[:0], eval_.labels[:0])
    held = eval_n + calib_n
    return Splits(
        name="imagenet",
        train=empty,
        calib=decode(order[eval_n:held]),
        eval=eval_,
        test=decode(order[held : held + test_n]),
        input_shape=(3, 224, 224),
        num_classes=len(folder.classes),
        seed=request.seed,
    )
