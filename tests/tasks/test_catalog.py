"""The torch-free catalog of built-in names agrees with the registries it stands in for."""

from __future__ import annotations

from pathlib import Path

import pytest

from quide_search.errors import ConfigError
from quide_search.tasks import catalog
from quide_search.tasks.data import DATASETS
from quide_search.tasks.models import MODELS


def test_the_catalog_lists_exactly_the_registered_models_and_datasets() -> None:
    assert sorted(catalog.MODEL_DATASETS) == MODELS.names()
    for name, datasets in catalog.MODEL_DATASETS.items():
        spec = MODELS.get(name)
        assert datasets == spec.datasets
        assert dict(catalog.MODEL_WEIGHTS.get(name, {})) == dict(spec.default_weights)
    assert list(catalog.DATASETS) == DATASETS.names()


@pytest.mark.parametrize(
    ("model", "dataset", "message"),
    [
        ("simplecn", None, "--model must name a registered model, but got 'simplecn'. Did you "
                           "mean: 'simplecnn'?"),
        ("simplecnn", "digit", "--dataset must be one of digits, mnist-5k, mnist, cifar10 for "
                               "model 'simplecnn', but got 'digit'. Did you mean: 'digits'?"),
        ("resnet18", "digits", "--dataset must be one of imagenet, mnist-5k for model "
                               "'resnet18', but got 'digits'."),
    ],
)  # fmt: skip
def test_misspelt_names_are_refused_in_the_registries_words(
    model: str, dataset: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        catalog.check_names(model, dataset)
    assert str(error.value).startswith(message)
    catalog.check_names("hf:/models/x", "anything")  # checked when it loads
    catalog.check_names("pkg.mod:factory", None)


def test_present_data_picks_the_paper_setting(tmp_path: Path) -> None:
    assert catalog.default_dataset("resnet18", str(tmp_path))[0] == "mnist-5k"
    (tmp_path / "n01440764").mkdir()
    assert catalog.default_dataset("resnet18", str(tmp_path)) == ("imagenet", None)
    assert catalog.default_dataset("simplecnn", str(tmp_path)) == ("digits", None)
