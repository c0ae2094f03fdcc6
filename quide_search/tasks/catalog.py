"""The built-in models and datasets by name, for checking arguments before torch is imported.

The registries (:data:`quide_search.tasks.models.MODELS`, :data:`quide_search.tasks.data.DATASETS`)
are what loads a task; importing them imports torch, torchvision and every model's code, which
takes seconds. This module lists the built-in names, and where each dataset's files are, so the
CLI answers a misspelt ``--model`` or ``--dataset`` at once and picks a default dataset without
loading anything. A test holds it equal to the registries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from quide_search.errors import ConfigError, did_you_mean

__all__ = [
    "DATASETS",
    "HF_PREFIX",
    "MODEL_DATASETS",
    "MODEL_WEIGHTS",
    "TEXT_DATASET",
    "check_names",
    "check_served",
    "data_dir_path",
    "default_dataset",
    "names_causal_lm",
    "is_factory_spec",
]

HF_PREFIX = "hf:"
TEXT_DATASET = f"stdlib-docstrings-py{sys.version_info.major}.{sys.version_info.minor}"
"""The docstring text the embedded language models are scored on (it changes with Python)."""

MODEL_DATASETS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "minilm": (f"sentences-{TEXT_DATASET}",),
    "resnet18": ("imagenet", "mnist-5k"),
    "simplecnn": ("digits", "mnist-5k", "mnist", "cifar10"),
    "smollm2-135m": (TEXT_DATASET,),
})  # fmt: skip
"""Built-in model -> the datasets it serves, its paper setting first."""

MODEL_WEIGHTS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"resnet18": MappingProxyType({"imagenet": "imagenet"})}
)
"""Built-in model -> dataset -> the ``--weights`` it uses there by default."""

DATASETS: tuple[str, ...] = ("cifar10", "digits", "imagenet", "mnist", "mnist-5k")
"""The registered datasets that ``--dataset`` may name for any model serving them."""


def is_factory_spec(model: str) -> bool:
    """Whether ``--model`` names a factory (``package.module:function``)."""
    return ":" in model and not model.startswith(HF_PREFIX)


def names_causal_lm(model: str) -> bool:
    """Whether ``--model`` names a causal LM scored on text (an ``hf:`` path, smollm2-135m)."""
    return model.startswith(HF_PREFIX) or model == "smollm2-135m"


def data_dir_path(data_dir: str | None) -> Path:
    """``--data-dir``, else ``$QUIDE_DATA_DIR``, else ``./data``.

    Raises:
        ConfigError: If the folder named is a file (the flag or the variable is named).
    """
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("QUIDE_DATA_DIR")
    if env and Path(env).exists() and not Path(env).is_dir():
        raise ConfigError(
            f"the environment variable QUIDE_DATA_DIR must name a folder, but {env!r} is a "
            "file. Point it at the folder that holds the datasets, or unset it."
        )
    return Path(env or "data")


def check_names(model: str, dataset: str | None) -> None:
    """Refuse a ``--model`` or ``--dataset`` that no built-in model or dataset has.

    ``hf:`` paths and factories are checked when they load; so is a name registered by a
    plug-in, which this catalog cannot know: the CLI knows only the built-ins.

    Raises:
        ConfigError: In the registries' words, with close matches and the full list.
    """
    if model.startswith(HF_PREFIX) or is_factory_spec(model):
        return
    key = model.lower()
    if key not in MODEL_DATASETS:
        raise ConfigError(
            f"--model must name a registered model, but got {model!r}."
            + did_you_mean(key, MODEL_DATASETS)
            + f" Registered: {', '.join(sorted(MODEL_DATASETS))}."
        )
    if dataset is not None:
        check_served(key, MODEL_DATASETS[key], dataset)


def check_served(model: str, served: tuple[str, ...], dataset: str) -> None:
    """Refuse a ``--dataset`` that ``model`` does not serve (``served``: its datasets).

    Raises:
        ConfigError: Listing the model's datasets, with a close match.
    """
    if dataset.lower() not in served:
        raise ConfigError(
            f"--dataset must be one of {', '.join(served)} for model {model!r}, but got "
            f"{dataset!r}." + did_you_mean(dataset.lower(), served)
        )


def default_dataset(model: str, data_dir: str | None) -> tuple[str, str | None]:
    """The dataset a run without ``--dataset`` uses, and a line saying why when it is not the
    model's first.

    A model's first dataset is its paper setting (ResNet-18: ImageNet). Where that dataset's
    files are not at the data dir, the first of its datasets that needs no files is used, so
    the command runs offline, and the line gives the flags for the paper's setting.
    """
    served = MODEL_DATASETS.get(model.lower())
    if served is None:
        return "digits", None
    first = served[0]
    offline = [d for d in served if _present(d, data_dir)]
    if not offline or offline[0] == first:
        return first, None
    weights = MODEL_WEIGHTS.get(model.lower(), {}).get(first)
    flags = f"--dataset {first} --data-dir DIR" + (f" --weights {weights}" if weights else "")
    where = repr(str(data_dir_path(data_dir)))
    return offline[0], (
        f"note: no {first} data in {where}, so {model} runs offline on {offline[0]}; for the "
        f"{first} setting pass {flags}."
    )


def _present(dataset: str, data_dir: str | None) -> bool:
    """Whether ``dataset`` can be read without a download (a cheap look, no decoding)."""
    root = data_dir_path(data_dir)
    try:
        if dataset == "imagenet":  # an ImageFolder: one folder per class
            return root.is_dir() and any(p.is_dir() for p in root.iterdir())
        if dataset == "mnist":
            return (root / "MNIST" / "raw").is_dir()
        if dataset == "cifar10":
            return (root / "cifar-10-batches-py").is_dir()
    except OSError:
        return False
    return True
