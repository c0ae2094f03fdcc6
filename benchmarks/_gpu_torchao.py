"""The GPU check's torchao part: uniform torchao plans' decode step against bf16, compiled.

Each plan quantizes every Linear of the Llama except ``lm_head`` with one torchao config,
compiles the model (``torch.compile``, default mode ``max-autotune``, which also captures
CUDA graphs; weights are baked into the compiled graph, which is why a search does not
compile per trial), and times a one-token forward pass (the shape of a decode step at batch
1, without a KV cache) by CUDA events. Ratios are to the compiled bf16 model, timed the same
way in the same process.

Configs on CUDA: int8 ``Int8WeightOnlyConfig``; int4 ``Int4WeightOnlyConfig`` with group 128
in the ``tile_packed_to_4d`` format (tinygemm, a kernel inside torch: the default ``plain``
format needs the separate mslk package); w8a8 ``Int8DynamicActivationInt8WeightConfig``;
float8 ``Float8DynamicActivationFloat8WeightConfig`` per row, only on SM >= 8.9. On a CPU
(checking the script) int4 is the CPU format and nothing is compiled unless asked.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quide_search.latency._timer import pass_timer

PLANS = ("bf16", "int8", "int4", "w8a8", "float8")
_REPEATS = 50


def _config(plan: str, device: torch.device) -> Any:
    import torchao.quantization as tq

    if plan == "int8":
        return tq.Int8WeightOnlyConfig()
    if plan == "w8a8":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if plan == "float8":
        return tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow())
    if device.type == "cuda":
        return tq.Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=128)


def _missing(plan: str, device: torch.device) -> str | None:
    """Why ``plan`` cannot run on ``device``, or None."""
    if plan != "float8":
        return None
    if device.type != "cuda":
        return "float8 needs CUDA"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"float8 needs SM >= 8.9, this GPU is SM {major}.{minor}"
    return None


def _searched(module: nn.Module, fqn: str) -> bool:
    """Every Linear but ``lm_head``, as a quide-search study of a causal LM."""
    return isinstance(module, nn.Linear) and fqn != "lm_head"


def _time_ms(model: nn.Module, ids: torch.Tensor) -> float:
    """Median of ``_REPEATS`` timed one-token passes, ms, by quide-search's own pass timer
    (CUDA events after a synchronisation on a GPU, the wall clock on a CPU)."""
    timer = pass_timer("cuda_events" if ids.device.type == "cuda" else "wall")
    return statistics.median(timer(model, ids, 1) for _ in range(_REPEATS))


def torchao_decode(
    build: Callable[[], nn.Module],
    device: torch.device,
    deadline: float,
    *,
    compile_mode: str | None = "max-autotune",
) -> list[dict[str, Any]]:
    """Time each of :data:`PLANS` on a fresh bf16 model from ``build``, until ``deadline``.

    Returns one row per plan: ``ms``, ``ratio`` to bf16, ``compile_s``, ``P`` (top-1 agreement
    of the last position with the bf16 model on 8 random prompts), or ``missing`` with why.
    """
    import torchao.quantization as tq

    rows: list[dict[str, Any]] = []
    prompts = torch.randint(0, 500, (8, 32), generator=torch.Generator().manual_seed(0))
    prompts, ids = prompts.to(device), prompts[:1, :1].to(device)
    reference = None
    for plan in PLANS:
        why = _missing(plan, device)
        if why is None and deadline - time.monotonic() < 60:
            why = "out of time budget"
        if why is not None:
            rows.append({"plan": plan, "missing": why})
            continue
        model = build().to(device=device, dtype=torch.bfloat16)
        try:
            if plan != "bf16":
                tq.quantize_(model, _config(plan, device), filter_fn=_searched)
            runner = torch.compile(model, mode=compile_mode) if compile_mode else model
            with torch.no_grad():
                t0 = time.monotonic()
                for _ in range(3):
                    runner(ids)
                compile_s = time.monotonic() - t0
                ms = _time_ms(runner, ids)
                top = model(prompts).logits[:, -1].argmax(-1)
        except Exception as e:  # a plan the GPU or torchao refuses is a row, not the end
            rows.append({"plan": plan, "missing": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        if plan == "bf16":
            reference = top
        base = ms if plan == "bf16" else (rows[0].get("ms") if rows else None)
        rows.append({
            "plan": plan, "ms": ms, "ratio": ms / base if base else None,
            "compile_s": compile_s,
            "P": float((top == reference).float().mean()) if reference is not None else None,
        })  # fmt: skip
        print(f"torchao {plan}: {ms:.3f} ms (compile {compile_s:.0f} s)", flush=True)
        del model, runner
    return rows


def torchao_table(part: dict[str, Any]) -> list[str]:
    """Markdown rows of :func:`torchao_decode`'s results (``{"compile": mode, "rows": ...}``)."""
    lines = [
        f"torchao, compile {part['compile']}: | plan | ms | ratio to bf16 | compile s | P |",
        "|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        if "missing" in r:
            lines.append(f"| {r['plan']} | {r['missing'][:70]} |")
        else:
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {r['plan']} | {r['ms']:.3f} | {ratio} | "
                         f"{r['compile_s']:.0f} | {r['P']} |")  # fmt: skip
    return lines
