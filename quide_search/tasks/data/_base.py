"""Dataset splits and the dataset registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from quide_search.errors import ConfigError
from quide_search.tasks.registry import Registry

__all__ = [
    "DATASETS",
    "DATASET_NEEDS",
    "DataRequest",
    "Split",
    "Splits",
    "register_dataset",
    "seeded_splits",
]


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split, as tensors ready for the model."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def first(self, n: int | None) -> Split:
        """The first ``n`` samples (all of them for None)."""
        return self if n is None else Split(self.inputs[:n], self.labels[:n])


@dataclass(frozen=True)
class Splits:
    """Disjoint train / calibration / eval / test splits of one dataset.

    The search scores P on ``eval`` (the search split) and its gate reads that P; ``test`` is
    held out from everything the search sees and scores only the finalists at the end of a
    run, so the recommended plan's reported P is not the one it was selected on.

    Attributes:
        name: Registered dataset name.
        input_shape: Shape of one input, channel first (C, H, W).
        num_classes: Number of label classes.
        seed: Seed of the permutation that made the splits.
    """

    name: str
    train: Split
    calib: Split
    eval: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int

    def limited(self, *, eval: int | None, calib: int | None, test: int | None = None) -> Splits:
        """Return these splits with at most ``eval`` eval, ``calib`` calibration and ``test``
        test samples (the first of each seeded split; None keeps a split whole). The train
        split, and so a trained model, does not change."""
        import dataclasses

        return dataclasses.replace(
            self,
            eval=self.eval.first(eval),
            calib=self.calib.first(calib),
            test=self.test.first(test),
        )

    def describe(self) -> dict[str, Any]:
        """Return the split sizes and seed, as recorded in every study's protocol."""
        return {
            "dataset": self.name,
            "train": len(self.train),
            "calib": len(self.calib),
            "eval": len(self.eval),
            "test": len(self.test),
            "split_seed": self.seed,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


@dataclass(frozen=True)
class DataRequest:
    """What a loader may use: where data lives and whether it may download."""

    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    eval_samples: int | None = None
    calib_samples: int | None = None
    test_samples: int | None = None


DatasetLoader = Callable[[DataRequest], Splits]
DATASETS: Registry[DatasetLoader] = Registry("dataset", "--dataset")


DATASET_NEEDS: dict[str, str] = {}
"""What each registered dataset needs, for ``quide-search models``."""


def register_dataset(
    name: str, *, needs: str = "nothing"
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a loader ``DataRequest -> Splits`` under ``name``; ``needs`` says what it reads."""
    DATASET_NEEDS[name.lower()] = needs
    return DATASETS.register(name)


def seeded_dataset(
    name: str,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    calib: int,
    eval: int,
    test: int,
    num_classes: int,
) -> Splits:
    """Return the :class:`Splits` of one in-memory dataset cut by :func:`seeded_splits`."""
    train, calib_split, eval_split, test_split = seeded_splits(
        inputs, labels, seed=seed, calib=calib, eval=eval, test=test
    )
    return Splits(
        name=name,
        train=train,
        calib=calib_split,
        eval=eval_split,
        test=test_split,
        input_shape=tuple(inputs.shape[1:]),
        num_classes=num_classes,
        seed=seed,
    )


def seeded_splits(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    calib: int,
    eval: int,
    test: int = 0,
) -> tuple[Split, Split, Split, Split]:
    """Cut one seeded permutation into disjoint train / calib / eval / test splits.

    The eval, calibration and test splits are taken first, in that order, so their contents
    do not depend on how many samples remain for training (nor eval's and calib's on the
    size of test).

    Raises:
        ConfigError: If the three held-out splits leave no sample to train on.
    """
    n = int(labels.shape[0])
    if calib + eval + test >= n:
        raise ConfigError(
            f"calib + eval + test samples must be < {n} (the dataset size), "
            f"but got calib={calib}, eval={eval}, test={test}."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cuts = [0, eval, eval + calib, eval + calib + test, n]
    ev, ca, te, tr = (order[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
    return tuple(  # type: ignore[return-value]
        Split(inputs[i].contiguous(), labels[i].contiguous()) for i in (tr, ca, ev, te)
    )
