"""Would timing two references (the float model and the mix) make measured T repeat closer?

A study pairs every timed sample of a plan with a sample of one reference, the study's choices
dealt out over the layers (the mix), and reports the mix's T times the median ratio. That
assumes a slow spell of this machine scales the plan and the mix alike. A plan is float layers
plus quanto's dequantizing layers, and a spell may slow the two kinds of work unequally; two
references could tell the two apart. Per sample, with the plan P, the float model F and the
mix M, and their calibrated times Fc and Mc:

- ``mix`` (what T is): Mc * P / M;
- ``float`` (what studies paired with until 2026-11-27): Fc * P / F;
- ``two``: Fc + (P - F) * (Mc - Fc) / (M - F), the plan's float part scaled by the float
  model's speed and the rest by the speed of the mix's dequantizing part;
- ``raw``: P itself.

Each estimate of a measurement is the median over its samples. For each model, ``--plans``
seeded random plans (each layer none, qint8, qint4 or qint2) are measured in ``--blocks``
blocks 0.3 s apart. A measurement times ``--samples`` triples of 5-ms samples (the order of
the three models rotates); Fc and Mc are the first measurement's medians, as a study's
reference is measured once. Reported per estimate: pairs of blocks whose estimates of one
plan lie within 3 %, and each plan's max/min over the blocks.

Usage:  python benchmarks/two_references.py [--models a,b] [--blocks N] [--plans N]
            [--samples N] [--seed S] [--threads N] [--json PATH]
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
from pathlib import Path

import torch
from trial_cost import _tasks

from quide_search.config import RunConfig
from quide_search.latency import SAMPLE_MS, _cpu_pass, _passes_per_sample
from quide_search.scorer import Scorer

_Row = tuple[float, float, float]  # ms per pass: plan, float model, mix
_MIX = RunConfig().bits


def _triples(models: list[torch.nn.Module], example: torch.Tensor, samples: int) -> list[_Row]:
    """Time ``samples`` rotating triples after a warm-up, with T's own timer.

    Each model's sample runs as many passes as the three models' mean pass needs to span
    ``SAMPLE_MS``.
    """
    for model in models:
        for _ in range(3):
            _cpu_pass(model, example, 1)
    one_each = sum(_cpu_pass(model, example, 1) for model in models)
    passes = _passes_per_sample(SAMPLE_MS, one_each / len(models))
    rows = []
    for k in range(samples):
        order = list(range(k % 3, 3)) + list(range(k % 3))
        times = {i: _cpu_pass(models[i], example, passes) for i in order}
        rows.append((times[0], times[1], times[2]))
    return rows


def _estimates(fc: float, mc: float) -> dict[str, Callable[[list[_Row]], float]]:
    return {
        "mix": lambda rows: mc * statistics.median(p / m for p, _, m in rows),
        "float": lambda rows: fc * statistics.median(p / f for p, f, _ in rows),
        "two": lambda rows: statistics.median(
            fc + (p - f) * (mc - fc) / (m - f) for p, f, m in rows
        ),
        "raw": lambda rows: statistics.median(p for p, _, _ in rows),
    }


def _model_blocks(name: str, args: argparse.Namespace) -> dict[str, object]:
    scorer = Scorer(_tasks()[name](), device=torch.device("cpu"), eval_chunk=32)
    rng = random.Random(args.seed)
    choices = ("none", *_MIX)
    layers = list(scorer.weight_counts)
    base = scorer.uniform_plan("qint8")
    plans = [
        dataclasses.replace(base, layers={layer: rng.choice(choices) for layer in layers})
        for _ in range(args.plans)
    ]
    scorer.use_latency_reference(1.0, None)  # what T's timed pass runs, without pairing
    float_model = scorer.latency_reference()
    scorer.use_latency_reference(1.0, _MIX)
    mix = scorer.latency_reference()
    assert float_model is not None and mix is not None
    rows: dict[int, list[list[_Row]]] = {i: [] for i in range(args.plans)}
    with torch.no_grad():
        for _ in range(args.blocks):
            for i, plan in enumerate(plans):
                timed = scorer._timed(scorer.layers.assemble(plan, exact=True))
                rows[i].append(_triples([timed, float_model, mix], scorer.example, args.samples))
            time.sleep(0.3)
    first = rows[0][0]
    fc = statistics.median(f for _, f, _ in first)
    mc = statistics.median(m for _, _, m in first)
    return {"float_ms": fc, "mix_ms": mc, **_summary(rows, _estimates(fc, mc))}


def _summary(
    rows: dict[int, list[list[_Row]]], estimates: dict[str, Callable[[list[_Row]], float]]
) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, estimate in estimates.items():
        within, pairs, spans = 0, 0, []
        for blocks in rows.values():
            values = [estimate(block) for block in blocks]
            combos = list(itertools.combinations(values, 2))
            within += sum(abs(a / b - 1) <= 0.03 for a, b in combos)
            pairs += len(combos)
            spans.append(round(max(values) / min(values), 3))
        out[key] = {"pairs_within_3pct": within, "pairs": pairs, "max_over_min": spans}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="simplecnn_digits,resnet18_embedded,llama_tiny")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--plans", type=int, default=4)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": torch.get_num_threads(), "seed": args.seed}
    for name in args.models.split(","):
        results[name] = _model_blocks(name, args)
        print(name, json.dumps(results[name]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
