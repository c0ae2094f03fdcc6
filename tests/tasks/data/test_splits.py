"""Seeded splits: the held-out test split is disjoint from everything the search sees."""

from __future__ import annotations

import pytest
import torch

from quide_search.errors import ConfigError
from quide_search.tasks.data import DATASETS, DataRequest
from quide_search.tasks.data._base import seeded_splits


def _ids(split) -> set[int]:  # type: ignore[no-untyped-def]
    return {int(v) for v in split.inputs[:, 0]}


def test_four_splits_are_disjoint_cover_the_data_and_repeat_by_seed() -> None:
    inputs = torch.arange(100).float().unsqueeze(1)
    labels = torch.arange(100) % 3
    train, calib, eval_, test = seeded_splits(inputs, labels, seed=7, calib=10, eval=20, test=15)
    parts = [_ids(s) for s in (train, calib, eval_, test)]
    assert [len(p) for p in parts] == [55, 10, 20, 15]
    assert set().union(*parts) == set(range(100))
    assert sum(len(p) for p in parts) == 100  # pairwise disjoint
    again = seeded_splits(inputs, labels, seed=7, calib=10, eval=20, test=15)
    assert torch.equal(again[3].inputs, test.inputs)
    # Eval and calib do not move when the test split is added: only training shrinks.
    _, calib0, eval0, _ = seeded_splits(inputs, labels, seed=7, calib=10, eval=20)
    assert torch.equal(eval0.inputs, eval_.inputs) and torch.equal(calib0.inputs, calib.inputs)
    assert labels[test.inputs[:, 0].long()].tolist() == test.labels.tolist()


def test_held_out_splits_must_leave_a_sample_to_train_on() -> None:
    inputs, labels = torch.zeros(10, 1), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"calib \+ eval \+ test samples must be < 10"):
        seeded_splits(inputs, labels, seed=0, calib=3, eval=4, test=3)


def test_digits_have_a_test_split_recorded_and_cut_by_test_samples() -> None:
    splits = DATASETS.get("digits")(DataRequest(seed=0))
    assert (len(splits.train), len(splits.calib), len(splits.eval), len(splits.test)) == (
        797, 200, 500, 300,
    )  # fmt: skip
    described = splits.limited(eval=None, calib=None, test=50).describe()
    assert (described["eval"], described["test"], described["calib"]) == (500, 50, 200)
    rows = {
        name: {bytes(x.numpy()) for x in getattr(splits, name).inputs}
        for name in ("train", "calib", "eval", "test")
    }
    assert all(not rows["test"] & rows[name] for name in ("train", "calib", "eval"))
