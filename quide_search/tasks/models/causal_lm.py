"""Hugging Face causal language models (``--model hf:PATH_OR_ID``) scored on a text file.

The model and its tokenizer load with transformers' own ``from_pretrained`` (a local directory,
or a hub id where the network allows). The text (e.g. WikiText-2's raw test file) is tokenized
once and cut into windows of ``seq_len + 1`` tokens; seeded, disjoint sets of windows form the
eval and calibration splits. P is next-token top-1 accuracy over the eval windows' tokens, and
perplexity is recorded beside it. T is milliseconds per generated token of greedy decoding with
the KV cache at batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quide_search.errors import ConfigError, DataError
from quide_search.tasks.catalog import HF_PREFIX
from quide_search.tasks.data import Split, Splits
from quide_search.tasks.task import Task

__all__ = [
    "HF_PREFIX",
    "GreedyDecode",
    "TextTask",
    "causal_lm_task",
    "load_causal_lm",
    "pretrained_source",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TextTask:
    """How to build a causal-LM task.

    Attributes:
        path: Local model directory or hub id (without the ``hf:`` prefix).
        text_file: UTF-8 text the windows are cut from.
        seq_len: Tokens each window predicts.
        eval_windows: Windows in the eval split (fewer if the text is short); the held-out
            test split gets as many.
        calib_windows: Windows in the calibration split.
        dtype: ``auto`` (float32 on CPU, the model's own dtype on GPU) or a torch dtype name.
        include_head: Quantize ``lm_head`` too (excluded by default).
        prompt_tokens: Prompt length of the decoding-latency measurement.
        new_tokens: Tokens generated per timed decode.
    """

    path: str
    text_file: str | None
    seq_len: int = 512
    eval_windows: int = 64
    calib_windows: int = 16
    dtype: str = "auto"
    include_head: bool = False
    prompt_tokens: int = 32
    new_tokens: int = 16


class GreedyDecode(nn.Module):
    """Wraps a causal LM so one forward call is one greedy decode of ``new_tokens`` tokens.

    The latency timer times this module's forward; T per token is that time / ``new_tokens``.
    """

    def __init__(self, model: nn.Module, new_tokens: int, pad_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.new_tokens = new_tokens
        self.pad_token_id = pad_token_id

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        out = self.model.generate(  # type: ignore[operator]
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=self.pad_token_id,
        )
        return out


def _dtype(name: str, device_type: str, config: Any) -> torch.dtype:
    if name == "auto":
        native = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if device_type == "cpu" or not isinstance(native, torch.dtype):
            return torch.float32
        return native
    if name not in _DTYPES:
        raise ConfigError(f"--dtype must be auto, {', '.join(_DTYPES)}, but got {name!r}.")
    return _DTYPES[name]


def pretrained_source(path: str) -> tuple[str, bool]:
    """The ``from_pretrained`` argument for ``hf:PATH``'s path, and whether it is local.

    A path that looks local is never looked up on the hub (which would wait on the network).
    """
    local = Path(path).expanduser().exists() or path.startswith(("/", ".", "~"))
    return (str(Path(path).expanduser()) if local else path), local


def _load_pretrained(task: TextTask, device_type: str) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar (the trials') is enough on the terminal

    path, local = pretrained_source(task.path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
        dtype = _dtype(task.dtype, device_type, config)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:240]
        raise DataError(
            f"--model hf:PATH must name a local model directory (config.json, weights, "
            f"tokenizer) or a hub id reachable from here, but {task.path!r} could not be "
            f"loaded: {reason}. Download the model first and pass its directory."
        ) from e
    return model.eval(), tokenizer


_MAX_TEXT_BYTES = 2**30  # WikiText-103's training text is half of this


def _windows(task: TextTask, tokenizer: Any) -> torch.Tensor:
    path = Path(task.text_file or "")
    if not task.text_file or not path.is_file():
        raise DataError(
            "--text-file must name a UTF-8 text file to score the language model on (e.g. "
            f"WikiText-2's raw test text), but got {task.text_file!r}. Pass --text-file PATH."
        )
    from quide_search.errors import ConfigError
    from quide_search.files import read_document

    try:
        text = read_document(path, what="--text-file", max_bytes=_MAX_TEXT_BYTES)
    except ConfigError as e:
        raise DataError(str(e)) from e
    ids = tokenizer(text)["input_ids"]
    width = task.seq_len + 1
    count = len(ids) // width
    if count < 3:
        raise DataError(
            f"--text-file must hold at least 3 windows (eval, calibration, test) of --seq-len "
            f"+ 1 = {width} tokens, but {str(path)!r} has {len(ids)} tokens. Use a longer "
            "text or a smaller --seq-len."
        )
    return torch.tensor(ids[: count * width], dtype=torch.long).view(count, width)


def load_causal_lm(
    task: TextTask, *, seed: int, device_type: str
) -> tuple[nn.Module, Splits, Any]:
    """Load the model and cut the text into seeded, disjoint eval, calibration and test windows.

    Returns:
        The model, its splits, and its tokenizer.

    Raises:
        DataError: If the model or text cannot be loaded, or the text is too short.
    """
    model, tokenizer = _load_pretrained(task, device_type)
    windows = _windows(task, tokenizer)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    # Eval first, then calibration, then the held-out test windows (as many as eval's).
    calib_n = min(task.calib_windows, len(windows) // 3)
    eval_n = min(task.eval_windows, (len(windows) - calib_n + 1) // 2)
    test_n = min(eval_n, len(windows) - calib_n - eval_n)
    cuts = [0, eval_n, eval_n + calib_n, eval_n + calib_n + test_n]
    ev, ca, te = (windows[order[a:b]] for a, b in zip(cuts, cuts[1:], strict=False))
    empty = Split(torch.zeros(0, task.seq_len, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    splits = Splits(
        name=f"text:{Path(task.text_file or '').name}",
        train=empty,
        calib=Split(ca[:, :-1].contiguous(), ca[:, 1:].contiguous()),
        eval=Split(ev[:, :-1].contiguous(), ev[:, 1:].contiguous()),
        test=Split(te[:, :-1].contiguous(), te[:, 1:].contiguous()),
        input_shape=(task.seq_len,),
        num_classes=int(model.config.vocab_size),  # type: ignore[union-attr, arg-type]
        seed=seed,
    )
    return model, splits, tokenizer


def causal_lm_task(model: str, text: TextTask, device_type: str = "cpu", *, seed: int = 0) -> Task:
    """Return the task of a causal LM: the model, its text windows, and its decode settings.

    Raises:
        DataError: If the model or text cannot be loaded, or the text is too short.
    """
    lm, splits, tokenizer = load_causal_lm(text, seed=seed, device_type=device_type)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for p in lm.parameters():
        p.requires_grad_(False)
    return Task(
        model_name=model,
        dataset_name=splits.name,
        model=lm,
        splits=splits,
        weights_path=None,
        weights_origin=f"pretrained:{model}",
        kind="causal-lm",
        exclude=() if text.include_head else ("lm_head",),
        decode={
            "prompt_tokens": min(text.prompt_tokens, text.seq_len),
            "new_tokens": text.new_tokens,
            "pad_token_id": int(pad if pad is not None else 0),
        },
        tokenizer=tokenizer,
    )
