"""``quide-search report``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command
from quide_search.cli._options import add_study_args, study_storage

__all__ = ["ReportCommand"]


class ReportCommand(Command):
    """Write one self-contained HTML report of a study (plots open offline)."""

    name = "report"
    epilog = """examples:
  quide-search report --study simplecnn-digits              # writes report.html
  quide-search report --study simplecnn-digits --out docs/digits.html --png"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument(
            "--out", type=str, default="report.html", help="HTML file (default: report.html)"
        )
        parser.add_argument(
            "--png",
            action="store_true",
            help="also write each plot as PNG beside it (needs kaleido and Chrome/Chromium)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.output.htmlreport import write_report

        paths = write_report(
            study=args.study, storage=study_storage(args), out=args.out, png=args.png
        )
        for path in paths:
            print(f"wrote {path}")
        return 0
