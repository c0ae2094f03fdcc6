"""Shared fixtures: a private cache (the float model is trained once per test session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Tests never read or write the user's cache; one trained SimpleCNN serves the session.
    path = tmp_path_factory.mktemp("quide-cache")
    old = os.environ.get("QUIDE_CACHE_DIR")
    os.environ["QUIDE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("QUIDE_CACHE_DIR", None)
    else:
        os.environ["QUIDE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def digits_task(_private_cache: Path):  # type: ignore[no-untyped-def]
    from quide_search.task import load_task

    return load_task(model="simplecnn", dataset="digits")


@pytest.fixture(scope="session")
def cpu_scorer(digits_task):  # type: ignore[no-untyped-def]
    import torch

    from quide_search.scorer import Scorer

    return Scorer(digits_task, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    # run_search fixes torch's thread count for the process (--threads); tests must not leak
    # it, because float training reproduces bit-for-bit only at the same thread count.
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
