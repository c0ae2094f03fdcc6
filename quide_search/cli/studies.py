"""``quide-search studies`` and ``quide-search show``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quide_search.cli._base import Command
from quide_search.cli._options import (
    add_budget_args,
    add_study_args,
    budget_from_args,
    study_storage,
)

__all__ = ["ShowCommand", "StudiesCommand"]


class StudiesCommand(Command):
    """List studies with their trial counts, best I' and float baseline."""

    name = "studies"
    epilog = """examples:
  quide-search studies                           # every studies/*.db
  quide-search studies --storage postgresql://user@db-host/quide"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--storage", type=str, default=None, help="one storage URL (default: --out-dir)"
        )
        parser.add_argument(
            "--out-dir",
            type=str,
            default="studies",
            help="directory whose *.db SQLite studies are listed (default: studies)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.errors import StorageError
        from quide_search.output.text import format_studies
        from quide_search.study.summary import list_studies

        if args.storage:
            urls = [args.storage]
        else:
            folder = Path(args.out_dir)
            if not folder.is_dir():
                raise StorageError(
                    f"--out-dir must be a directory of studies, but {args.out_dir!r} does not "
                    "exist. Run `quide-search run` first, or pass --storage URL."
                )
            urls = [f"sqlite:///{p}" for p in sorted(folder.glob("*.db"))]
        rows = list_studies(urls)
        print(json.dumps(rows, indent=2) if args.json else format_studies(rows))
        return 0


class ShowCommand(Command):
    """Show one study: baseline, uniform plans, best feasible plan and the Pareto front."""

    name = "show"
    epilog = """examples:
  quide-search show --study simplecnn-digits
  quide-search show --study simplecnn-digits --json | jq .best.plan
  quide-search show --study simplecnn-digits --max-size-mb 0.01 --max-latency-ms 0.1"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument(
            "--latency-table",
            type=str,
            default=None,
            metavar="PATH",
            help="also write the study's latency table (from --latency table) to PATH, for "
            "another run's --latency table:PATH",
        )
        add_budget_args(parser, what="also show")

    def run(self, args: argparse.Namespace) -> int:
        from quide_search.errors import ConfigError
        from quide_search.files import (
            atomic_write_text,
            check_replaceable,
            is_generated_json,
            stamped,
        )
        from quide_search.output.summary_text import format_study
        from quide_search.output.text import format_budget
        from quide_search.records import StudyKey
        from quide_search.study.budget import answer_budget
        from quide_search.study.summary import read_study, summarize

        if args.latency_table:
            path = Path(args.latency_table)
            check_replaceable(path, ours=is_generated_json, flag="--latency-table")
        storage = study_storage(args)
        study, _ = read_study(study=args.study, storage=storage)
        summary = summarize(study, storage_url=storage, out_dir="studies")
        if args.latency_table:
            table = study.user_attrs.get(StudyKey.LATENCY_TABLE)
            if table is None:
                raise ConfigError(
                    f"--latency-table needs a study run with --latency table, but study "
                    f"{args.study!r} has no table. Run it with --latency table first."
                )
            atomic_write_text(path, json.dumps(stamped(table), indent=2) + "\n")
        budget = budget_from_args(args)
        answer = answer_budget(study, budget) if budget.given else None
        if args.json:
            data = summary.to_dict()
            if answer is not None:
                data["budget"] = answer.to_dict()
            print(json.dumps(data, indent=2))
        else:
            print(format_study(summary))
            if answer is not None:
                print("\n" + format_budget(answer))
        return 0
