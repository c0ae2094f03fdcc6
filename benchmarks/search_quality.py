"""Search quality: trials to the exhaustive optimum, and best I' per budget, by strategy.

Strategies, all scoring plans with the same objective (same evaluator, same gate, same latency
table, so a plan's I' is the same number whoever proposes it):

- ``random``: Optuna's RandomSampler, nothing queued, every evaluation complete;
- ``tpe``: plain TPESampler, nothing queued, every evaluation complete;
- ``engine``: what ``quide-search run`` does: uniform plans, then sensitivity-greedy plans
  queued, exact early stopping, TPE;
- ``greedy`` (ResNet-18 only): the sensitivity-greedy path evaluated plan by plan, given the
  engine's wall-clock time.

SimpleCNN on digits (4 layers, choices fp/int8/int4/int2: 256 plans) is enumerated in full to
get the optimum of I'. T comes from one latency table measured at the start and shared by all
runs, so values are deterministic: the table is used even where its check (reported) would
send a study to measured T, since the strategies must be compared on one fixed objective.
ResNet-18 on mnist-5k (21 layers, int8/int4/int2) is too big to enumerate: there the
strategies are compared at 50 and 100 trials.

    python benchmarks/search_quality.py --quick --json out.json   # digits, 3 seeds, < 5 min
    python benchmarks/search_quality.py --quick --write benchmarks/RESULTS.md
    python benchmarks/search_quality.py --json out.json           # + 5 seeds, + ResNet-18
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from _results import machine_line, publish

from quide_search.config import RunConfig
from quide_search.latency import TableLatency, table_check
from quide_search.measure.device import resolve_device
from quide_search.measure.measurement import GateUnreachable
from quide_search.measure.scorer import Scorer
from quide_search.plan import BitPlan
from quide_search.protocol_builder import build_protocol
from quide_search.search.objective import PlanObjective, SearchSettings
from quide_search.search.sensitivity import measure_sensitivity, warm_plans
from quide_search.search.space import group_layers, uniform_params
from quide_search.search.warmstart import queue_warm_starts, refine_on_path
from quide_search.tasks.resolver import load_task

BUDGETS = (10, 25, 50)
_EPS = 1e-9


class Bench:
    """One task's shared scorer, gate and sensitivity, measured once."""

    def __init__(self, model: str, dataset: str, bits: tuple[str, ...], threads: int) -> None:
        torch.manual_seed(0)
        torch.set_num_threads(threads)
        device = resolve_device("cpu")
        task = load_task(model=model, dataset=dataset, device_type=device.type)
        config = RunConfig(model=model, dataset=dataset, bits=bits, latency="table",
                           threads=threads, device="cpu")  # fmt: skip
        protocol = build_protocol(config, task, device=device)
        started = time.perf_counter()
        table_check.TABLE_ERROR_BOUND = math.inf  # one fixed objective (see the docstring)
        self.scorer = Scorer.build(task, protocol, device=device)  # measures the table
        self.table_seconds = time.perf_counter() - started
        assert isinstance(self.scorer.latency, TableLatency)
        self.table_worst_error = self.scorer.latency.check.worst
        self.bits = bits
        baseline = self.scorer.measure(self.scorer.float_plan())
        self.gate = protocol.gate_for(baseline.P)
        self.groups = group_layers(list(self.scorer.weight_counts), "layer")
        started = time.perf_counter()
        self.sensitivity = measure_sensitivity(self.scorer, self.groups, bits)
        self.sensitivity_seconds = time.perf_counter() - started
        counts = self.scorer.weight_counts
        self.weights = {g: sum(counts[n] for n in names) for g, names in self.groups.items()}

    def greedy_path(self) -> list[dict[str, str]]:
        """The sensitivity-greedy path, priced by stored bytes and the latency table."""
        return warm_plans(self.scorer, self.groups, self.bits, self.sensitivity)[1]

    def objective(self, early_stop: str) -> PlanObjective:
        return PlanObjective(
            scorer=self.scorer,
            gate=self.gate,
            choices=self.bits,
            settings=SearchSettings(early_stop=early_stop),
        )

    def score(self, layers: dict[str, str], *, early_stop: bool = False) -> float:
        """I' of one plan, scored in full (or 0 as soon as it cannot pass the gate)."""
        plan = BitPlan(
            model=self.scorer.task.model_name,
            dataset=self.scorer.task.dataset_name,
            layers=layers,
            backend=self.scorer.backend.name,
        )
        floor = self.gate.threshold if early_stop else None
        try:
            measured = self.scorer.measure(plan, floor=floor)
        except GateUnreachable:
            return 0.0
        metrics = measured.metrics(baseline_bytes=self.scorer.baseline_bytes, gate=self.gate)
        return metrics.I_prime

    def run(self, strategy: str, seed: int, trials: int) -> dict[str, Any]:
        """Run one strategy for ``trials`` trials; return its trial-by-trial I' and costs."""
        sampler = (
            optuna.samplers.RandomSampler(seed=seed)
            if strategy == "random"
            else optuna.samplers.TPESampler(seed=seed)
        )
        study = optuna.create_study(direction="maximize", sampler=sampler)
        if strategy == "engine":
            for precision in self.bits:
                if precision != "float":
                    study.enqueue_trial(
                        uniform_params(list(self.groups), precision),
                        user_attrs={"full_eval": True},
                    )
        objective = self.objective("exact" if strategy == "engine" else "off")
        callbacks = []
        if strategy == "engine":  # the same queue and refinement as `quide-search run`
            queue_warm_starts(study, objective, self.sensitivity)
            callbacks.append(refine_on_path(objective))
        started = time.perf_counter()
        study.optimize(objective, n_trials=trials, catch=(), callbacks=callbacks)
        seconds = time.perf_counter() - started
        values, spent = [], []
        for t in study.trials:
            values.append(float(t.value) if t.state.name == "COMPLETE" else 0.0)
            if t.state.name == "PRUNED":
                spent.append(t.user_attrs["samples_spent"] / t.user_attrs["eval_samples"])
        failing = [
            t.user_attrs["samples_spent"] / t.user_attrs["eval_samples"]
            for t in study.trials
            if "samples_spent" in t.user_attrs and not t.user_attrs.get("gate_passed", False)
        ]
        missing = [t.number for t in study.trials if "samples_spent" not in t.user_attrs]
        if missing:
            states = {
                t.number: (t.state.name, sorted(t.user_attrs))
                for t in study.trials
                if t.number in missing
            }
            print(f"warning: trials without samples_spent: {states}", file=sys.stderr)
        return {"values": values, "seconds": seconds, "pruned_fractions": spent,
                "failing_fractions": failing}  # fmt: skip


