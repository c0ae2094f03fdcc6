"""Benchmark of the core path on the embedded default task (SimpleCNN on digits).

Measures, in one process:
  * per-trial time split into assemble / evaluate / latency / record (bytes and kernel paths)
    for random plans, and the ratio of a trial's time to the floor: a bare fp32 evaluation of
    the same samples plus one latency measurement of the fp32 model (benchmarks/trial_cost.py
    also compares against each trial's own latency measurement);
  * the wall time of `quide-search run` with defaults (50 trials) on a fresh cache, so the
    first-time training of the float model is included.

Usage:  python benchmarks/core_run.py [--trials 30] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from quide_search.config import RunConfig
from quide_search.latency import measure_latency
from quide_search.plan import BitPlan
from quide_search.scorer import Scorer
from quide_search.task import load_task


def _trial_split(scorer: Scorer, n: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    layers = list(scorer.weight_counts)
    keys = ("assemble", "evaluate", "latency", "record", "total")
    phases: dict[str, list[float]] = {k: [] for k in keys}
    floors: list[float] = []
    for _ in range(n):
        plan = BitPlan(
            model="simplecnn",
            dataset="digits",
            layers={name: rng.choice(["qint8", "qint4", "qint2"]) for name in layers},
        )
        t0 = time.perf_counter()
        m = scorer.measure(plan)
        phases["total"].append(time.perf_counter() - t0)
        for key, value in m.seconds.items():
            phases[key].append(value)
        # The floor, measured right after in the same process: bare fp32 eval + latency.
        t1 = time.perf_counter()
        scorer.evaluator.accuracy(scorer.model)
        measure_latency(scorer.model, scorer.example, context=scorer.context)
        floors.append(time.perf_counter() - t1)
    result = {k: statistics.median(v) * 1e3 for k, v in phases.items()}
    result["floor"] = statistics.median(floors) * 1e3
    result["ratio"] = result["total"] / result["floor"]
    return result


def _default_run_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QUIDE_CACHE_DIR": str(Path(tmp) / "cache")}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "quide_search", "run", "--no-progress"],
            cwd=tmp,
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="random plans timed")
    parser.add_argument("--write", type=str, default=None, help="append results to this file")
    args = parser.parse_args()
    task = load_task()
    # T paired with the default choices dealt out over the layers, as in a study.
    scorer = Scorer(task, device=torch.device("cpu"), reference_qtypes=RunConfig().bits)
    split = _trial_split(scorer, args.trials, seed=0)
    run_s = _default_run_seconds()
    cpu = platform.processor() or platform.machine()
    lines = [
        f"### Core path, SimpleCNN on digits ({dt.date.today().isoformat()})",
        "",
        f"- machine: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU wall clock",
        f"- command: `python benchmarks/core_run.py --trials {args.trials}`",
        "",
        "| per trial (median of random plans) | ms |",
        "|---|---|",
        *(
            f"| {k} | {split[k]:.2f} |"
            for k in ("assemble", "evaluate", "latency", "record", "total")
        ),
        f"| floor: bare fp32 eval + fp32 latency | {split['floor']:.2f} |",
        f"| ratio trial / floor | {split['ratio']:.2f} |",
        "",
        f"- `quide-search run` with defaults (50 trials, fresh cache, training included): "
        f"{run_s:.1f} s",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
