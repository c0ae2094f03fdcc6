"""One resolver from ``--model`` to a task: registered names, ``hf:PATH`` and factories.

Built once per study: the float model is trained (or loaded from the cache), the splits are
materialised as tensors, and everything a trial needs is at hand.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quide_search.errors import ConfigError, DataError
from quide_search.tasks.catalog import check_served
from quide_search.tasks.data import DATASETS, DataRequest, Splits
from quide_search.tasks.models import MODELS
from quide_search.tasks.models._base import ModelSpec
from quide_search.tasks.models._train import load_or_train
from quide_search.tasks.models.causal_lm import HF_PREFIX, TextTask, causal_lm_task
from quide_search.tasks.models.custom import is_factory_spec, load_factory
from quide_search.tasks.task import Task

__all__ = ["DATA_SEED", "load_task"]

DATA_SEED = 0
"""Seed of the data splits and of float-model training: fixed so that every search seed is
scored on the same data with the same float model."""


_RECIPE_VERSION = 3
"""Version of the training recipe in the cache key: 2 seeds the initial weights too; 3 trains
without the held-out test split, so weights that saw its samples are never reused."""


def _check_no_text(model: str, text: TextTask | None) -> None:
    """Refuse ``--text-file`` for a model that reads no text (it would be ignored silently)."""
    if text is not None and text.text_file:
        raise ConfigError(
            "--text-file is read only by causal language models (hf: paths and the embedded "
            f"ones), but --model {model!r} is not one. Drop --text-file, or name a language "
            "model."
        )


def load_task(
    *,
    model: str = "simplecnn",
    dataset: str = "digits",
    data_dir: str | None = None,
    download: bool = False,
    weights: str | None = None,
    text: TextTask | None = None,
    device_type: str = "cpu",
    epochs: int | None = None,
    retrain: bool = False,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    test_samples: int | None = None,
) -> Task:
    """Build the float model for ``model`` on ``dataset`` and its data splits.

    Args:
        model: Registered model name.
        dataset: Registered dataset name.
        data_dir: Where datasets that need files read them from.
        download: Let a dataset loader download missing files.
        weights: A local state dict (``.pt`` or ``.safetensors``) to use instead of the seeded
            training run cached on first use.
        text: For ``hf:`` models, the text and window settings.
        device_type: ``cpu`` or ``cuda``: picks an ``hf:`` model's dtype under ``auto``.
        epochs: Training epochs instead of the model's default for the dataset.
        retrain: Train again even if cached weights exist (``quide-search train``).
        eval_samples: Eval subset size, for datasets that sample one (imagenet).
        calib_samples: Calibration subset size, likewise.
        test_samples: Held-out test subset size, likewise.

    Raises:
        ConfigError: For an unknown model or dataset, or a dataset the model does not serve.
        DataError: For missing data, or weights that are missing or do not fit the model.
    """
    if model.startswith(HF_PREFIX):
        settings = text or TextTask(path=model.removeprefix(HF_PREFIX), text_file=None)
        return causal_lm_task(model, settings, device_type, seed=DATA_SEED)
    if is_factory_spec(model):
        _check_no_text(model, text)
        return _custom_task(model)
    spec = MODELS.get(model)
    if spec.loader is None:
        _check_no_text(model, text)
    else:
        task: Task = spec.loader(
            text=text,
            device_type=device_type,
            eval_samples=eval_samples,
            calib_samples=calib_samples,
            test_samples=test_samples,
        )
        return task
    loader = DATASETS.get(dataset)
    check_served(spec.name, spec.datasets, dataset)
    weights = weights or spec.default_weights.get(dataset.lower())
    if weights is not None and weights not in spec.pretrained:
        _check_weights_file(weights)
    request = DataRequest(
        seed=DATA_SEED,
        data_dir=data_dir,
        download=download,
        eval_samples=eval_samples,
        calib_samples=calib_samples,
        test_samples=test_samples,
    )
    splits = loader(request).limited(eval=eval_samples, calib=calib_samples, test=test_samples)
    float_model, path, origin = _float_model(spec, splits, weights, epochs, retrain)
    return Task(
        model_name=spec.name,
        dataset_name=splits.name,
        model=float_model,
        splits=splits,
        weights_path=path,
        weights_origin=origin,
    )


def _float_model(
    spec: ModelSpec, splits: Splits, weights: str | None, epochs: int | None, retrain: bool
) -> tuple[nn.Module, Path | None, str]:
    """The registered model built for ``splits`` with its float weights, frozen in eval mode.

    Returns:
        The model; the weights file it read or trained into (None for built or pretrained
        weights); where its weights came from (``built``, ``pretrained:NAME``, ``file`` or
        ``trained:KEY``, stored in the protocol as ``weights_origin``).
    """
    # The initial weights are part of the seeded training run: without this the cached model
    # depends on whatever the global RNG held when the process got here.
    torch.manual_seed(DATA_SEED)
    model = spec.build(splits)
    path: Path | None = None
    origin = "built"  # the seeded initial weights: a model with no training epochs
    if weights is not None and weights in spec.pretrained:
        model.load_state_dict(spec.pretrained[weights]())
        origin = f"pretrained:{weights}"
    elif weights is not None:
        path = _load_weights(model, Path(weights), spec.name)
        origin = "file"
    elif (epochs := epochs or spec.epochs(splits.name)) > 0:
        key = (
            f"{spec.name}-{splits.name}-v{spec.arch_version}-e{epochs}"
            f"-s{DATA_SEED}-r{_RECIPE_VERSION}"
        )
        model, path = load_or_train(
            model, splits.train, key=key, epochs=epochs, seed=DATA_SEED, force=retrain
        )
        origin = f"trained:{key}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, path, origin


def _custom_task(spec: str) -> Task:
    custom = load_factory(spec)
    model = custom.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    splits = custom.splits()
    return Task(
        model_name=spec,
        dataset_name=splits.name,
        model=model,
        splits=splits,
        weights_path=None,
        kind="custom",
        score=custom.score,
        example=custom.example,
    )


def _check_weights_file(weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(
            f"--weights must name a state-dict file (.pt or .safetensors), but {weights!r} "
            f"{what}. Check the path, or drop --weights to use the trained default."
        )


def _load_weights(model: nn.Module, path: Path, name: str) -> Path:
    """Load a local state dict into ``model``; every key and shape must fit."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # torch, pickle and safetensors raise many types for a bad file
        reason = " ".join(str(e).split())[:300]
        raise DataError(
            f"--weights {str(path)!r} must hold a state dict that fits model {name!r}, but "
            f"loading it failed: {type(e).__name__}: {reason}. Use weights saved from this "
            "model (e.g. by `quide-search train`) or drop --weights."
        ) from e
    return path