def best_at(values: list[float], n: int) -> float:
    return max(values[:n], default=0.0)


def trials_to(values: list[float], target: float) -> int | None:
    for i, v in enumerate(values, start=1):
        if v >= target - _EPS:
            return i
    return None


def median_trials(found: list[int | None]) -> float | None:
    """Median trials to the optimum; None when the median run never reached it (censored)."""
    ranked = sorted(float("inf") if f is None else float(f) for f in found)
    value = statistics.median(ranked)
    return None if value == float("inf") else value


def digits_part(seeds: int, cap: int, threads: int) -> dict[str, Any]:
    bits = ("float", "int8", "int4", "int2")
    bench = Bench("simplecnn", "digits", bits, threads)
    layers = list(bench.groups)
    started = time.perf_counter()
    scores = {
        combo: bench.score(dict(zip(layers, combo, strict=True)))
        for combo in itertools.product(bits, repeat=len(layers))
    }
    enumerate_s = time.perf_counter() - started
    optimum = max(scores.values())
    winners = [dict(zip(layers, c, strict=True)) for c, v in scores.items() if v >= optimum - _EPS]
    out: dict[str, Any] = {
        "task": "simplecnn/digits",
        "plans": len(scores),
        "optimum_I_prime": optimum,
        "optimum_plans": winners,
        "feasible_plans": sum(v > 0 for v in scores.values()),
        "enumerate_seconds": enumerate_s,
        "table_seconds": bench.table_seconds,
        "table_check_worst_error": bench.table_worst_error,
        "sensitivity_seconds": bench.sensitivity_seconds,
        "gate_threshold": bench.gate.threshold,
        # Fitted to this machine's cost of a forward call, as a study does.
        "eval_first_chunk": bench.scorer.evaluator.chunk,
        "eval_probes": bench.scorer.evaluator.probes,
        "eval_calls": len(list(bench.scorer.evaluator.chunks())),
        "strategies": {},
    }
    for strategy in ("random", "tpe", "engine"):
        runs = [bench.run(strategy, seed, cap) for seed in range(seeds)]
        found = [trials_to(r["values"], optimum) for r in runs]
        near = [trials_to(r["values"], optimum * 0.99) for r in runs]
        out["strategies"][strategy] = {
            "trials_to_optimum": found,
            "trials_to_optimum_median": median_trials(found),
            "trials_to_within_1pct": near,
            "trials_to_within_1pct_median": median_trials(near),
            "best_at": {n: [best_at(r["values"], n) for r in runs] for n in BUDGETS},
            "seconds": [r["seconds"] for r in runs],
            "pruned_fractions": [f for r in runs for f in r["pruned_fractions"]],
            "failing_fractions": [f for r in runs for f in r["failing_fractions"]],
        }
    return out


