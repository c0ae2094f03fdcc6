"""Measure the two numbers behind a CPU latency profile: memory bandwidth and float32 peak.

The `cpu-epyc-2c` profile of `quide_search/latency/profiles.py` takes its bandwidth and peak from
this script's output on the CI machine; run it on another machine to write a profile for it.

Usage:  python benchmarks/device_profile.py [--threads N] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def measure(threads: int) -> dict[str, float]:
    """Return copy bandwidth (GB/s, read + write) and float32 matmul rate (GFLOP/s)."""
    torch.set_num_threads(threads)
    src = torch.ones(64 * 1024 * 1024)  # 256 MiB, far beyond any cache
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, median = _best_of(lambda: dst.copy_(src), 10)
    moved = 2 * src.numel() * src.element_size()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    mm_best, mm_median = _best_of(lambda: a @ b, 8)
    flops = 2 * 2048**3
    return {
        "bandwidth_gbps_best": moved / best / 1e9,
        "bandwidth_gbps_median": moved / median / 1e9,
        "sgemm_gflops_best": flops / mm_best / 1e9,
        "sgemm_gflops_median": flops / mm_median / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write", type=Path, default=None, help="append results here")
    args = parser.parse_args()
    result = measure(args.threads)
    lines = [
        f"### CPU profile numbers ({dt.date.today().isoformat()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, {args.threads} threads. Command: "
        f"`python benchmarks/device_profile.py --threads {args.threads}`.",
        "",
        "| quantity | best | median |",
        "|---|---|---|",
        f"| copy bandwidth, GB/s (read + write) | {result['bandwidth_gbps_best']:.1f} | "
        f"{result['bandwidth_gbps_median']:.1f} |",
        f"| float32 2048² matmul, GFLOP/s | {result['sgemm_gflops_best']:.1f} | "
        f"{result['sgemm_gflops_median']:.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
