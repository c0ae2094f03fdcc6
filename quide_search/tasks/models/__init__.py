"""Registered models: ``@register_model`` specs, the built-in SimpleCNN and ResNet-18."""

from __future__ import annotations

from quide_search.tasks.models import embedded as _embedded  # noqa: F401  (smollm2-135m, minilm)
from quide_search.tasks.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from quide_search.tasks.models import simplecnn as _simplecnn  # noqa: F401  (registers "simplecnn")
from quide_search.tasks.models._base import MODELS, ModelSpec, register_model
from quide_search.tasks.models.simplecnn import SimpleCNN

__all__ = ["MODELS", "ModelSpec", "SimpleCNN", "register_model"]
