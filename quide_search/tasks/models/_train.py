"""Seeded training of registered float models, cached so later runs start at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from quide_search.errors import DataError
from quide_search.tasks.cache import cache_dir
from quide_search.tasks.data import Split

__all__ = ["load_or_train", "train_classifier"]


def train_classifier(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    desc: str = "training",
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy; deterministic for a given seed on CPU.

    ``desc`` names the progress bar (one step per batch) drawn inside a run.
    """
    from quide_search.progress import bar

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(split)
    # Every epoch's order up front: the same permutations, in the same order, as drawing each
    # at the epoch's start (the generator serves nothing else).
    orders = [torch.randperm(n, generator=generator) for _ in range(epochs)]
    steps = [(epoch, start) for epoch in range(epochs) for start in range(0, n, batch_size)]
    for epoch, start in bar(steps, desc, unit="batch"):
        idx = orders[epoch][start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(split.inputs[idx]), split.labels[idx])
        loss.backward()
        optimizer.step()
        if start + batch_size >= n:
            scheduler.step()
    return model.eval()


def load_or_train(
    model: nn.Module, split: Split, *, key: str, epochs: int, seed: int, force: bool = False
) -> tuple[nn.Module, Path]:
    """Load cached weights for ``key`` into ``model``, or train and cache them.

    The cache file is written atomically, so an interrupted first run never leaves a truncated
    checkpoint behind. ``force`` trains again and replaces the cached file.
    """
    path = cache_dir() / f"{key}.pt"
    if path.exists() and not force:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, EOFError, KeyError) as e:
            raise DataError(
                f"cached weights {str(path)!r} cannot be loaded ({e}). Delete the file to "
                "retrain, or set QUIDE_CACHE_DIR to another directory."
            ) from e
        return model.eval(), path
    with torch.enable_grad():
        desc = f"training {key.split('-v')[0]} on first use ({epochs} epochs; cached after)"
        train_classifier(model, split, epochs=epochs, seed=seed, desc=desc)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model.eval(), path
