"""``quide-search sensitivity``."""

from __future__ import annotations

import argparse
import json
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

__all__ = ["SensitivityCommand"]


class SensitivityCommand(Command):
    """Per-layer sensitivity: each layer quantized alone, KL and accuracy change on calib.

    The table is stored in the study (created here if new, exactly as ``run --trials 0``
    would), measured once and reused on resume; ``run`` builds its warm-start plans from it.
    """

    name = "sensitivity"
    epilog = """examples:
  quide-search sensitivity                              # SimpleCNN on digits, bits 8,4,2
  quide-search sensitivity --model resnet18 --dataset mnist-5k --json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_task_args(parser)
        add_bits_arg(parser)
        add_gate_args(parser)
        add_measure_args(parser)
        add_storage_args(parser)
        parser.add_argument("--json", action="store_true", help="print the table as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.text import format_sensitivity
        from quide_search.study.session import open_session
        from quide_search.study.setup import check_paths, study_sensitivity

        config = config_from_args(args, trials=0)
        check_paths(config)
        session = open_session(config)
        note = session.protocol.search.exclusion_line()
        if note is not None:
            print(note, file=sys.stderr)
        table = study_sensitivity(session.study, session.objective)
        if args.json:
            print(json.dumps(table, indent=2))
        else:
            print(format_sensitivity(session.study.study_name, table))
        return 0
