"""``quide-search run``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_gate_args,
    add_measure_args,
    add_task_args,
    config_from_args,
    count,
    positive_int,
)

__all__ = ["RunCommand"]


class RunCommand(Command):
    """Search per-layer bit-widths that maximise I' (an Optuna study, resumable)."""

    name = "run"
    epilog = """examples:
  quide-search run                                  # SimpleCNN on bundled digits, 50 trials
  quide-search run --trials 100                     # extend the same study to 100 trials
  quide-search run --bits 8,4,2,fp --min-accuracy 0.95
  quide-search run --storage sqlite:///studies/x.db --study my-study --seed 1
  quide-search run --workers 3 --threads 1 --trials 120  # three local processes, one study"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_task_args(parser)
        search = parser.add_argument_group("search")
        search.add_argument(
            "--trials",
            type=count,
            default=50,
            help="completed trials the study should hold in total; 0 only creates the study "
            "(protocol, baseline, uniform plans queued) for workers to join (default: 50)",
        )
        search.add_argument(
            "--bits",
            type=str,
            default="8,4,2",
            help="per-layer choices: 8, 4, 2, f8 (float8), fp (keep float) (default: 8,4,2)",
        )
        search.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
        add_gate_args(parser)
        add_measure_args(parser)
        study = parser.add_argument_group("study storage")
        study.add_argument(
            "--study", type=str, default=None, help="study name (default: <model>-<dataset>)"
        )
        study.add_argument(
            "--storage",
            type=str,
            default=None,
            help="Optuna storage URL or journal:PATH (default: sqlite:///studies/<study>.db)",
        )
        study.add_argument(
            "--out-dir",
            type=str,
            default="studies",
            help="directory of the default storage and the Pareto JSON",
        )
        study.add_argument(
            "--no-progress", action="store_true", help="do not draw the progress bar"
        )
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

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.report import format_summary
        from quide_search.study import run_search

        config = config_from_args(
            args,
            trials=args.trials,
            seed=args.seed,
            study=args.study,
            storage=args.storage,
            out_dir=args.out_dir,
            workers=args.workers,
            heartbeat=args.heartbeat,
        )
        summary = run_search(config, progress=not args.no_progress)
        print(format_summary(summary))
        return 0
