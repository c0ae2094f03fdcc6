"""``quide-search run``."""

from __future__ import annotations

import argparse
import sys

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_bits_arg,
    add_gate_args,
    add_measure_args,
    add_storage_args,
    add_task_args,
    config_from_args,
)
from quide_search.cli._types import count, positive_int, seed

__all__ = ["RunCommand"]


class RunCommand(Command):
    """Search per-layer bit-widths that maximise I' (an Optuna study, resumable)."""

    name = "run"
    epilog = """examples:
  quide-search run                                  # SimpleCNN on bundled digits, 50 trials
  quide-search run --trials 100                     # extend the same study to 100 trials
  quide-search run --bits 8,4,2,fp --min-accuracy 0.95
  quide-search run --storage sqlite:///studies/x.db --study my-study --seed 1
  quide-search run --workers 3 --threads 1 --trials 120  # three local processes, one study
  quide-search run --latency measured --max-size-mb 0.01  # time every trial, a size limit
  quide-search run --objective pareto --sampler nsga2     # (C, P, T) as three objectives"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_task_args(parser)
        _add_search_args(parser)
        _add_limit_args(parser)
        add_gate_args(parser)
        add_measure_args(parser)
        add_storage_args(parser)
        parser.add_argument(
            "--no-progress", action="store_true", help="draw no progress bars (phases, trials)"
        )
        _add_worker_args(parser)

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.summary_text import format_summary
        from quide_search.study.run import run_search

        config = config_from_args(args)
        summary = run_search(config, progress=not args.no_progress)
        print(format_summary(summary))
        if summary.lost_workers:
            print(
                f"quide-search run: {len(summary.lost_workers)} worker process(es) did not end "
                "well (the 'warning:' lines in the output say how); the study keeps what they "
                "recorded.",
                file=sys.stderr,
            )
            return 1
        return 0


def _add_search_args(parser: argparse.ArgumentParser) -> None:
    """The search group: trials, bits, seed, sampler, objective, early stop, warm starts."""
    search = parser.add_argument_group("search")
    search.add_argument(
        "--trials",
        type=count,
        default=50,
        help="trials the study should hold in total, scored or stopped early; 0 only "
        "creates the study (protocol, baseline, warm-start plans queued) for workers to "
        "join (default: 50)",
    )
    add_bits_arg(search)
    search.add_argument(
        "--seed", type=seed, default=0, help="sampler seed, 0 to 2**32 - 1 (default: 0)"
    )
    search.add_argument(
        "--sampler",
        type=str,
        default="tpe",
        help="tpe, random, nsga2 or gp (CMA-ES does not fit categorical choices) (default: tpe)",
    )
    search.add_argument(
        "--objective",
        type=str,
        choices=("iprime", "pareto"),
        default="iprime",
        help="maximise I', or optimise (C, P, T) as three objectives; both keep the "
        "Pareto front (default: iprime)",
    )
    search.add_argument(
        "--early-stop",
        type=str,
        choices=("exact", "stat", "off"),
        default="exact",
        help="stop a trial's evaluation once it cannot pass the gate: exact (never drops a "
        "passing plan), stat (also on a 99.9%% confidence bound) or off (default: exact)",
    )
    search.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="queue only the uniform plans, not the sensitivity-greedy ones",
    )


def _add_limit_args(parser: argparse.ArgumentParser) -> None:
    """The size and latency constraints, and the confirmation step at the end of a run."""
    limits = parser.add_argument_group("constraints (the best result is the best feasible)")
    limits.add_argument(
        "--max-size-mb", type=float, default=None, help="stored weights at most this (MiB)"
    )
    limits.add_argument("--max-latency-ms", type=float, default=None, help="T at most this (ms)")
    confirm = parser.add_argument_group("confirmation (the end of the run)")
    confirm.add_argument(
        "--confirm-top",
        type=count,
        default=5,
        help="at the end of the run, re-time the float model, the best uniform plan, the "
        "top K plans by I' and the Pareto front side by side, and recommend on that "
        "confirmed T (0: skip; default: 5)",
    )


def _add_worker_args(parser: argparse.ArgumentParser) -> None:
    """Local worker processes and the heartbeat that recovers a lost one's trial."""
    workers = parser.add_argument_group("workers and recovery")
    workers.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="local processes sharing the study, this one included (default: 1)",
    )
    workers.add_argument(
        "--heartbeat",
        type=count,
        default=None,
        help="seconds between a running trial's heartbeats; a trial silent for twice as "
        "long is failed and its plan retried once (0: off; RDB storages only, where the "
        "default is 60)",
    )
