"""``quide-search sweep``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_activations_arg,
    add_gate_args,
    add_measure_args,
    add_task_args,
    config_from_args,
)
from quide_search.cli._types import study_name

__all__ = ["SweepCommand"]


class SweepCommand(Command):
    """Measure uniform precisions (float, int8, int4, ...) and name the knee (highest I')."""

    name = "sweep"
    epilog = """examples:
  quide-search sweep                                 # float, int8, int4, int2, fp8 on digits
  quide-search sweep --bits float,8,4 --out-dir results
  quide-search sweep --bits 8,4 --activations none,int8   # adds W8A8 and W4A8 rows"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_task_args(parser)
        parser.add_argument(
            "--bits",
            type=str,
            default="float,8,4,2,f8",
            help="precisions to sweep; float is always measured as the baseline "
            "(default: float,8,4,2,f8)",
        )
        add_activations_arg(parser)
        add_gate_args(parser)
        add_measure_args(parser)
        parser.add_argument(
            "--out-dir",
            type=str,
            default="studies",
            help="where the sweep JSON and CSV are written (default: studies)",
        )
        parser.add_argument(
            "--name",
            type=study_name,
            default=None,
            help="file name stem of the outputs (default: <model>-<dataset>)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.text import format_sweep
        from quide_search.study.sweep import run_sweep

        config = config_from_args(args, out_dir=args.out_dir, study=args.name)
        result = run_sweep(config)
        if result.exclusions:
            print(result.exclusions)
        print(format_sweep(result))
        return 0
