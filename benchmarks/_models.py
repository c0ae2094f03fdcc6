"""Models the benchmarks build here (nothing is downloaded)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from quide_search.tasks.models.causal_lm import TextTask


def saved_llama(
    folder: Path, *, hidden: int = 128, new_tokens: int = 4, eval_windows: int = 16
) -> tuple[str, TextTask]:
    """A 4-block Llama with random weights (seeded) and a word-level tokenizer over 200 words,
    saved like a hub model in ``folder``, with 20,000 words of random text to score it on.

    Args:
        hidden: Its width (the MLP's is twice it; 4 heads of ``hidden / 4``, 2 key-value heads).
        new_tokens: Tokens a timed call decodes after a 16-token prompt.
        eval_windows: Eval windows of 64 tokens.

    Returns:
        The ``--model`` of it (``hf:PATH``) and the task settings.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(200)]
    rng = random.Random(0)
    text = folder / "text.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(20_000)) + "\n", encoding="utf-8")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    settings = TextTask(path=str(folder / "model"), text_file=str(text), seq_len=64,
                        eval_windows=eval_windows, calib_windows=4, prompt_tokens=16,
                        new_tokens=new_tokens)  # fmt: skip
    return f"hf:{folder / 'model'}", settings
