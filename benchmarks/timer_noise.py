"""How far this machine's timings drift, and how much pairing with a reference removes.

Each workload is timed in blocks a pause apart; the spread of the block results is what two
latency measurements of the same plan, made at different moments of a study, can differ by.

- A pure-Python loop (no torch, no threads): blocks of 200 passes, their medians.
- The qint8 plan (``--plan random``: a seeded random draw of qint8, qint4 or qint2 per layer)
  of SimpleCNN/digits, ResNet-18/mnist-5k and the 15-block llama_tiny of ``trial_cost.py``:
  each block is one real latency measurement (``Scorer.time_plan``, batch 1: the stop rule,
  up to 100 pairs) per torch thread count in ``--threads``, sample floor in ``--floors`` (ms;
  0: single passes) and reference in ``--references``, one right after the other, so every
  setting meets the same spells. Each gives T (paired with the reference, whose T each
  setting measures once at the start) and the plain median of the plan's own samples
  (``raw_ms``). The references: ``float``, the float model (what studies created until
  2026-11-27 paired with); ``mix``, a run's default choices qint8, qint4 and qint2 dealt out
  over the layers (what a study pairs with now).

Usage:  python benchmarks/timer_noise.py [--blocks N] [--threads 1,2] [--models a,b]
            [--floors 0,5] [--references float,mix] [--plan qint8|random]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable

import torch
from trial_cost import _tasks

from quide_search.config import RunConfig
from quide_search.latency import LatencyResult
from quide_search.scorer import Scorer

_Setting = tuple[int, float, str]  # torch threads, sample floor (ms), reference
_REFERENCES = {"float": None, "mix": RunConfig().bits}


def _loop_blocks(work: Callable[[], object], blocks: int, passes: int = 200) -> list[float]:
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


def _summary(values: list[float]) -> dict[str, object]:
    pairs = list(itertools.combinations(values, 2))
    return {
        "block_ms": [round(m, 4) for m in values],
        "max_over_min": max(values) / min(values),
        "pairs_within_3pct": sum(abs(a / b - 1) <= 0.03 for a, b in pairs),
        "pairs": len(pairs),
    }


def _plan_blocks(name: str, blocks: int, settings: list[_Setting], kind: str) -> dict[str, object]:
    """Time one plan once per (threads, floor, reference) setting in each block.

    ``kind``: ``qint8``, the uniform plan; ``random``, each layer a seeded draw from a run's
    default choices, like the plans a study tries.
    """
    scorer = Scorer(_tasks()[name](), device=torch.device("cpu"), eval_chunk=32)
    plan = scorer.uniform_plan("qint8")
    if kind == "random":
        rng = random.Random(7)
        choices = RunConfig().bits
        draws = {layer: rng.choice(choices) for layer in scorer.weight_counts}
        plan = dataclasses.replace(plan, layers=draws)
    references = {}
    for threads, floor, reference in settings:
        _time_on(scorer, threads)
        scorer.use_sample_floor(floor)
        references[threads, floor, reference] = scorer.calibrate_latency(_REFERENCES[reference])
    results: dict[_Setting, list[LatencyResult]] = {s: [] for s in settings}
    seconds: dict[_Setting, list[float]] = {s: [] for s in settings}
    for _ in range(blocks):
        for setting in settings:
            threads, floor, reference = setting
            _time_on(scorer, threads)
            scorer.use_sample_floor(floor)
            scorer.use_latency_reference(references[setting], _REFERENCES[reference])
            t0 = time.perf_counter()
            results[setting].append(scorer.time_plan(plan))
            seconds[setting].append(time.perf_counter() - t0)
        time.sleep(0.3)
    return {
        _label(setting, settings): {
            "reference_ms": references[setting],
            "passes_per_sample": [r.passes for r in results[setting]],
            "repeats": [r.repeats for r in results[setting]],
            "seconds_per_measurement": statistics.median(seconds[setting]),
            "median_spread": statistics.median(r.spread for r in results[setting]),
            "paired": _summary([r.median_ms for r in results[setting]]),
            "plain": _summary([r.raw_ms or 0.0 for r in results[setting]]),
        }
        for setting in settings
    }


def _time_on(scorer: Scorer, threads: int) -> None:
    """Time T on ``threads`` torch threads: the measurement sets the context's count itself."""
    scorer.context = dataclasses.replace(scorer.context, threads=threads)


def _label(setting: _Setting, settings: list[_Setting]) -> str:
    """Name a setting by its floor, and by its threads and reference where several are run."""
    threads, floor, reference = setting
    name = f"floor_{floor:g}ms"
    if len({s[2] for s in settings}) > 1:
        name = f"{reference}_{name}"
    return name if len({s[0] for s in settings}) == 1 else f"threads_{threads}_{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument(
        "--threads", default=None, help="torch thread counts to compare (default: torch's)"
    )
    parser.add_argument("--models", default="simplecnn_digits,resnet18_embedded,llama_tiny")
    parser.add_argument("--floors", default="0,5", help="sample floors to compare, ms")
    parser.add_argument(
        "--references", default="mix", help="references to pair with: float, mix (see above)"
    )
    parser.add_argument(
        "--plan", default="qint8", choices=("qint8", "random"), help="the plan timed (see above)"
    )
    args = parser.parse_args()
    floors = [float(f) for f in args.floors.split(",")]
    counts = [torch.get_num_threads()]
    if args.threads is not None:
        counts = [int(t) for t in args.threads.split(",")]
    references = args.references.split(",")
    settings = [(t, f, r) for t in counts for f in floors for r in references]
    results: dict[str, object] = {"python_loop": _summary(_loop_blocks(_python_loop, 12))}
    for name in args.models.split(","):
        key = f"{name}_{args.plan}_batch1"
        results[key] = _plan_blocks(name, args.blocks, settings, args.plan)
        print(name, json.dumps(results[key]), flush=True)
    results["threads"] = {"torch": counts}
    results["references"] = {r: _REFERENCES[r] for r in references}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
