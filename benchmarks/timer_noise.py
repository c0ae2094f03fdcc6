"""How far this machine's timings drift: medians of blocks of timed passes, seconds apart.

Two workloads: a pure-Python loop (no torch, no threads) and SimpleCNN/digits quantized to
qint8 at batch 1 (what a trial's latency measurement times). Each is timed in blocks of 200
passes with a pause between blocks; the spread of the block medians is what two latency
measurements of the same plan, made at different moments of a study, can differ by.

Usage:  python benchmarks/timer_noise.py [--blocks N] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

import torch


def _blocks(work: Callable[[], object], blocks: int, passes: int = 200) -> list[float]:
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(passes):
            t0 = time.perf_counter_ns()
            work()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        medians.append(statistics.median(times))
        time.sleep(0.3)
    return medians


def _python_loop() -> int:
    total = 0
    for i in range(20000):
        total += i * i
    return total


def _summary(medians: list[float]) -> dict[str, object]:
    pairs = list(itertools.combinations(medians, 2))
    return {
        "block_medians_ms": [round(m, 4) for m in medians],
        "max_over_min": max(medians) / min(medians),
        "pairs_within_3pct": sum(abs(a / b - 1) <= 0.03 for a, b in pairs),
        "pairs": len(pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from quide_search.plan import BitPlan
    from quide_search.quantize import apply_plan
    from quide_search.task import load_task

    task = load_task(model="simplecnn", dataset="digits")
    plan = BitPlan.uniform(model="simplecnn", dataset="digits", layers=task.layers, qtype="qint8")
    model, example = apply_plan(task.model, plan), task.splits.eval.inputs[:1]
    with torch.no_grad():
        for _ in range(20):
            model(example)
        results = {
            "python_loop": _summary(_blocks(_python_loop, args.blocks)),
            "simplecnn_qint8_batch1": _summary(_blocks(lambda: model(example), args.blocks)),
        }
    results["threads"] = {"torch": torch.get_num_threads()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
