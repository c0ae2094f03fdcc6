"""What a trial costs beyond its evaluation: assemble / evaluate / latency against the floor.

For each model, in one process, the median over random plans of:
- the wall time of ``Scorer.measure`` (the whole call), split into assemble (swapping cached
  layers into the two views), evaluate, latency and record (bytes and kernel paths);
- the floor, as the issue defines it: one bare evaluation of the same samples with the float
  model (a plain loop) plus the trial's own latency measurement (``measure_latency`` on the
  plan's freshly quantized model, for as many timed passes as the trial's measurement
  took, paired on a CPU with the same reference as a trial's: the plans' choices dealt out
  over the layers), and ``overhead_ratio``, the median over trials of each trial's time over
  its floor. Both parts are timed next to the trial: the bare evaluation just before and
  just after it (averaged), the latency measurement right after it, since this machine's
  speed drifts by up to 2x from one second to the next and a floor timed apart would
  measure the drift;
- the float floor: the bare float evaluation plus one latency measurement of the float model
  (on a CPU where quanto dequantizes, timing a quantized model costs more than that by itself);
- the plan floor: a bare evaluation and a latency measurement of the plan's freshly quantized
  model, so quanto's per-call dequantization is on both sides;
- the time to assemble a plan that changes one layer of the previous plan, in the evaluation
  view and in the exact view, beside the old way (deep-copy the model and quantize every layer);
- with measured T, plans timed a second time after all the others (the two medians; 2 plans
  with --quick, all 20 without);
- the one-time cost of building every (layer, qtype) the plans use (trials are timed after it);
- memory: the cache and the process peak.

With ``--latency model:NAME`` T is an estimate, so no floor has timing passes.

Models: simplecnn_digits, resnet18_embedded (ResNet-18 on mnist-5k, trained on first use) and
llama_tiny (a 15-block Llama built from a config: 105 quantized Linear layers; scored on random
token windows, the machinery being what is measured).

Usage:  python benchmarks/trial_cost.py [--quick] [--latency measured|model:cpu-epyc-2c]
                                        [--threads N] [--latency-threads N] [--json PATH]
                                        [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def _floor(
    scorer: Scorer, model: torch.nn.Module, repeats: int = 3, passes: int | None = None
) -> tuple[float, float]:
    """Seconds of one bare evaluation and of one latency measurement of ``model``.

    With ``repeats=1`` each is timed once, without a warm-up call. ``passes`` fixes the
    measurement's number of timed passes (a trial's floor times as many as the trial did).
    """
    warm = repeats == 1
    evaluate = _median_time(lambda: bare_evaluation(model, scorer), repeats, warm)
    context = scorer.context
    if passes is not None:
        context = dataclasses.replace(context, min_repeats=passes, max_repeats=passes)
    # The same measurement as a trial's: on a CPU, paired with the study's reference.
    reference = scorer.latency_reference()
    timing = _median_time(
        lambda: measure_latency(model, scorer.example, context=context, reference=reference),
        repeats,
        warm,
    )
    return evaluate, timing


def _one_layer_change_ms(scorer: Scorer, layers: list[str], *, exact: bool) -> float:
    """Median ms to assemble a plan that differs from the view's last plan in one layer."""
    base = {n: "qint8" for n in layers}
    plans = [
        BitPlan(model="m", dataset="d", layers={**base, layers[i % len(layers)]: "qint4"})
        for i in range(0, 4 * len(layers), 3)
    ]
    cache = scorer.layers
    cache.assemble(BitPlan(model="m", dataset="d", layers=base), exact=exact)
    for plan in plans:  # build every module first: this times swapping, not quantizing
        cache.assemble(plan, exact=exact)
    times = []
    for plan in plans:
        t0 = time.perf_counter()
        cache.assemble(plan, exact=exact)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(
    task: Task,
    *,
    plans: int,
    latency: str,
    threads: int | None,
    again: int,
    latency_threads: int | None = None,
) -> dict[str, Any]:
    scorer = Scorer(
        task,
        device=torch.device("cpu"),
        eval_batch_size=256,
        latency=latency,
        threads=threads,
        latency_threads=latency_threads,
        # As in a study: T is paired with the plans' choices dealt out over the layers.
        reference_qtypes=QTYPES,
    )
    layers = list(task.layers)
    rng = random.Random(0)
    measured = latency == "measured"  # otherwise T is an estimate: no timing passes anywhere
    float_eval, float_latency = _floor(scorer, scorer.model)
    # A study builds each (layer, qtype) once and reuses it for every later trial: build them
    # all first (timed apart), so the trials below show the steady state, not the first use.
    t0 = time.perf_counter()
    for name in layers:
        for qtype in QTYPES[1:]:
            scorer.layers.module(name, qtype)
    build_all = time.perf_counter() - t0
    keys = ("assemble", "evaluate", "latency", "record", "total", "plan_eval", "plan_latency")
    splits: dict[str, list[float]] = {k: [] for k in keys}
    first_t: list[tuple[BitPlan, float, int, float | None]] = []
    chosen = [
        BitPlan(model="m", dataset="d", layers={n: rng.choice(QTYPES) for n in layers})
        for _ in range(plans)
    ]
    bare = lambda: bare_evaluation(scorer.model, scorer)  # noqa: E731
    # The machine's speed drifts by up to 2x between spells, so each trial's floor is timed
    # next to it: the trial is bracketed by two bare float evaluations (the floor uses their
    # mean), and the plan's own floor on a freshly quantized copy follows it at once. That
    # latency measurement takes as many passes as the trial's did: how many a measurement
    # needs depends on the noise of the moment (20, or the cap in a noisy spell), and the
    # floor is the same measurement, not a luckier or unluckier one.
    bracket = [_median_time(bare, repeats=1, warm=True)]
    for plan in chosen:
        t0 = time.perf_counter()
        measurement = scorer.measure(plan)
        seconds = measurement.seconds
        splits["total"].append(time.perf_counter() - t0)  # the whole call, not its parts
        passes = measurement.latency_repeats if measured else None
        evaluate, timing = _floor(scorer, apply_plan(scorer.model, plan), 1, passes)
        splits["plan_eval"].append(evaluate)
        splits["plan_latency"].append(timing if measured else 0.0)
        bracket.append(_median_time(bare, repeats=1, warm=True))
        first_t.append((plan, measurement.T_ms, measurement.latency_repeats, measurement.T_raw_ms))
        for key in ("assemble", "evaluate", "latency", "record"):
            splits[key].append(seconds[key])
    median = {k: statistics.median(v) for k, v in splits.items()}
    # The same plans timed again, after all the others: how far two medians of one plan lie.
    repeat = [
        {"first_ms": t, "again_ms": (second := scorer.time_plan(p)).median_ms,
         "diff": abs(second.median_ms / t - 1), "first_repeats": n,
         "first_raw_ms": raw, "again_raw_ms": second.raw_ms,
         "raw_diff": abs((second.raw_ms or 0.0) / (raw or 1.0) - 1)}
        for p, t, n, raw in (first_t[:again] if measured else [])
    ]  # fmt: skip
    # Per trial: the float model's bare evaluation plus the trial's own latency measurement.
    around = [(a + b) / 2 for a, b in zip(bracket, bracket[1:], strict=False)]
    trial_floors = [e + t for e, t in zip(around, splits["plan_latency"], strict=True)]
    ratios = [t / f for t, f in zip(splits["total"], trial_floors, strict=True)]
    plan_floors = [e + t for e, t in zip(splits["plan_eval"], splits["plan_latency"], strict=True)]
    float_floor = float_eval + (float_latency if measured else 0.0)
    changed = BitPlan(model="m", dataset="d", layers={n: "qint8" for n in layers})
    t0 = time.perf_counter()
    apply_plan(scorer.model, changed)
    full_copy = time.perf_counter() - t0
    return {
        "layers": len(layers),
        # Fitted to this machine's cost of a forward call, as a study does.
        "eval_first_chunk": scorer.evaluator.chunk,
        "eval_probes": scorer.evaluator.probes,
        "eval_calls": len(list(scorer.evaluator.chunks())),
        "floor_eval_calls": -(-scorer.evaluator.samples // scorer.evaluator.batch_size),
        "median_ms": {k: 1e3 * v for k, v in median.items()},
        "floor_ms": 1e3 * statistics.median(trial_floors),
        "float_floor_ms": 1e3 * float_floor,
        "floor_evaluate_ms": 1e3 * statistics.median(around),
        # The median of each trial's own ratio to the floor measured around it.
        "overhead_ratio": statistics.median(ratios),
        "overhead_ratios": ratios,
        "overhead_ratio_vs_float_floor": median["total"] / float_floor,
        "plan_floor_ms": 1e3 * statistics.median(plan_floors),
        "overhead_ratio_vs_plan_floor": median["total"] / statistics.median(plan_floors),
        "assemble_one_changed_layer_ms": _one_layer_change_ms(scorer, layers, exact=False),
        "assemble_one_changed_layer_exact_ms": _one_layer_change_ms(scorer, layers, exact=True),
        "deepcopy_and_quantize_all_ms": 1e3 * full_copy,
        "build_every_layer_qtype_once_ms": 1e3 * build_all,
        "same_plan_twice": repeat,
        "same_plan_twice_within_3pct": sum(r["diff"] <= 0.03 for r in repeat),
        # The plain medians of the same passes (what T was before pairing).
        "same_plan_twice_raw_within_3pct": sum(r["raw_diff"] <= 0.03 for r in repeat),
        "latency_reference_ms": scorer.context.reference_ms,
        "latency_reference_qtypes": scorer.context.reference_qtypes,
        "threads": {"eval": torch.get_num_threads(), "latency": scorer.context.threads},
        "cache_mb": scorer.layers.cached_bytes / 2**20,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 plans per model, not 20")
    parser.add_argument("--latency", default="measured")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--latency-threads", type=int, default=None, help="threads T is timed with"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for name, make in _tasks().items():
        # --quick times 2 plans a second time: when every measurement runs to the 200-pass
        # cap (a noisy spell), 5 would take the quick run to its 3-minute limit.
        plans, again = (5, 2) if args.quick else (20, 20)
        results[name] = measure(
            make(),
            plans=plans,
            latency=args.latency,
            threads=args.threads,
            again=again,
            latency_threads=args.latency_threads,
        )
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.write:
        _append(args, results)


def _append(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows = [
        f"| {name} | {r['layers']} | {r['median_ms']['assemble']:.2f} | "
        f"{r['median_ms']['evaluate']:.1f} | {r['eval_calls']} / {r['floor_eval_calls']} | "
        f"{r['median_ms']['latency']:.1f} | "
        f"{r['median_ms']['record']:.2f} | {r['median_ms']['total']:.1f} | "
        f"{r['floor_ms']:.1f} | **{r['overhead_ratio']:.2f}** | "
        f"{r['float_floor_ms']:.1f} | {r['overhead_ratio_vs_float_floor']:.2f} | "
        f"{r['plan_floor_ms']:.1f} | {r['overhead_ratio_vs_plan_floor']:.2f} | "
        f"{r['assemble_one_changed_layer_ms']:.3f} / "
        f"{r['assemble_one_changed_layer_exact_ms']:.3f} | "
        f"{r['deepcopy_and_quantize_all_ms']:.1f} | "
        f"{r['cache_mb']:.1f} | {r['process_peak_mb']:.0f} |"
        for name, r in results.items()
    ]
    command = "python benchmarks/trial_cost.py" + (" --quick" if args.quick else "")
    if args.threads is not None:
        command += f" --threads {args.threads}"
    if args.latency_threads is not None:
        command += f" --latency-threads {args.latency_threads}"
    text = "\n".join(
        [
            f"### Trial cost, latency {args.latency} ({dt.date.today().isoformat()})",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
            f" torch threads: {torch.get_num_threads()}"
            f" ({args.latency_threads or torch.get_num_threads()} for T)."
            f" Command: `{command} --latency {args.latency}`. Times in ms (medians).",
            "",
            "| model | layers | assemble | evaluate | eval calls / floor's | latency | record | "
            "trial | floor | ratio | "
            "float floor | ratio | plan floor | ratio | 1 layer changed, eval / exact view | "
            "deep-copy + quantize all | cache MB | process peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    with args.write.open("a", encoding="utf-8") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
