"""ImageNet in ImageFolder layout, on a tiny folder of random images the test writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quide_search.errors import DataError
from quide_search.tasks.data import DATASETS, DataRequest
from quide_search.tasks.resolver import load_task


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    g = torch.Generator().manual_seed(0)
    for c, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
        (root / wnid).mkdir()
        for i in range(7):
            pixels = torch.randint(0, 256, (300, 260 + 10 * c, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / wnid / f"img{i}.JPEG")
    return root


def test_seeded_disjoint_subsets_with_the_standard_transform(image_folder: Path) -> None:
    load = DATASETS.get("imagenet")
    request = DataRequest(seed=0, data_dir=str(image_folder), eval_samples=12, calib_samples=5)
    splits = load(request)
    assert splits.eval.inputs.shape == (12, 3, 224, 224) and len(splits.calib) == 5
    assert splits.num_classes == 3 and set(splits.eval.labels.tolist()) <= {0, 1, 2}
    assert torch.equal(load(request).eval.inputs, splits.eval.inputs)  # seeded
    # Normalised with ImageNet's mean and std: uniform noise lands around 0 with spread ~1.
    assert abs(float(splits.eval.inputs.mean())) < 0.5
    flat = {tuple(x[0, :2, :2].flatten().tolist()) for x in splits.calib.inputs}
    assert not any(tuple(x[0, :2, :2].flatten().tolist()) in flat for x in splits.eval.inputs)


def test_resnet18_runs_on_the_folder_with_local_weights(
    image_folder: Path, tmp_path: Path
) -> None:
    import torchvision

    from quide_search.config import RunConfig
    from quide_search.study import run_search

    torch.manual_seed(0)
    weights = tmp_path / "resnet18-3class.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    task = load_task(
        model="resnet18", dataset="imagenet", data_dir=str(image_folder), weights=str(weights),
        eval_samples=12, calib_samples=5,
    )  # fmt: skip
    from quide_search.backends import get_backend

    assert len(task.layers(get_backend("quanto"))) == 21 and task.weights_path == weights
    config = RunConfig(
        model="resnet18", dataset="imagenet", data_dir=str(image_folder), weights=str(weights),
        eval_samples=12, calib_samples=5, trials=2, out_dir=str(tmp_path), device="cpu",
        latency="model:cpu-epyc-2c", min_accuracy=0.0, max_accuracy_drop=None, warm_start=False,
    )  # fmt: skip
    summary = run_search(config, progress=False)
    assert summary.completed == 2 and summary.protocol["task"]["splits"]["eval"] == 12


def test_missing_folder_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ImageFolder layout: one folder per class"):
        DATASETS.get("imagenet")(DataRequest(data_dir=str(tmp_path / "none")))


def test_imagenet_weights_offline_say_where_the_file_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet18_Weights

    from quide_search.tasks.models.resnet import imagenet_weights

    def offline(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(DataError, match=r"resnet18-f37072fd\.pth into .*checkpoints"):
        imagenet_weights()
