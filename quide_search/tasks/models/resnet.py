"""ResNet-18 from torchvision: 21 quantizable layers (20 convolutions and the classifier).

On ImageNet it is torchvision's own architecture with torchvision's IMAGENET1K_V1 weights
(``--weights imagenet``, the default there). On small greyscale images (mnist-5k) the stem
becomes a 3x3 stride-2 convolution of the input channels without the max-pool, and the model is
trained on first use (seeded, cached): the embedded many-layer CNN that works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from quide_search.errors import DataError
from quide_search.tasks.data import Splits
from quide_search.tasks.models._base import ModelSpec, register_model

__all__ = ["imagenet_weights"]


def _build(splits: Splits) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(num_classes=splits.num_classes)
    channels, height = splits.input_shape[0], splits.input_shape[1]
    if height < 64:
        # 28x28 digits through the 7x7 stride-2 stem and the pool would reach layer1 at 7x7;
        # a 3x3 stride-2 stem without the pool keeps 14x14.
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def imagenet_weights() -> dict[str, Any]:
    """torchvision's IMAGENET1K_V1 state dict, from the torch hub cache or the network.

    Raises:
        DataError: If the file is not cached and cannot be downloaded.
    """
    import torch
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return dict(weights.get_state_dict(progress=False))
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise DataError(
            "--weights imagenet needs torchvision's ResNet-18 IMAGENET1K_V1 file, which is not "
            f"cached and could not be downloaded ({type(e).__name__}). Put "
            f"{Path(weights.url).name} into {str(folder)!r}, or pass --weights PATH."
        ) from e


register_model(
    ModelSpec(
        name="resnet18",
        build=_build,
        datasets=("imagenet", "mnist-5k"),
        description="torchvision ResNet-18 (21 quantizable layers); --weights imagenet on "
        "ImageNet, trained on first use on mnist-5k",
        dataset_epochs={"mnist-5k": 2},
        pretrained={"imagenet": imagenet_weights},
        default_weights={"imagenet": "imagenet"},
    )
)
