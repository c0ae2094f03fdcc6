"""``quide-search export``."""

from __future__ import annotations

import argparse

from quide_search.cli._base import Command

__all__ = ["ExportCommand"]


class ExportCommand(Command):
    """Write a trial's plan, metrics and protocol as a versioned JSON file."""

    name = "export"
    epilog = """examples:
  quide-search export --study simplecnn-digits --out plan.json
  quide-search export --study simplecnn-digits --trial 7 --out plan7.json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", type=str, required=True, help="name of the study")
        parser.add_argument(
            "--storage",
            type=str,
            default=None,
            help="storage URL (default: sqlite:///studies/<study>.db)",
        )
        parser.add_argument(
            "--trial",
            type=str,
            default="best",
            help="'best' (highest I' passing the gate) or a trial number",
        )
        parser.add_argument("--out", type=str, required=True, help="path of the plan JSON")

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.export import export_plan
        from quide_search.storage import default_storage_url

        storage = args.storage or default_storage_url(study=args.study)
        path = export_plan(study=args.study, storage=storage, trial=args.trial, out=args.out)
        print(f"wrote {path}")
        return 0
