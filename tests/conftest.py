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


def _tiny_text() -> str:
    """A few thousand words of a small, regular language (numbers counting up), made here."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    lines = []
    for start in range(300):
        lines.append(" ".join(words[(start + i) % 10] for i in range(12)) + " .")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-block Llama built from a config, with a word-level tokenizer, saved like a hub model.

    Returns the model directory and a text file to score it on. The weights are random (seeded):
    the tests check the machinery, not the language modelling.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-llama")
    text = root / "text.txt"
    text.write_text(_tiny_text(), encoding="utf-8")
    vocab = {
        w: i
        for i, w in enumerate(
            ["[PAD]", "[UNK]", "[EOS]", "."]
            + ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        )
    }
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=2, bos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, text
