"""Shared fixtures: a private cache, the toy task with a fake latency source, the digits task."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    # A test that changes torch's thread count must not leak it: float training reproduces
    # bit for bit only at the same thread count.
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def any_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency tables pass their check, and predict any T > 0, whatever this machine's noise
    (a busy CI runner can time the check's plans 100x slower): for the tests of how a study
    uses a table. Tests of the check and its guard keep the real bounds."""
    import math

    from quide_search.latency import table_check

    monkeypatch.setattr(table_check, "TABLE_ERROR_BOUND", math.inf)
    monkeypatch.setattr(table_check, "RANGE_FACTOR", math.inf)


@pytest.fixture(scope="session")
def toy_task() -> Any:
    """The toy task (tests/toytask.py) as quide-search resolves ``--model toytask:make``."""
    from quide_search.tasks.resolver import load_task

    return load_task(model="toytask:make")


@pytest.fixture(scope="session")
def digits_task(_private_cache: Path) -> Any:
    """SimpleCNN on digits, trained once for the session (2-3 s)."""
    from quide_search.tasks.resolver import load_task

    return load_task(model="simplecnn", dataset="digits")


def protocol_for(task: Any, **config: Any) -> Any:
    """The protocol of ``RunConfig(**config)`` on ``task`` (CPU), as a study would build it."""
    import torch

    from quide_search.config import RunConfig
    from quide_search.protocol_builder import build_protocol

    run = RunConfig(model=task.model_name, dataset=task.dataset_name, device="cpu", **config)
    return build_protocol(run, task, device=torch.device("cpu"))


def fake_scorer(task: Any, **config: Any) -> Any:
    """A scorer of ``task`` with the deterministic fake latency source."""
    import torch
    from fakes import FakeLatency

    from quide_search.measure.scorer import Scorer

    protocol = protocol_for(task, **config)
    return Scorer.build(task, protocol, device=torch.device("cpu"), latency=FakeLatency())


@pytest.fixture(scope="session")
def toy_scorer(toy_task: Any) -> Any:
    """A scorer of the toy task with the fake latency source."""
    return fake_scorer(toy_task)


@pytest.fixture(scope="session")
def cpu_scorer(digits_task: Any) -> Any:
    """A scorer of the digits task with measured T on the CPU."""
    import torch

    from quide_search.measure.scorer import Scorer

    protocol = protocol_for(digits_task, latency="measured")
    return Scorer.build(digits_task, protocol, device=torch.device("cpu"))


def _tiny_text() -> str:
    """A few thousand words of a small, regular language (numbers counting up), made here."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    lines = []
    for start in range(300):
        lines.append(" ".join(words[(start + i) % 10] for i in range(12)) + " .")
    return "\n".join(lines) + "\n"


def _save_tiny_lm(root: Path, build: Callable[[int], Any]) -> tuple[Path, Path]:
    """Save ``build(vocab_size)`` with a word-level tokenizer, like a hub model, and a text."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = root / "text.txt"
    text.write_text(_tiny_text(), encoding="utf-8")
    words = ["[PAD]", "[UNK]", "[EOS]", ".", "zero", "one", "two", "three", "four", "five",
             "six", "seven", "eight", "nine"]  # fmt: skip
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    torch.manual_seed(0)
    folder = root / "model"
    build(len(words)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, text


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-block Llama built from a config, with a word-level tokenizer, saved like a hub model.

    Returns the model directory and a text file to score it on. The weights are random (seeded):
    the tests check the machinery, not the language modelling.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(vocab: int) -> Any:
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, eos_token_id=2, bos_token_id=2, tie_word_embeddings=False,
        ))  # fmt: skip

    return _save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), build)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-block GPT-2 (transformers ``Conv1D`` layers), saved like :func:`tiny_llama`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(vocab: int) -> Any:
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
            pad_token_id=0, eos_token_id=2, bos_token_id=2,
        ))  # fmt: skip

    return _save_tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"), build)
