"""Benchmark of the core path on the embedded default task (SimpleCNN on digits).

Measures, in one process:
  * per-trial time split into assemble / evaluate / latency / record (bytes and kernel paths)
    for random plans, with T from the default source on this device (a per-layer table on a
    CPU) and with measured T, beside the floor: a bare float evaluation of the same samples;
  * the wall time of `quide-search run` with defaults (50 trials) on a fresh cache, so the
    first-time training of the float model is included.

Usage:  python benchmarks/core_run.py [--trials 30] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import machine_line, write_section

from quide_search.config import RunConfig
from quide_search.measure.scorer import Scorer
from quide_search.plan import BitPlan
from quide_search.protocol_builder import build_protocol
from quide_search.tasks.resolver import load_task
from quide_search.tasks.task import Task


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
            layers={name: rng.choice(["int8", "int4", "int2"]) for name in layers},
        )
        t0 = time.perf_counter()
        m = scorer.measure(plan)
        phases["total"].append(time.perf_counter() - t0)
        for key, value in m.seconds.items():
            phases[key].append(value)
        # The floor, measured right after in the same process: a bare float evaluation.
        t1 = time.perf_counter()
        scorer.evaluator.accuracy(scorer.model)
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
    splits = {source: _trial_split(_scorer(task, source), args.trials, seed=0)
              for source in ("auto", "measured")}  # fmt: skip
    run_s = _default_run_seconds()
    keys = ("assemble", "evaluate", "latency", "record", "total")
    lines = [
        "## Core path: SimpleCNN on digits",
        "",
        machine_line(),
        f"- command: `python benchmarks/core_run.py --trials {args.trials}`",
        "",
        "| per trial, ms (median of random plans) | T from the table (auto) | measured T |",
        "|---|---|---|",
        *(f"| {k} | {splits['auto'][k]:.2f} | {splits['measured'][k]:.2f} |" for k in keys),
        f"| floor: bare float evaluation | {splits['auto']['floor']:.2f} | "
        f"{splits['measured']['floor']:.2f} |",
        f"| ratio trial / floor | {splits['auto']['ratio']:.2f} | "
        f"{splits['measured']['ratio']:.2f} |",
        "",
        f"- `quide-search run` with defaults (50 trials, fresh cache, training, latency table "
        f"and confirmation included): {run_s:.1f} s",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "core_run", text)


def _scorer(task: Task, latency: str) -> Scorer:
    cpu = torch.device("cpu")
    protocol = build_protocol(RunConfig(latency=latency, device="cpu"), task, device=cpu)
    return Scorer.build(task, protocol, device=cpu)


if __name__ == "__main__":
    main()