def resnet_part(trials: int, threads: int, seed: int) -> dict[str, Any]:
    bits = ("int8", "int4", "int2")
    bench = Bench("resnet18", "mnist-5k", bits, threads)
    layers = list(bench.groups)
    uniform = {q: bench.score(uniform_params(layers, q)) for q in bits}
    out: dict[str, Any] = {
        "task": "resnet18/mnist-5k",
        "layers": len(layers),
        "seed": seed,
        "uniform": uniform,
        "best_uniform": max(uniform.values()),
        "table_seconds": bench.table_seconds,
        "sensitivity_seconds": bench.sensitivity_seconds,
        "strategies": {},
    }
    for strategy in ("random", "tpe", "engine"):
        r = bench.run(strategy, seed, trials)
        out["strategies"][strategy] = {
            "best_at": {n: best_at(r["values"], n) for n in (50, trials)},
            "seconds": r["seconds"],
            "pruned_fractions": r["pruned_fractions"],
        }
    # Greedy: walk the sensitivity-greedy path, fewest bits first, within the engine's time
    # (the sensitivity measurement counts against it, as it does for the engine's warm start).
    allowed = out["strategies"]["engine"]["seconds"]
    started, best, walked = time.perf_counter(), 0.0, 0
    for plan in bench.greedy_path():
        if time.perf_counter() - started > allowed:
            break
        best, walked = max(best, bench.score(plan, early_stop=True)), walked + 1
    out["strategies"]["greedy"] = {
        "best": best,
        "plans_evaluated": walked,
        "path_length": len(bench.greedy_path()),
        "seconds": time.perf_counter() - started,
    }
    return out


def summary(digits: dict[str, Any], resnet: dict[str, Any] | None) -> dict[str, Any]:
    s = digits["strategies"]
    pruned = s["engine"]["pruned_fractions"]
    failing = s["engine"]["failing_fractions"]
    out = {
        "optimum_I_prime": digits["optimum_I_prime"],
        "engine_trials_to_optimum_median": s["engine"]["trials_to_optimum_median"],
        "tpe_trials_to_optimum_median": s["tpe"]["trials_to_optimum_median"],
        "random_trials_to_optimum_median": s["random"]["trials_to_optimum_median"],
        "within_1pct_median": {k: v["trials_to_within_1pct_median"] for k, v in s.items()},
        "pruned_eval_fraction": statistics.mean(pruned) if pruned else None,
        "failing_eval_fraction": statistics.mean(failing) if failing else None,
        "pruned_trials": len(pruned),
        "eval_first_chunk": digits["eval_first_chunk"],
    }
    if resnet is not None:
        out["resnet18_best_at_100"] = {
            **{k: v["best_at"][max(v["best_at"])] for k, v in resnet["strategies"].items()
               if k != "greedy"},
            "greedy": resnet["strategies"]["greedy"]["best"],
            "best_uniform": resnet["best_uniform"],
        }  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 3 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds on digits (5; quick 3)")
    parser.add_argument("--cap", type=int, default=300, help="trials per digits run")
    parser.add_argument("--resnet-trials", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--write", type=str, default=None, help="RESULTS.md to update")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = args.seeds or (3 if args.quick else 5)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory():
        digits = digits_part(seeds, args.cap, args.threads)
        resnet = None if args.quick else resnet_part(args.resnet_trials, args.threads, seed=0)
    result = {
        **summary(digits, resnet),
        "digits": digits,
        "resnet18": resnet,
        "seconds": time.perf_counter() - started,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
    }
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(json.dumps(summary(digits, resnet), indent=2))
    publish(_section(digits, args), args.write, "search_quality")
    return 0


def _section(digits: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The digits figures as a RESULTS.md section."""
    flags = " ".join(a for a in sys.argv[1:] if not a.startswith("--write") and a != args.write)
    rows = [
        f"| {name} | {_runs(v['trials_to_optimum'])} | {v['trials_to_optimum_median']} | "
        f"{_runs(v['trials_to_within_1pct'])} | {v['trials_to_within_1pct_median']} |"
        for name, v in digits["strategies"].items()
    ]
    return [
        "## Search quality: trials to the exhaustive optimum (SimpleCNN/digits, 256 plans)",
        "",
        machine_line(),
        f"- command: `python benchmarks/search_quality.py {flags}`",
        f"- optimum I' {digits['optimum_I_prime']:.4f} ({len(digits['optimum_plans'])} plan(s)); "
        f"latency table built in {digits['table_seconds']:.1f} s, its check's worst error "
        f"{digits['table_check_worst_error']:.0%}; cap {args.cap} trials per run",
        "",
        "| strategy | trials to the optimum, per seed | median | to within 1 %, per seed "
        "| median |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _runs(found: list[int | None]) -> str:
    return ", ".join("never" if f is None else str(f) for f in found)


if __name__ == "__main__":
    raise SystemExit(main())
