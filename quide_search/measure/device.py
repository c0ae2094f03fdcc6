"""The torch device a measurement runs on (``--device auto|cpu|cuda``)."""

from __future__ import annotations

import torch

from quide_search.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``--device auto|cpu|cuda``.

    Raises:
        ConfigError: For an unknown name, or ``cuda`` on a machine without CUDA.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be one of auto, cpu, cuda, but got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda needs a CUDA GPU, but none is available. Use --device cpu."
        )
    return torch.device(name)
