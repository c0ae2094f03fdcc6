"""What a trial costs beyond its evaluation: assemble / evaluate / latency against the floor.

For each model, in one process: the median time per trial of random plans, split into assemble
(swapping cached quantized layers into the float model), evaluate and latency; the floor (one
bare evaluation of the same samples with the float model, plus one latency measurement of it);
their ratio; the plan floor (the same bare evaluation and latency measurement of each trial's
own quantized model, so what quanto's kernels or fallbacks cost is on both sides) and the
ratio to it, which is what quide-search itself adds; the time to assemble a plan that changes
one layer of a cached plan, beside the old way (deep-copy the model and quantize every
layer); and memory (cache and process peak).

Models: simplecnn_digits, resnet18_embedded (ResNet-18 on mnist-5k, trained on first use) and
llama_tiny (a 15-block Llama built from a config: 105 quantized Linear layers; scored on random
token windows, the machinery being what is measured).

Usage:  python benchmarks/trial_cost.py [--quick] [--latency measured|model:cpu-epyc-2c]
                                        [--json PATH] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from quide_search.data import Split, Splits
from quide_search.evaluator import logits_of
from quide_search.latency import measure_latency
from quide_search.plan import BitPlan
from quide_search.quantize import apply_plan
from quide_search.scorer import Scorer
from quide_search.task import Task, load_task

QTYPES = ("none", "qint8", "qint4", "qint2")


def llama_tiny() -> Task:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=15,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 256, (16, 65), generator=torch.Generator().manual_seed(0))
    split = Split(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
    splits = Splits("random-tokens", split, split, split, (64,), 256, 0)
    return Task("llama_tiny", "random-tokens", model, splits, None, exclude=("lm_head",))


def _tasks() -> dict[str, Any]:
    return {
        "simplecnn_digits": lambda: load_task(model="simplecnn", dataset="digits"),
        "resnet18_embedded": lambda: load_task(model="resnet18", dataset="mnist-5k"),
        "llama_tiny": llama_tiny,
    }


def _median_time(fn: Any, repeats: int = 3, warm: bool = False) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call unless already ``warm``."""
    if not warm:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_evaluation(model: torch.nn.Module, scorer: Scorer) -> int:
    """A plain loop over the eval tensors already on the device: what any tool must do."""
    inputs, labels = scorer.evaluator.inputs, scorer.evaluator.labels
    size = scorer.evaluator.batch_size
    right = 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], size):
            logits = logits_of(model(inputs[start : start + size]))
            right += int((logits.argmax(-1) == labels[start : start + size]).sum())
    return right


def _floor(scorer: Scorer, model: torch.nn.Module, repeats: int = 3) -> tuple[float, float]:
    """Seconds of one bare evaluation and of one latency measurement of ``model``.

    A trial's own model has just run its trial, so it is timed once, warm.
    """
    warm = repeats == 1
    evaluate = _median_time(lambda: bare_evaluation(model, scorer), repeats, warm)
    context = scorer.context
    timing = _median_time(
        lambda: measure_latency(model, scorer.example, context=context), repeats, warm
    )
    return evaluate, timing


def measure(task: Task, *, plans: int, latency: str) -> dict[str, Any]:
    scorer = Scorer(task, device=torch.device("cpu"), eval_batch_size=256, latency=latency)
    layers = list(task.layers)
    rng = random.Random(0)
    floor_eval, floor_latency = _floor(scorer, scorer.model)
    if latency != "measured":  # the trial's T is an estimate: no timing passes in the floor
        floor_latency = 0.0
    floor = floor_eval + floor_latency
    splits: dict[str, list[float]] = {
        "assemble": [], "evaluate": [], "latency": [], "total": [], "plan_floor": [],
    }  # fmt: skip
    for _ in range(plans):
        plan = BitPlan(model="m", dataset="d", layers={n: rng.choice(QTYPES) for n in layers})
        seconds = scorer.measure(plan).seconds
        for key in ("assemble", "evaluate", "latency"):
            splits[key].append(seconds[key])
        splits["total"].append(sum(seconds.values()))
        with scorer.layers.assembled(plan) as model:
            evaluate, timing = _floor(scorer, model, repeats=1)
        splits["plan_floor"].append(evaluate + (timing if latency == "measured" else 0.0))
    base = {n: "qint8" for n in layers}
    with scorer.layers.assembled(BitPlan(model="m", dataset="d", layers=base)):
        pass
    changed = BitPlan(model="m", dataset="d", layers={**base, layers[len(layers) // 2]: "qint4"})
    t0 = time.perf_counter()
    with scorer.layers.assembled(changed):
        one_layer = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_plan(scorer.model, changed)
    full_copy = time.perf_counter() - t0
    median = {k: statistics.median(v) for k, v in splits.items()}
    return {
        "layers": len(layers),
        "median_ms": {k: 1e3 * v for k, v in median.items()},
        "floor_ms": 1e3 * floor,
        "floor_evaluate_ms": 1e3 * floor_eval,
        "overhead_ratio": median["total"] / floor,
        "plan_floor_ms": 1e3 * median["plan_floor"],
        "overhead_ratio_vs_plan_floor": median["total"] / median["plan_floor"],
        "assemble_one_changed_layer_ms": 1e3 * one_layer,
        "deepcopy_and_quantize_all_ms": 1e3 * full_copy,
        "cache_mb": scorer.layers.cached_bytes / 2**20,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 plans per model, not 20")
    parser.add_argument("--latency", default="measured")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for name, make in _tasks().items():
        results[name] = measure(make(), plans=5 if args.quick else 20, latency=args.latency)
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write:
        _append(args, results)


def _append(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows = [
        f"| {name} | {r['layers']} | {r['median_ms']['assemble']:.1f} | "
        f"{r['median_ms']['evaluate']:.1f} | {r['median_ms']['latency']:.1f} | "
        f"{r['floor_ms']:.1f} | {r['overhead_ratio']:.2f} | {r['plan_floor_ms']:.1f} | "
        f"{r['overhead_ratio_vs_plan_floor']:.2f} | "
        f"{r['assemble_one_changed_layer_ms']:.1f} | {r['deepcopy_and_quantize_all_ms']:.1f} | "
        f"{r['cache_mb']:.1f} | {r['process_peak_mb']:.0f} |"
        for name, r in results.items()
    ]
    command = "python benchmarks/trial_cost.py" + (" --quick" if args.quick else "")
    text = "\n".join(
        [
            f"### Trial cost, latency {args.latency} ({dt.date.today().isoformat()})",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}."
            f" Command: `{command} --latency {args.latency}`. Times in ms (medians).",
            "",
            "| model | layers | assemble | evaluate | latency | floor | ratio | plan floor | "
            "ratio to plan floor | assemble, 1 layer changed | deep-copy + quantize all | "
            "cache MB | process peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    with args.write.open("a", encoding="utf-8") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
