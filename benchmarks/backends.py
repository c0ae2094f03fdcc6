"""Backends side by side: fp32, bf16, quanto and torchao uniform plans, timed interleaved.

For each model (an MLP of four Linear(1024, 1024) at batch 1, SimpleCNN on 8x8 digits at batch
1, and one decoding step of a 4-block Llama with SmolLM2-135M's layer shapes: a forward of one
token, which reads every weight once), every variant is built first, then timed in rounds
that visit the variants in a rotated order, at 1 torch thread; the figure is each variant's
median over the rounds, as a ratio to fp32 measured in the same rounds. ``kernel layers`` says
how many of the quantized layers run a low-bit kernel (the backend's ``kernel_path``).

    python benchmarks/backends.py [--rounds 15] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _results import machine_line, publish
from torch import nn

from quide_search.backends import get_backend
from quide_search.plan import BitPlan

_VARIANTS = (
    ("fp32", None, None, torch.float32),
    ("bf16", None, None, torch.bfloat16),
    ("quanto int8", "quanto", "int8", torch.float32),
    ("quanto int4", "quanto", "int4", torch.float32),
    ("quanto int8, bf16", "quanto", "int8", torch.bfloat16),
    ("quanto int4, bf16", "quanto", "int4", torch.bfloat16),
    ("quanto w8a8 (static)", "quanto", "w8a8", torch.float32),
    ("quanto w4a8 (static)", "quanto", "w4a8", torch.float32),
    ("torchao int8", "torchao", "int8", torch.float32),
    ("torchao w8a8", "torchao", "w8a8", torch.float32),
    ("torchao int4", "torchao", "int4", torch.float32),
    ("torchao int4, bf16", "torchao", "int4", torch.bfloat16),
    ("torchao fp8", "torchao", "fp8", torch.float32),
)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    layers = [m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.ReLU())]
    return nn.Sequential(*layers).eval(), torch.randn(1, 1024)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    from quide_search.tasks.models import SimpleCNN

    return SimpleCNN(in_channels=1, image_size=8, num_classes=10).eval(), torch.rand(1, 1, 8, 8)


def _llama() -> tuple[nn.Module, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return _Logits(model), torch.tensor([[17]])


class _Logits(nn.Module):
    """A causal LM's forward returning its logits, without a KV cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=False).logits  # type: ignore[no-any-return]


def _variant(model: nn.Module, example: torch.Tensor, backend: str | None,
             precision: str | None, dtype: torch.dtype) -> tuple[nn.Module, str]:  # fmt: skip
    base = copy.deepcopy(model).to(dtype)
    if backend is None:
        return base, "-"
    quant = get_backend(backend)
    layers = {n: c for n, c in quant.quantizable_layers(base).items() if not n.endswith("lm_head")}
    plan = BitPlan.uniform(model="m", dataset="d", layers=layers, precision=str(precision),
                           backend=backend)  # fmt: skip
    # Static activation scales are fitted on 32 random inputs of the example's kind.
    calib = (
        torch.randint(0, 1000, (32, 8))
        if example.dtype == torch.long
        else torch.randn(32, *example.shape[1:], dtype=dtype)
    )
    built = quant.apply(base, plan, calibration=calib)
    paths = [quant.kernel_path(built.get_submodule(n)) for n in layers]
    return built, f"{sum(p != 'fallback' for p in paths)}/{len(paths)}"


def _time(call: Callable[[], Any], passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        call()
    return (time.perf_counter() - start) / passes * 1e3


def measure(name: str, make: Callable[[], tuple[nn.Module, torch.Tensor]],
            rounds: int) -> list[str]:  # fmt: skip
    """Table rows of one model: every variant's median ms and its ratio to fp32."""
    torch.manual_seed(0)
    float_model, example = make()
    built: dict[str, tuple[Callable[[], Any], str]] = {}
    for label, backend, precision, dtype in _VARIANTS:
        try:
            model, kernels = _variant(float_model, example, backend, precision, dtype)
        except Exception as e:  # a variant a backend cannot build is a row that says why
            built[label] = (lambda: None, f"not built: {str(e).split(': ')[-1][:70]}")
            continue
        x = example if example.dtype == torch.long else example.to(dtype)
        built[label] = (lambda m=model, x=x: m(x), kernels)
    runnable = [k for k, (_, kernels) in built.items() if not kernels.startswith("not built")]
    with torch.no_grad():
        passes = {k: max(1, int(20 / max(_time(built[k][0], 3), 0.01))) for k in runnable}
        samples: dict[str, list[float]] = {k: [] for k in runnable}
        for r in range(rounds):
            for k in runnable[r % len(runnable) :] + runnable[: r % len(runnable)]:
                samples[k].append(_time(built[k][0], passes[k]))
    base = statistics.median(samples["fp32"])
    rows = []
    for label, (_, kernels) in built.items():
        if label not in samples:
            rows.append(f"| {name} | {label} | - | - | {kernels} |")
            continue
        ms = statistics.median(samples[label])
        rows.append(f"| {name} | {label} | {ms:.3f} | {ms / base:.2f} | {kernels} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, make in (("MLP 4x1024", _mlp), ("SimpleCNN", _cnn), ("Llama 4-block", _llama)):
        rows += measure(name, make, args.rounds)
    header = [
        "## Backends: uniform plans against fp32, interleaved, 1 thread",
        "",
        machine_line(),
        f"- command: `python benchmarks/backends.py --rounds {args.rounds}` (batch 1; the "
        "Llama figure is one decoding step, a forward of one token without a KV cache)",
        "",
        "| model | variant | median ms | ratio to fp32 | kernel layers |",
        "|---|---|---|---|---|",
    ]
    publish([*header, *rows], args.write, "backends")


if __name__ == "__main__":
    main()
